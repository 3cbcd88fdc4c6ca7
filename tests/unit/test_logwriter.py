"""The log handler that never blocks its caller: lines in order, flushed on
request, and dropped (and counted) rather than waited for when the reader stalls."""

from __future__ import annotations

import io
import logging
import os
import threading
import time

from smtpgateway.runtime.logwriter import BackgroundStreamHandler


def logger_with(handler: logging.Handler, name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.handlers = [handler]
    return logger


def test_lines_are_written_in_order_and_flushed() -> None:
    stream = io.StringIO()
    handler = BackgroundStreamHandler(stream)
    log = logger_with(handler, "test.logwriter.order")
    for number in range(500):
        log.info("line %d", number)
    handler.flush()
    assert stream.getvalue().splitlines() == [f"line {number}" for number in range(500)]
    handler.close()


def test_a_stalled_reader_costs_lines_not_time() -> None:
    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "w", buffering=1)
    handler = BackgroundStreamHandler(stream, max_pending=100)
    log = logger_with(handler, "test.logwriter.stalled")
    started = time.monotonic()
    for number in range(3000):  # 600 KB: the pipe (64 KiB) and the queue fill up
        log.info("line %04d %s", number, "x" * 190)
    assert time.monotonic() - started < 2.0  # nothing waited for the reader

    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.extend(iter(lambda: os.read(read_end, 65536), b"")))
    reader.start()
    handler.close()  # writes what is queued, and the count of what was dropped
    stream.close()
    reader.join(10)
    lines = b"".join(received).decode().splitlines()
    written = [line for line in lines if line.startswith("line ")]
    notices = [line for line in lines if "log lines dropped: the log's reader fell behind" in line]
    assert written[0].startswith("line 0000") and written == sorted(written)
    assert notices
    dropped = sum(int(notice.split(" log lines dropped")[0].rsplit(" ", 1)[-1]) for notice in notices)
    assert len(written) + dropped == 3000
