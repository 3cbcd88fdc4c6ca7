"""The SMTP side of the gateway: aiosmtpd's protocol with our rules, and its wiring.

* :class:`GatewaySMTP` is aiosmtpd's ``SMTP`` with our EHLO, our AUTH exchange
  (so that every attempt, even a malformed one, is recorded) and an enhanced status
  code on every reply.
* :class:`GatewayHandler` holds the hooks for MAIL, RCPT and DATA.
* :class:`GatewayServer` listens and keeps track of its sessions.

This module never touches the ORM: every database step is a unit from
``smtpgateway.auth`` or ``smtpgateway.submission`` run by the ``DatabaseWorker``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import logging
import secrets
import signal
import ssl
import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from aiosmtpd.smtp import SMTP, Envelope, Session, TLSSetupException, syntax
from django.conf import settings
from django.db import DatabaseError

from smtpgateway import replies
from smtpgateway.auth import Outcome, Peer, authenticate, record_unvalidated
from smtpgateway.reasons import Reason
from smtpgateway.recorder import recorder
from smtpgateway.submission import Submission, store_message
from smtpgateway.tls import CertificateStore, TlsInfo
from smtpgateway.worker import DatabaseWorker

log = logging.getLogger(__name__)

AUTH_MECHANISMS = ("PLAIN", "LOGIN")
# RFC 5321 4.5.3.1.4 allows 512 octets per command line; extensions may add to it
# (SIZE=, BODY=, SMTPUTF8 on MAIL; RFC 4954 allows long AUTH lines).
COMMAND_SIZE_LIMITS: collections.defaultdict[str, int] = collections.defaultdict(
    lambda: 512, {"MAIL": 512 + 26 + 14 + 10, "AUTH": 1000}
)
_LOGIN_USERNAME_PROMPT = base64.b64encode(b"Username:")
_LOGIN_PASSWORD_PROMPT = base64.b64encode(b"Password:")
FLUSH_INTERVAL = 5.0  # seconds between retries of AuthAttempts the database refused


@dataclass(frozen=True)
class GatewayConfig:
    host: str
    port: int
    hostname: str
    max_message_size: int
    max_recipients: int
    auth_require_tls: bool
    db_workers: int
    backlog: int
    idle_timeout: float = 300.0
    tls_port: int | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_min_version: str = "1.2"

    @classmethod
    def from_settings(cls, **overrides: Any) -> GatewayConfig:
        cert, key = settings.SMTP_TLS_CERT_FILE, settings.SMTP_TLS_KEY_FILE
        config = cls(
            host=settings.SMTP_HOST,
            port=settings.SMTP_PORT,
            hostname=settings.SMTP_HOSTNAME,
            max_message_size=settings.SMTP_MAX_MESSAGE_SIZE,
            max_recipients=settings.SMTP_MAX_RECIPIENTS,
            auth_require_tls=settings.SMTP_AUTH_REQUIRE_TLS,
            db_workers=settings.SMTP_DB_WORKERS,
            backlog=settings.SMTP_LISTEN_BACKLOG,
            tls_port=settings.SMTP_TLS_PORT,
            tls_cert_file=settings.BASE_DIR / cert if cert else None,
            tls_key_file=settings.BASE_DIR / key if key else None,
            tls_min_version=settings.SMTP_TLS_MIN_VERSION,
        )
        # None means "as the settings say" (a command-line option left out).
        return replace(config, **{k: v for k, v in overrides.items() if v is not None})


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a session authenticated as."""

    inbox_pk: int
    inbox_id: str
    email: str
    organization_id: int
    api_key_id: int


class GatewaySession(Session):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.session_id: str = secrets.token_hex(6)
        self.identity: Identity | None = None
        self.tls: TlsInfo | None = None


@dataclass(slots=True)
class _Rejected:
    """An AUTH exchange that ended before validation."""

    reason: Reason
    reply: str
    username: bytes = field(default=b"")


class GatewaySMTP(SMTP):
    """One SMTP session. ``starttls_context`` is the context STARTTLS upgrades with
    (None on the implicit-TLS listener, where the connection is already encrypted)."""

    def __init__(
        self, handler: GatewayHandler, loop: asyncio.AbstractEventLoop, starttls_context: ssl.SSLContext | None = None
    ) -> None:
        config = handler.config
        super().__init__(
            handler,
            data_size_limit=config.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=config.hostname,
            ident=replies.GREETING_TEXT,
            tls_context=starttls_context,
            require_starttls=False,
            timeout=config.idle_timeout,
            auth_required=False,  # enforced by check_auth_needed below
            auth_require_tls=config.auth_require_tls,
            auth_exclude_mechanism=None,
            auth_callback=None,
            command_call_limit=None,
            authenticator=None,
            proxy_protocol_timeout=None,
            loop=loop,
        )
        # aiosmtpd keeps these limits in a class-level dict that grows with every
        # EHLO; ours are fixed and shared.
        self.command_size_limits = COMMAND_SIZE_LIMITS
        self.event_handler: GatewayHandler = handler

    def _create_session(self) -> GatewaySession:
        return GatewaySession(self.loop)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        previous = self.session
        super().connection_made(transport)  # also after STARTTLS, with a new session
        session = self.gateway_session()
        if isinstance(previous, GatewaySession):
            session.session_id = previous.session_id  # one id for the whole connection
        # Judged from the transport itself, so that a connection to the implicit-TLS
        # listener counts as encrypted too (aiosmtpd looks only at its own STARTTLS
        # state and withholds AUTH there: aio-libs/aiosmtpd issue 281).
        session.tls = TlsInfo.of(transport)

    def gateway_session(self) -> GatewaySession:
        # A method, not a property: aiosmtpd's __init__ reflects over every
        # attribute (inspect.getmembers) before a session exists.
        assert isinstance(self.session, GatewaySession)
        return self.session

    # --- replies -----------------------------------------------------------------
    async def push(self, status: str | bytes) -> None:
        if isinstance(status, str):
            status = replies.with_enhanced_code(status)
        await super().push(status)

    async def _push_lines(self, lines: list[str]) -> None:
        """A multi-line reply in one write (EHLO's lines carry no enhanced code)."""
        text = "".join(f"250-{line}\r\n" for line in lines[:-1]) + f"250 {lines[-1]}\r\n"
        self._writer.write(text.encode("ascii"))
        await self._writer.drain()

    # --- EHLO --------------------------------------------------------------------
    def encrypted(self) -> bool:
        return self.gateway_session().tls is not None

    def auth_offered(self) -> bool:
        return not self._auth_require_tls or self.encrypted()

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str) -> None:
        if not hostname:
            await self.push("501 5.5.4 Syntax: EHLO hostname")
            return
        self._set_rset_state()
        session = self.gateway_session()
        session.extended_smtp = True
        session.host_name = hostname
        lines = [self.hostname, f"SIZE {self.data_size_limit}", "8BITMIME", "SMTPUTF8", "PIPELINING"]
        if self.tls_context and not self.encrypted():
            lines.append("STARTTLS")
        if self.auth_offered():
            lines.append("AUTH " + " ".join(AUTH_MECHANISMS))
        lines.append("ENHANCEDSTATUSCODES")
        await self._push_lines(lines)

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str | None) -> None:
        if arg:
            await self.push(replies.STARTTLS_SYNTAX)
        elif self.encrypted():
            await self.push(replies.TLS_ALREADY_ACTIVE)
        elif not self.tls_context:
            await self.push(replies.TLS_NOT_AVAILABLE)
        else:
            await super().smtp_STARTTLS(arg)

    # --- AUTH --------------------------------------------------------------------
    async def check_auth_needed(self, caller_method: str) -> bool:
        if caller_method in ("MAIL", "RCPT", "DATA") and not self.gateway_session().authenticated:
            await self.push(replies.AUTH_REQUIRED)
            return True
        return False

    def peer(self) -> Peer:
        session = self.gateway_session()
        address = session.peer if isinstance(session.peer, tuple) else (None, None)
        return Peer(session.session_id, address[0], address[1], session.tls)

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str | None) -> None:
        session = self.gateway_session()
        if not session.host_name or not session.extended_smtp:
            await self.push(replies.AUTH_NEEDS_EHLO)
            return
        if session.authenticated:
            await self.push(replies.AUTH_ALREADY)
            return
        args = arg.split() if arg else []
        if not 1 <= len(args) <= 2:
            await self.push(replies.AUTH_SYNTAX)
            return
        mechanism = args[0].upper()
        if mechanism not in AUTH_MECHANISMS:
            await self._reject(mechanism[:32], _Rejected(Reason.UNSUPPORTED_MECHANISM, replies.AUTH_UNSUPPORTED))
            return
        if not self.auth_offered():
            await self._reject(mechanism, _Rejected(Reason.ENCRYPTION_REQUIRED, replies.AUTH_ENCRYPTION_REQUIRED))
            return
        initial = args[1] if len(args) == 2 else None
        username = b""
        try:
            if mechanism == "PLAIN":
                credentials = await self._read_plain(initial)
            else:
                credentials = await self._read_login(initial)
        except (asyncio.CancelledError, ConnectionError):
            # The client left mid-exchange: still an attempt that reached us.
            self.event_handler.db.submit(record_unvalidated, self.peer(), mechanism, username, Reason.ABORTED)
            raise
        if isinstance(credentials, _Rejected):
            await self._reject(mechanism, credentials)
            return
        username, password = credentials
        outcome: Outcome = await self.event_handler.db.run(authenticate, self.peer(), mechanism, username, password)
        reply = replies.auth_reply(outcome.reason)
        if outcome.success:
            assert outcome.inbox is not None and outcome.key is not None
            session.authenticated = True
            session.identity = Identity(
                outcome.inbox.id, outcome.inbox.inbox_id, outcome.inbox.email, outcome.inbox.organization_id, outcome.key.id
            )
            log.info("Auth succeeded: inbox %s (session %s)", outcome.inbox.inbox_id, session.session_id)
        else:
            self._log_auth_failure(outcome.reason, reply)
        await self.push(reply)

    async def _reject(self, mechanism: str, rejected: _Rejected) -> None:
        await self.event_handler.db.run(record_unvalidated, self.peer(), mechanism, rejected.username, rejected.reason)
        self._log_auth_failure(rejected.reason, rejected.reply)
        await self.push(rejected.reply)

    def _log_auth_failure(self, reason: Reason, reply: str) -> None:
        session = self.gateway_session()
        log.warning(
            "Auth failed: %s, returning %s (session %s, %s)", reason, reply[:9], session.session_id, self.peer().remote_addr
        )

    async def _read_plain(self, initial: str | None) -> tuple[bytes, bytes] | _Rejected:
        if initial is None:
            blob = await self._challenge(b"")
        else:
            blob = _decode_base64(initial.encode("ascii", errors="replace"))
        if isinstance(blob, _Rejected):
            return blob
        parts = blob.split(b"\x00")
        if len(parts) != 3:
            return _Rejected(Reason.MALFORMED, replies.AUTH_BAD_PLAIN)
        # RFC 4616: authzid, authcid, password. We act only as authcid, so an
        # authzid is ignored (as most submission servers do).
        return parts[1], parts[2]

    async def _read_login(self, initial: str | None) -> tuple[bytes, bytes] | _Rejected:
        if initial is None:
            username = await self._challenge(_LOGIN_USERNAME_PROMPT)
        else:
            username = _decode_base64(initial.encode("ascii", errors="replace"))
        if isinstance(username, _Rejected):
            return username
        password = await self._challenge(_LOGIN_PASSWORD_PROMPT)
        if isinstance(password, _Rejected):
            password.username = username
            return password
        return username, password

    async def _challenge(self, prompt: bytes) -> bytes | _Rejected:
        """Send a 334 and read the client's base64 answer, bounded in length."""
        await self.push(b"334 " + prompt)
        try:
            line = await self._reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as overrun:
            await self._discard_line(overrun.consumed)
            return _Rejected(Reason.MALFORMED, replies.LINE_TOO_LONG)
        except asyncio.IncompleteReadError as gone:
            raise ConnectionResetError("client closed during AUTH") from gone
        answer = line.strip()
        if answer == b"*":
            return _Rejected(Reason.ABORTED, replies.AUTH_ABORTED)
        return _decode_base64(answer)

    async def _discard_line(self, consumed: int) -> None:
        await self._reader.read(consumed)
        while True:
            try:
                await self._reader.readuntil(b"\n")
                return
            except asyncio.LimitOverrunError as more:
                await self._reader.read(more.consumed)


def _decode_base64(data: bytes) -> bytes | _Rejected:
    if data == b"=":  # RFC 4954: an empty initial response
        return b""
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return _Rejected(Reason.MALFORMED, replies.AUTH_BAD_BASE64)


class GatewayHandler:
    """aiosmtpd hooks for the mail transaction. Shared by all sessions: holds no
    per-session state (that lives on the session and the envelope)."""

    def __init__(self, config: GatewayConfig, db: DatabaseWorker) -> None:
        self.config = config
        self.db = db

    async def handle_MAIL(
        self, server: GatewaySMTP, session: GatewaySession, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        identity = session.identity
        assert identity is not None  # check_auth_needed ran first
        # Domains are case-insensitive; local parts too at every provider we know.
        if address.lower() != identity.email.lower():
            log.warning(
                "Sender rejected: %s may only send as %s (session %s)", identity.inbox_id, identity.email, session.session_id
            )
            return replies.SENDER_NOT_OWNED
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return replies.SENDER_OK

    async def handle_RCPT(
        self, server: GatewaySMTP, session: GatewaySession, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if len(envelope.rcpt_tos) >= self.config.max_recipients:
            return replies.TOO_MANY_RECIPIENTS
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return replies.RECIPIENT_OK

    async def handle_DATA(self, server: GatewaySMTP, session: GatewaySession, envelope: Envelope) -> str:
        identity = session.identity
        assert identity is not None and envelope.mail_from is not None
        submission = Submission(
            inbox_pk=identity.inbox_pk,
            session_id=session.session_id,
            helo_name=session.host_name or "unknown",
            remote_addr=server.peer().remote_addr,
            hostname=self.config.hostname,
            protocol="ESMTPSA" if session.tls else "ESMTPA",
            tls_note=session.tls.received_note() if session.tls else "",
            mail_from=envelope.mail_from,
            rcpt_tos=tuple(envelope.rcpt_tos),
            content=envelope.original_content or b"",
        )
        try:
            queue_id = await self.db.run(store_message, submission)
        except DatabaseError:
            log.exception("Message not stored (session %s); answered 451", session.session_id)
            return replies.STORE_TEMPORARY_FAILURE
        log.info(
            "Queued %s from %s: %d bytes, %d recipients (session %s)",
            queue_id,
            identity.inbox_id,
            len(submission.content),
            len(submission.rcpt_tos),
            session.session_id,
        )
        return replies.QUEUED.format(queue_id=queue_id)

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):
            # A client that cannot (or will not) complete the handshake after
            # STARTTLS: aiosmtpd closes that connection and nothing else.
            log.info("TLS handshake after STARTTLS failed: %s", error.__cause__ or error)
            return replies.TLS_NOT_AVAILABLE
        # The traceback goes to our log; the client gets a generic reply.
        log.error("Unexpected error in an SMTP session", exc_info=error)
        return replies.INTERNAL_ERROR


class GatewayServer:
    """The listening side: creates a protocol per connection and tracks them."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.certificates: CertificateStore | None = None
        if config.tls_cert_file and config.tls_key_file:
            self.certificates = CertificateStore(config.tls_cert_file, config.tls_key_file, config.tls_min_version)
        elif config.tls_port is not None:
            raise ValueError("An implicit-TLS port needs SMTP_TLS_CERT_FILE and SMTP_TLS_KEY_FILE.")
        self.db = DatabaseWorker(config.db_workers)
        self.handler = GatewayHandler(config, self.db)
        self._listeners: list[asyncio.base_events.Server] = []
        self._sessions: weakref.WeakSet[GatewaySMTP] = weakref.WeakSet()
        self._flush_task: asyncio.Task[None] | None = None

    def _new_protocol(self, starttls_context: ssl.SSLContext | None) -> GatewaySMTP:
        protocol = GatewaySMTP(self.handler, asyncio.get_running_loop(), starttls_context)
        self._sessions.add(protocol)
        return protocol

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        context = self.certificates.context if self.certificates else None
        common = {"host": self.config.host, "backlog": self.config.backlog, "reuse_address": True}
        self._listeners.append(
            await loop.create_server(lambda: self._new_protocol(context), port=self.config.port, **common)
        )
        if self.config.tls_port is not None:  # 0: any free port (tests)
            self._listeners.append(
                await loop.create_server(
                    lambda: self._new_protocol(None), port=self.config.tls_port, ssl=context, ssl_handshake_timeout=30, **common
                )
            )
        self._flush_task = loop.create_task(self._flush_kept_records())

    @property
    def port(self) -> int:
        return self._listeners[0].sockets[0].getsockname()[1]

    @property
    def tls_port(self) -> int | None:
        return self._listeners[1].sockets[0].getsockname()[1] if len(self._listeners) > 1 else None

    def reload_certificates(self) -> None:
        if self.certificates is None:
            log.warning("Asked to reload TLS certificates, but none are configured")
            return
        self.certificates.reload()

    async def _flush_kept_records(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            if len(recorder):
                await self.db.run(recorder.flush)

    async def stop(self) -> None:
        for listener in self._listeners:
            listener.close()
        for protocol in list(self._sessions):
            if protocol.transport is not None:
                protocol.transport.close()
        if self._flush_task is not None:
            self._flush_task.cancel()
        await asyncio.sleep(0)  # let connection_lost run for the closed sessions
        loop = asyncio.get_running_loop()
        await self.db.run(recorder.flush)
        await loop.run_in_executor(None, self.db.shutdown)


async def serve_until_signalled(config: GatewayConfig, on_ready: Callable[[GatewayServer], None]) -> None:
    """Run the gateway until SIGINT or SIGTERM, then stop it cleanly. SIGHUP
    re-reads the TLS certificate without dropping a connection."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    server = GatewayServer(config)
    loop.add_signal_handler(signal.SIGHUP, server.reload_certificates)
    await server.start()
    on_ready(server)
    await stop.wait()
    log.info("Stopping the gateway")
    await server.stop()
