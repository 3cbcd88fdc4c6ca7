"""``LOG_FORMAT=json``: each log record as one JSON object on one line.

The object holds ``time`` (UTC, ISO 8601 with milliseconds), ``level``,
``logger`` and ``event`` (the message, exactly the text of the human format),
then those of the fields below that the record carries (the log calls pass them
with ``extra=``), then ``exception`` with the traceback when there is one.

Only the fields named here are written: a record's other attributes, whatever
some library put in ``extra``, never reach the log, so nothing beyond what the
human format shows (which the tests keep free of secrets) can leak through it.
Non-ASCII is escaped, so a line is ASCII and splits only at its newline.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

# Fields a record may carry (from extra=), in the order they are written.
FIELDS = (
    "session_id",  # the SMTP session (AuthAttempt.session_id)
    "client_address",  # the client's IP address (after a PROXY header, the real client's)
    "inbox_id",  # the inbox a session authenticated as
    "reason",  # why an AUTH ended as it did (smtpgateway.reasons.Reason)
    "queue_id",  # an accepted message
    "recipient",  # one recipient of a delivery
    "status",  # what a delivery attempt came to: delivered, deferred, bounced
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = value if isinstance(value, (int, float, bool)) else str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry)
