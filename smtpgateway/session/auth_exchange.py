"""The AUTH exchange (RFC 4954): PLAIN, LOGIN, XOAUTH2 and OAUTHBEARER (RFC 7628)
with the API key as the bearer token; every attempt recorded.

Every attempt that reaches the server becomes an ``AuthAttempt`` record, even a
malformed, refused or abandoned one: those that never reach the checks are
recorded here; the others by the checker. A failure is answered no sooner than
``SMTP_AUTH_FAILURE_DELAY`` after the AUTH began, so the reply's timing does not
say which check failed, and the session closes on its
``SMTP_AUTH_MAX_FAILURES``-th failure.

Lines of the exchange, the AUTH command's included, may be 12,288 octets long
(RFC 4954 section 4), so that a long initial response fits; a longer one is
``500 5.5.6``, recorded as MALFORMED, and the session goes on.

The bearer mechanisms fail in their own way: a ``334`` with a base64 JSON error
(Google's ``{"status":"401","schemes":"bearer"}`` for XOAUTH2, RFC 7628's
``{"status":"invalid_token",...}`` for OAUTHBEARER), the client's dummy
response, then the same final reply as PLAIN.

The exchange runs over a :class:`Conversation`, the few things it needs of the
session's protocol (``smtpgateway.session.protocol.GatewaySMTP``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

from django.utils import timezone

from smtpgateway.auth.rules import Outcome, Peer
from smtpgateway.config import GatewayConfig
from smtpgateway.metrics import GatewayMetrics
from smtpgateway.reasons import Reason
from smtpgateway.session import replies
from smtpgateway.session.state import ClientGone, GatewaySession, Identity, Overlong
from smtpgateway.storage.jobs import AttemptRecord, AuthJob

log = logging.getLogger("smtpgateway.server")

AUTH_MECHANISMS = ("PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER")
_LOGIN_USERNAME_PROMPT = base64.b64encode(b"Username:")
_LOGIN_PASSWORD_PROMPT = base64.b64encode(b"Password:")
# What a bearer mechanism says, in a 334, of a token it does not take.
_BEARER_ERRORS = {
    "XOAUTH2": base64.b64encode(json.dumps({"status": "401", "schemes": "bearer"}, separators=(",", ":")).encode()),
    "OAUTHBEARER": base64.b64encode(
        json.dumps({"status": "invalid_token", "scope": "smtp:send"}, separators=(",", ":")).encode()
    ),
}


class Conversation(Protocol):
    """What the exchange needs of the session's protocol."""

    config: GatewayConfig
    loop: asyncio.AbstractEventLoop
    metrics: GatewayMetrics

    def gateway_session(self) -> GatewaySession: ...

    def peer(self) -> Peer: ...

    def auth_offered(self) -> bool: ...

    async def push(self, status: str | bytes) -> None: ...

    async def read_line(self) -> bytes | Overlong:
        """A line without its CRLF, up to 12,288 octets with it; Overlong if it
        was longer (then read and dropped); raises ClientGone at the end of input."""
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
            credentials = await self._read(mechanism, initial)
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
        self.smtp.metrics.auth_attempt(mechanism, outcome.reason)
        reply = replies.auth_reply(outcome.reason)
        if not outcome.success:
            # The bearer mechanisms' error step, for a token refused (not for a fault).
            error = _BEARER_ERRORS.get(mechanism) if reply.startswith("535") else None
            await self._answer_failure(outcome.reason, reply, started, error)
            return
        assert outcome.inbox is not None and outcome.key is not None
        session.authenticated = True
        default_limit = self.smtp.config.daily_recipient_limit
        inbox, organization_limit = outcome.inbox, outcome.inbox.organization_daily_recipient_limit
        session.identity = Identity(
            inbox.id,
            inbox.inbox_id,
            inbox.email,
            inbox.organization_id,
            outcome.key.id,
            inbox_recipient_limit=default_limit if inbox.daily_recipient_limit is None else inbox.daily_recipient_limit,
            organization_recipient_limit=default_limit if organization_limit is None else organization_limit,
        )
        log.info(
            "Auth succeeded: inbox %s (session %s)",
            outcome.inbox.inbox_id,
            session.session_id,
            extra=session.log_fields() | {"reason": outcome.reason},
        )
        await self.smtp.push(reply)
        self.smtp.metrics.auth_success.observe(self.smtp.loop.time() - started)

    async def refuse_overlong(self, start: bytes) -> None:
        """An AUTH command line over 12,288 octets (``start``: its first bytes)."""
        words = start.split()
        mechanism = words[1].decode("ascii", errors="replace").upper()[:32] if len(words) > 1 else ""
        started = self.smtp.loop.time()
        await self._reject(mechanism, Rejected(Reason.MALFORMED, replies.AUTH_LINE_TOO_LONG), started)

    async def _read(self, mechanism: str, initial: str | None) -> tuple[bytes, bytes] | Rejected:
        if mechanism == "PLAIN":
            return await self._read_plain(initial)
        if mechanism == "LOGIN":
            return await self._read_login(initial)
        blob = await self._initial_or_challenge(initial)
        if isinstance(blob, Rejected):
            return blob
        if mechanism == "XOAUTH2":
            return read_xoauth2(blob)
        return read_oauthbearer(blob)

    async def _reject(self, mechanism: str, rejected: Rejected, started: float) -> None:
        self._record_unchecked(mechanism, rejected.username, rejected.reason)
        await self._answer_failure(rejected.reason, rejected.reply, started)

    def _record_unchecked(self, mechanism: str, username: bytes, reason: Reason) -> None:
        """Record an attempt that never reached the checks (committed shortly)."""
        self.smtp.metrics.auth_attempt(mechanism, reason)
        record = AttemptRecord.build(
            peer=self.smtp.peer(), when=timezone.now(), mechanism=mechanism, username=username, reason=reason
        )
        self.smtp.record(record)

    def _failure_delay(self) -> float:
        """Seconds after its start that a failed AUTH is answered (none for exempt clients)."""
        return 0.0 if self.smtp.gateway_session().client.exempt else max(0.0, self.smtp.config.auth_failure_delay)

    async def _answer_failure(self, reason: Reason, reply: str, started: float, error: bytes | None = None) -> None:
        """Log, then answer a failed AUTH no sooner than ``auth_failure_delay`` after
        it began (so every failure takes the same time, whatever failed), and close
        the session on its ``auth_max_failures``-th failure. ``error``: a bearer
        mechanism's error, sent first in a 334; the client's answer to it is read
        and ignored (RFC 7628 section 3.2.3: it must be a dummy)."""
        session = self.smtp.gateway_session()
        if reason is not Reason.TEMPORARY_FAILURE:
            session.auth_failures += 1
        closing = 0 < self.smtp.config.auth_max_failures <= session.auth_failures
        code = " ".join(reply.split(" ", 2)[:2])  # "535 5.7.8", "538 5.7.11"
        log.warning(
            "Auth failed: %s, returning %s (session %s, %s)",
            reason,
            code,
            session.session_id,
            session.remote_addr,
            extra=session.log_fields() | {"reason": reason},
        )
        delay = self._failure_delay()
        if delay > 0:
            await asyncio.sleep(max(0.0, started + delay - self.smtp.loop.time()))
        if error is not None:
            await self.smtp.push(b"334 " + error)
            await self.smtp.read_line()
        await self.smtp.push(reply)
        self.smtp.metrics.auth_failure.observe(self.smtp.loop.time() - started)
        if closing:
            # The error that was made comes first, as Postfix answers it: a
            # client that reads only the 421 would take a wrong key for a
            # passing fault and retry it later.
            await self.smtp.close_with(replies.TOO_MANY_AUTH_FAILURES)

    async def _initial_or_challenge(self, initial: str | None) -> bytes | Rejected:
        """The client's response: the initial one, or the answer to an empty 334."""
        if initial is None:
            return await self._challenge(b"")
        return _decode_base64(initial.encode("ascii", errors="replace"))

    async def _read_plain(self, initial: str | None) -> tuple[bytes, bytes] | Rejected:
        blob = await self._initial_or_challenge(initial)
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
        if isinstance(line, Overlong):
            return Rejected(Reason.MALFORMED, replies.AUTH_LINE_TOO_LONG)
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


def read_xoauth2(blob: bytes) -> tuple[bytes, bytes] | Rejected:
    """``user=<inbox>\\x01auth=Bearer <key>\\x01\\x01`` (Google's XOAUTH2)."""
    fields = _key_values(blob.split(b"\x01"))
    username = fields.get(b"user")
    token = _bearer_token(fields.get(b"auth"))
    if username is None or token is None or not blob.endswith(b"\x01\x01"):
        return Rejected(Reason.MALFORMED, replies.AUTH_BAD_XOAUTH2, username=username or b"")
    return username, token


def read_oauthbearer(blob: bytes) -> tuple[bytes, bytes] | Rejected:
    """RFC 7628: ``n,a=<inbox>,\\x01[host=...\\x01port=...\\x01]auth=Bearer <key>\\x01\\x01``.
    The GS2 header's authzid names the inbox; host and port are ignored; a client
    asking for channel binding (``p=``) is refused, as the mechanism has none."""
    header, separator, rest = blob.partition(b"\x01")
    parts = header.split(b",")
    if not separator or len(parts) != 3 or parts[2] or not blob.endswith(b"\x01\x01"):
        return Rejected(Reason.MALFORMED, replies.AUTH_BAD_OAUTHBEARER)
    flag, authzid = parts[0], parts[1]
    if flag.startswith(b"p="):
        return Rejected(Reason.MALFORMED, replies.AUTH_NO_CHANNEL_BINDING)
    if flag not in (b"n", b"y") or (authzid and not authzid.startswith(b"a=")):
        return Rejected(Reason.MALFORMED, replies.AUTH_BAD_OAUTHBEARER)
    # saslname (RFC 5801): "," and "=" are sent as "=2C" and "=3D".
    username = authzid[2:].replace(b"=2C", b",").replace(b"=3D", b"=")
    token = _bearer_token(_key_values(rest.split(b"\x01")).get(b"auth"))
    if token is None:
        return Rejected(Reason.MALFORMED, replies.AUTH_BAD_OAUTHBEARER, username=username)
    return username, token


def _key_values(pairs: list[bytes]) -> dict[bytes, bytes]:
    found: dict[bytes, bytes] = {}
    for pair in pairs:
        key, equals, value = pair.partition(b"=")
        if equals:
            found.setdefault(key.lower(), value)
    return found


def _bearer_token(auth: bytes | None) -> bytes | None:
    """The token of ``Bearer <token>`` (the scheme's name without case, RFC 6750)."""
    if auth is None:
        return None
    scheme, _, token = auth.partition(b" ")
    return token.strip() if scheme.lower() == b"bearer" and token.strip() else None
