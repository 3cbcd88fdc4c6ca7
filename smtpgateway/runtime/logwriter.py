"""Log lines written by a thread of their own, so that logging never blocks.

``logging.StreamHandler`` writes each line to stderr from the thread that logs:
for a failed AUTH, the event loop. When whoever reads stderr stalls (a pipe
nobody drains, a paused terminal, a slow log shipper), that write blocks, and
with it every session: with ``StreamHandler`` the gateway stopped answering
after a few hundred failed AUTHs (``tests/test_commands.py::
test_a_stalled_log_reader_does_not_stall_the_gateway`` failed that way). :class:`BackgroundStreamHandler` formats the
line in the caller, queues it, and lets a writer thread write whatever has
queued up in one go; the caller never touches the stream.

If the writer falls ``max_pending`` lines behind, further lines are dropped and
counted, and the count is written as soon as the stream takes data again:
serving clients comes before the log, and every AUTH attempt is still in the
``AuthAttempt`` table. (It is not faster: formatting and the logging module's
own bookkeeping stay with the caller; what moves is the write.)
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from typing import TextIO

from smtpgateway.runtime import glibc

FLUSH_TIMEOUT = 5.0  # seconds that flush() and close() wait for a stalled stream
WRITE_INTERVAL = 0.05  # seconds between the writer's passes


class BackgroundStreamHandler(logging.Handler):
    """The caller formats and appends to a deque (atomic in CPython; ``emit`` is
    serialized by the handler's lock); the writer wakes every WRITE_INTERVAL, or
    when half the queue is used, and writes everything queued with one write. So
    a line costs its caller no system call and no thread switch."""

    def __init__(self, stream: TextIO | None = None, max_pending: int = 10_000) -> None:
        super().__init__()
        self.stream = stream if stream is not None else sys.stderr
        self.max_pending = max_pending
        self._lines: deque[str] = deque()
        self._dropped = 0
        self._writing = False
        self._closed = False
        self._changed = threading.Condition(threading.Lock())
        self._writer = threading.Thread(target=self._write_forever, name="log-writer", daemon=True)
        self._writer.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
        except Exception:
            self.handleError(record)
            return
        if self._closed or len(self._lines) >= self.max_pending:
            with self._changed:
                self._dropped += 1
            return
        self._lines.append(line)
        if len(self._lines) == self.max_pending // 2:
            with self._changed:
                self._changed.notify_all()

    def flush(self) -> None:
        """Wait (up to FLUSH_TIMEOUT) until every queued line is written."""
        deadline = time.monotonic() + FLUSH_TIMEOUT
        with self._changed:
            while (self._lines or self._writing) and time.monotonic() < deadline:
                self._changed.notify_all()
                self._changed.wait(0.01)

    def close(self) -> None:
        """Write what is queued (up to FLUSH_TIMEOUT), then stop the writer."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._writer.join(FLUSH_TIMEOUT)
        super().close()

    def _write_forever(self) -> None:
        glibc.name_native_thread()
        while True:
            with self._changed:
                if not self._closed:
                    self._changed.wait(WRITE_INTERVAL)
                closing = self._closed
                dropped, self._dropped = self._dropped, 0
                self._writing = True
            lines = []
            while self._lines:
                lines.append(self._lines.popleft())
            text = "".join(lines)
            if dropped:
                text += self._dropped_line(dropped)
            if text:
                try:
                    self.stream.write(text)
                    self.stream.flush()
                except Exception:  # a closed or broken stream: nothing left to tell
                    pass
            with self._changed:
                self._writing = False
                self._changed.notify_all()
            if closing and not self._lines:
                return

    def _dropped_line(self, count: int) -> str:
        """The notice of dropped lines, in the same format as every other line."""
        notice = logging.LogRecord(
            __name__, logging.WARNING, __file__, 0, "%d log lines dropped: the log's reader fell behind", (count,), None
        )
        return self.format(notice) + "\n"
