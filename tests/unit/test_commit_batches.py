"""How a committer takes its batches: records nobody waits for gather for a
while, anything a session waits for ends the wait at once, and a stop request
is never held up."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

from smtpgateway.storage.jobs import FlushJob, RecordsJob
from smtpgateway.storage.threads import _STOP, Pending, _take_batch

LONG = 5.0  # seconds: a batch that waited this long would fail the timing asserts below
# A loop and a future, as an awaited job has them (never used here), and the
# answers a records job holds back.
AWAITED: tuple[Any, Any] = (object(), object())
HELD: tuple[Any, ...] = ((*AWAITED, None),)


def later(jobs: queue.SimpleQueue[Any], item: Any, delay: float = 0.05) -> threading.Thread:
    def put_later() -> None:
        time.sleep(delay)
        jobs.put(item)

    thread = threading.Thread(target=put_later)
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
    sender = later(jobs, Pending(FlushJob(), *AWAITED))  # awaited: has a loop and a future
    started = time.monotonic()
    batch, _ = _take_batch(jobs, linger=LONG)
    sender.join()
    assert len(batch) == 2
    assert time.monotonic() - started < LONG / 2


def test_an_awaited_job_first_is_taken_without_lingering() -> None:
    jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
    jobs.put(Pending(RecordsJob(()), *AWAITED))
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


def test_records_that_hold_back_answers_due_now_end_the_linger() -> None:
    """AUTH failures are answered once their records commit: no lingering past
    the time their answers are due (at once, without a failure delay)..."""
    jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
    jobs.put(Pending(RecordsJob(())))
    sender = later(jobs, Pending(RecordsJob(()), then=HELD, due=time.monotonic()))
    started = time.monotonic()
    batch, _ = _take_batch(jobs, linger=LONG)
    sender.join()
    assert len(batch) == 2
    assert time.monotonic() - started < LONG / 2


def test_records_that_hold_back_answers_due_later_linger_with_the_others() -> None:
    """...but with a failure delay, their commit gathers with the others."""
    jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
    jobs.put(Pending(RecordsJob(()), then=HELD, due=time.monotonic() + LONG))
    sender = later(jobs, Pending(RecordsJob(())))
    started = time.monotonic()
    batch, _ = _take_batch(jobs, linger=0.5)
    sender.join()
    assert len(batch) == 2 and time.monotonic() - started >= 0.45
