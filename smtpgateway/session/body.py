"""Reading a message body (the DATA phase) into one buffer.

aiosmtpd keeps the body as a list of lines and joins them at the end, so a
message is in memory twice at that moment. Here each line is appended, dot
unstuffed (RFC 5321 section 4.5.2), to a single ``bytearray``; with glibc's mmap
threshold fixed at start-up (``runsmtp``), a large buffer grows by ``mremap``
without copying, and is unmapped when the message is gone. Together with the
store writing the ``Received:`` header and the body without joining them
(``smtpgateway.storage.message_inserts``), a message costs about its own size once.

As aiosmtpd does (RFC 5321 section 4.2.5 implies it), a body over the size
limit or with an over-long line is read to its end, kept nowhere, and only then
refused.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Hashable

END_OF_DATA = b".\r\n"


class BodyProblem(enum.Enum):
    LINE_TOO_LONG = "line too long"
    TOO_LARGE = "too large"
    NO_ROOM = "no room"  # the bodies in memory, over all sessions, reached their limit


class BodyBudget:
    """The bytes of message bodies this process holds in memory, over all
    sessions, against a limit (0: none). Each session may send up to the message
    size limit, and a thousand sessions of 10 MiB each would be 10 GiB: past the
    limit a body is refused with a 4xx, to be sent again later, instead of the
    process growing until the system kills it.

    One owner (an inbox) may hold at most ``share`` of it (0: no such bound), so
    that one inbox sending many large messages at once, from many sessions and
    addresses, cannot leave every other inbox with 4xx replies. Used on the event
    loop only."""

    def __init__(self, limit: int, share: int = 0) -> None:
        self.limit = limit
        self.share = share
        self.used = 0
        self._used_by: dict[Hashable, int] = {}

    def take(self, size: int, owner: Hashable = None) -> bool:
        held = self._used_by.get(owner, 0)
        if (self.limit and self.used + size > self.limit) or (self.share and held + size > self.share):
            return False
        self.used += size
        self._used_by[owner] = held + size
        return True

    def give_back(self, size: int, owner: Hashable = None) -> None:
        self.used -= size
        held = self._used_by.pop(owner, 0) - size
        if held > 0:
            self._used_by[owner] = held

    def held_by(self, owner: Hashable) -> int:
        return self._used_by.get(owner, 0)


def inbox_share(limit: int, max_message_size: int) -> int:
    """What one inbox may hold of ``limit``: a quarter, but never less than one
    message of the largest size (or a message that fits the whole budget could
    never be taken)."""
    if not limit:
        return 0
    return min(limit, max(limit // 4, max_message_size))


async def read_body(
    reader: asyncio.StreamReader, body: bytearray, max_size: int, budget: BodyBudget, owner: Hashable = None
) -> BodyProblem | None:
    """Read lines up to the lone dot into ``body``. ``max_size`` counts the bytes
    as sent (0: no limit); the longest line is the reader's limit. ``budget``
    holds ``len(body)`` for ``owner``: the caller gives it back when done with
    the body. On a problem, ``body`` is emptied (and given back) and the rest of
    the body read and dropped.

    Raises ``asyncio.IncompleteReadError`` if the client leaves mid-body."""
    problem: BodyProblem | None = None
    received = 0
    in_long_line = False  # the rest of an over-long line is still to come
    while True:
        try:
            line = await reader.readuntil(b"\r\n")
        except asyncio.LimitOverrunError as overrun:
            # Over the line limit: drop what is buffered; the line's end comes later.
            received += len(await reader.readexactly(overrun.consumed))
            problem = problem or BodyProblem.LINE_TOO_LONG
            budget.give_back(len(body), owner)
            del body[:]
            in_long_line = True
            continue
        if in_long_line:
            received += len(line)
            in_long_line = False
            continue
        if line == END_OF_DATA:
            return problem
        received += len(line)
        if problem is None and max_size and received > max_size:
            problem = BodyProblem.TOO_LARGE
        # A leading dot was doubled by the client (dot stuffing); drop one.
        content = memoryview(line)[1:] if line[:1] == b"." else line
        if problem is None and not budget.take(len(content), owner):
            problem = BodyProblem.NO_ROOM
        if problem is None:
            body += content
        elif body:
            budget.give_back(len(body), owner)
            del body[:]
