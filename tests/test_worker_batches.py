"""How a committer takes its batches: records nobody waits for gather for a
while, anything a session waits for ends the wait at once, and a stop request
is never held up."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

from smtpgateway.commits import FlushJob, RecordsJob
from smtpgateway.worker import _STOP, Pending, _take_batch

LONG = 5.0  # seconds: a batch that waited this long would fail the timing asserts below


def later(jobs: queue.SimpleQueue[Any], item: Any, delay: float = 0.05) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(delay), jobs.put(item)))
    thread.start()
    return thread


def test_records_gather_until_the_linger_ends() -> None:
    jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
    jobs.put(Pending(RecordsJob(())))
    sender = later(jobs, Pending(RecordsJob(())))
    started = time.monotonic()
    batch, stopped = _take_batch(jobs, linger=0.5)
    sender.join()
    assert len(batch) == 2 and not stopped  # the second arrived 50 ms in, and was taken
    assert time.monotonic() - started >= 0.45  # then it waited out the linger


def test_a_job_someone_waits_for_ends_the_linger() -> None:
    jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
    jobs.put(Pending(RecordsJob(())))
    sender = later(jobs, Pending(FlushJob(), object(), object()))  # awaited: has a loop and a future
    started = time.monotonic()
    batch, _ = _take_batch(jobs, linger=LONG)
    sender.join()
    assert len(batch) == 2
    assert time.monotonic() - started < LONG / 2


def test_an_awaited_job_first_is_taken_without_lingering() -> None:
    jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
    jobs.put(Pending(RecordsJob(()), object(), object()))
    started = time.monotonic()
    batch, _ = _take_batch(jobs, linger=LONG)
    assert len(batch) == 1 and time.monotonic() - started < LONG / 2


def test_a_stop_request_ends_the_linger() -> None:
    jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
    jobs.put(Pending(RecordsJob(())))
    sender = later(jobs, _STOP)
    started = time.monotonic()
    batch, stopped = _take_batch(jobs, linger=LONG)
    sender.join()
    assert len(batch) == 1 and stopped
    assert time.monotonic() - started < LONG / 2


def test_records_that_hold_back_answers_end_the_linger() -> None:
    """AUTH failures are answered once their records commit: no lingering for them."""
    jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
    jobs.put(Pending(RecordsJob(())))
    sender = later(jobs, Pending(RecordsJob(()), then=((object(), object(), None),)))
    started = time.monotonic()
    batch, _ = _take_batch(jobs, linger=LONG)
    sender.join()
    assert len(batch) == 2
    assert time.monotonic() - started < LONG / 2
