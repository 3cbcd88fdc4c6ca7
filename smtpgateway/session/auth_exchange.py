"""The AUTH exchange (RFC 4954): PLAIN and LOGIN, every attempt recorded.

Every attempt that reaches the server becomes an ``AuthAttempt`` record, even a
malformed, refused or abandoned one: those that never reach the checks are
recorded here; the others by the checker. A failure is answered no sooner than
``SMTP_AUTH_FAILURE_DELAY`` after the AUTH began, so the reply's timing does not
say which check failed, and the session closes on its
``SMTP_AUTH_MAX_FAILURES``-th failure.

The exchange runs over a :class:`Conversation`, the few things it needs of the
session's protocol (``smtpgateway.session.protocol.GatewaySMTP``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

from django.utils import timezone

from smtpgateway.auth.rules import Outcome, Peer
from smtpgateway.config import GatewayConfig
from smtpgateway.reasons import Reason
from smtpgateway.session import replies
from smtpgateway.session.state import ClientGone, GatewaySession, Identity
from smtpgateway.storage.jobs import AttemptRecord, AuthJob

log = logging.getLogger("smtpgateway.server")

AUTH_MECHANISMS = ("PLAIN", "LOGIN")
_LOGIN_USERNAME_PROMPT = base64.b64encode(b"Username:")
_LOGIN_PASSWORD_PROMPT = base64.b64encode(b"Password:")


class Conversation(Protocol):
    """What the exchange needs of the session's protocol."""

    config: GatewayConfig
    loop: asyncio.AbstractEventLoop

    def gateway_session(self) -> GatewaySession: ...

    def peer(self) -> Peer: ...

    def auth_offered(self) -> bool: ...

    async def push(self, status: str | bytes) -> None: ...

    async def read_line(self) -> bytes | None:
        """A line without its CRLF; None if it was over the limit (then read
        and dropped); raises ClientGone at the end of input."""
        ...

    async def close_with(self, reply: str) -> None: ...

    async def check(self, job: AuthJob) -> Outcome:
        """Decide an attempt (the checker thread records it)."""
        ...

    def record(self, record: AttemptRecord) -> None:
        """Record an attempt that never reached the checks."""
        ...


@dataclass(slots=True)
class Rejected:
    """An AUTH exchange that ended before validation."""

    reason: Reason
    reply: str
    username: bytes = field(default=b"")


class AuthExchange:
    """One AUTH command's exchange with the client."""

    def __init__(self, smtp: Conversation) -> None:
        self.smtp = smtp

    async def run(self, arg: str | None) -> None:
        """``AUTH <mechanism> [initial-response]``, to its last reply."""
        session = self.smtp.gateway_session()
        if not session.host_name or not session.extended_smtp:
            await self.smtp.push(replies.AUTH_NEEDS_EHLO)
            return
        if session.authenticated:
            await self.smtp.push(replies.AUTH_ALREADY)
            return
        args = arg.split() if arg else []
        if not 1 <= len(args) <= 2:
            await self.smtp.push(replies.AUTH_SYNTAX)
            return
        started = self.smtp.loop.time()
        mechanism = args[0].upper()
        if mechanism not in AUTH_MECHANISMS:
            await self._reject(
                mechanism[:32], Rejected(Reason.UNSUPPORTED_MECHANISM, replies.AUTH_UNSUPPORTED), started
            )
            return
        if not self.smtp.auth_offered():
            await self._reject(
                mechanism, Rejected(Reason.ENCRYPTION_REQUIRED, replies.AUTH_ENCRYPTION_REQUIRED), started
            )
            return
        initial = args[1] if len(args) == 2 else None
        try:
            if mechanism == "PLAIN":
                credentials = await self._read_plain(initial)
            else:
                credentials = await self._read_login(initial)
        except (asyncio.CancelledError, ConnectionError, ClientGone):
            # The client left mid-exchange: still an attempt that reached us.
            self._record_unchecked(mechanism, b"", Reason.ABORTED)
            raise
        if isinstance(credentials, Rejected):
            await self._reject(mechanism, credentials, started)
            return
        username, password = credentials
        rate_limit = None if session.client.exempt else self.smtp.config.auth_rate_limit
        reply_due = time.monotonic() + self._failure_delay() - (self.smtp.loop.time() - started)
        outcome = await self.smtp.check(AuthJob(self.smtp.peer(), mechanism, username, password, rate_limit, reply_due))
        reply = replies.auth_reply(outcome.reason)
        if not outcome.success:
            await self._answer_failure(outcome.reason, reply, started)
            return
        assert outcome.inbox is not None and outcome.key is not None
        session.authenticated = True
        session.identity = Identity(
            outcome.inbox.id, outcome.inbox.inbox_id, outcome.inbox.email, outcome.inbox.organization_id, outcome.key.id
        )
        log.info("Auth succeeded: inbox %s (session %s)", outcome.inbox.inbox_id, session.session_id)
        await self.smtp.push(reply)

    async def _reject(self, mechanism: str, rejected: Rejected, started: float) -> None:
        self._record_unchecked(mechanism, rejected.username, rejected.reason)
        await self._answer_failure(rejected.reason, rejected.reply, started)

    def _record_unchecked(self, mechanism: str, username: bytes, reason: Reason) -> None:
        """Record an attempt that never reached the checks (committed shortly)."""
        record = AttemptRecord.build(
            peer=self.smtp.peer(), when=timezone.now(), mechanism=mechanism, username=username, reason=reason
        )
        self.smtp.record(record)

    def _failure_delay(self) -> float:
        """Seconds after its start that a failed AUTH is answered (none for exempt clients)."""
        return 0.0 if self.smtp.gateway_session().client.exempt else max(0.0, self.smtp.config.auth_failure_delay)

    async def _answer_failure(self, reason: Reason, reply: str, started: float) -> None:
        """Log, then answer a failed AUTH no sooner than ``auth_failure_delay`` after
        it began (so every failure takes the same time, whatever failed), and close
        the session on its ``auth_max_failures``-th failure."""
        session = self.smtp.gateway_session()
        if reason is not Reason.TEMPORARY_FAILURE:
            session.auth_failures += 1
        closing = 0 < self.smtp.config.auth_max_failures <= session.auth_failures
        code = " ".join(reply.split(" ", 2)[:2])  # "535 5.7.8", "538 5.7.11"
        log.warning(
            "Auth failed: %s, returning %s (session %s, %s)", reason, code, session.session_id, session.remote_addr
        )
        delay = self._failure_delay()
        if delay > 0:
            await asyncio.sleep(max(0.0, started + delay - self.smtp.loop.time()))
        await self.smtp.push(reply)
        if closing:
            # The error that was made comes first, as Postfix answers it: a
            # client that reads only the 421 would take a wrong key for a
            # passing fault and retry it later.
            await self.smtp.close_with(replies.TOO_MANY_AUTH_FAILURES)

    async def _read_plain(self, initial: str | None) -> tuple[bytes, bytes] | Rejected:
        if initial is None:
            blob = await self._challenge(b"")
        else:
            blob = _decode_base64(initial.encode("ascii", errors="replace"))
        if isinstance(blob, Rejected):
            return blob
        parts = blob.split(b"\x00")
        if len(parts) != 3:
            return Rejected(Reason.MALFORMED, replies.AUTH_BAD_PLAIN)
        authzid, authcid, password = parts
        # RFC 4616 section 2: the session acts as the authzid when one is given,
        # and an inbox may act only as itself. Refused before any check, so it
        # reveals nothing about the credentials (Cyrus and Dovecot refuse it too).
        if authzid and authzid != authcid:
            return Rejected(Reason.AUTHZID_MISMATCH, replies.AUTH_INVALID, username=authcid)
        return authcid, password

    async def _read_login(self, initial: str | None) -> tuple[bytes, bytes] | Rejected:
        if initial is None:
            username = await self._challenge(_LOGIN_USERNAME_PROMPT)
        else:
            username = _decode_base64(initial.encode("ascii", errors="replace"))
        if isinstance(username, Rejected):
            return username
        password = await self._challenge(_LOGIN_PASSWORD_PROMPT)
        if isinstance(password, Rejected):
            password.username = username
            return password
        return username, password

    async def _challenge(self, prompt: bytes) -> bytes | Rejected:
        """Send a 334 and read the client's base64 answer, bounded in length."""
        await self.smtp.push(b"334 " + prompt)
        line = await self.smtp.read_line()
        if line is None:
            return Rejected(Reason.MALFORMED, replies.LINE_TOO_LONG)
        answer = line.strip()
        if answer == b"*":
            return Rejected(Reason.ABORTED, replies.AUTH_ABORTED)
        return _decode_base64(answer)


def _decode_base64(data: bytes) -> bytes | Rejected:
    if data == b"=":  # RFC 4954: an empty initial response
        return b""
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return Rejected(Reason.MALFORMED, replies.AUTH_BAD_BASE64)
