"""One SMTP session: aiosmtpd's ``SMTP`` protocol with the gateway's rules.

We keep aiosmtpd's command implementations (MAIL, RCPT, RSET, ...) and its TLS
upgrade, and own what it leaves open:

* the command loop, so that every line counts against the limits, nothing a client
  sends is echoed into logs, and a shutting-down server answers ``421 4.3.2``;
* EHLO (``PIPELINING``, ``ENHANCEDSTATUSCODES``) and an enhanced code on every reply;
* the AUTH exchange, so that every attempt (even a malformed or abandoned one) is
  recorded, failures are answered after a delay, and a session is closed after
  too many failures;
* DATA, so that the body is read into one buffer (``smtpgateway.body``) under one
  deadline;
* connection admission (limits overall and per client address) and timeouts that
  say ``421`` before they close.

This module never touches the ORM: database work goes through the server's
``DatabaseWorker`` as jobs from ``smtpgateway.checks`` and ``smtpgateway.commits``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import logging
import re
import secrets
import ssl
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING, Awaitable, Callable

from aiosmtpd.proxy_protocol import get_proxy
from aiosmtpd.smtp import SMTP, Envelope, Session, TLSSetupException, syntax
from django.utils import timezone

from smtpgateway import replies
from smtpgateway.addresses import parse_path
from smtpgateway.auth import Outcome, Peer
from smtpgateway.body import BodyProblem, read_body
from smtpgateway.checks import AuthJob
from smtpgateway.commits import RecordsJob
from smtpgateway.limits import Client, classify_client
from smtpgateway.reasons import Reason
from smtpgateway.recorder import AttemptRecord
from smtpgateway.tls import TlsInfo

if TYPE_CHECKING:
    from smtpgateway.server import GatewayHandler

log = logging.getLogger("smtpgateway.server")

AUTH_MECHANISMS = ("PLAIN", "LOGIN")
# RFC 5321 4.5.3.1.4 allows 512 octets per command line; extensions may add to it
# (SIZE=, BODY=, SMTPUTF8 on MAIL; RFC 4954 allows long AUTH lines).
COMMAND_SIZE_LIMITS: collections.defaultdict[str, int] = collections.defaultdict(
    lambda: 512, {"MAIL": 512 + 26 + 14 + 10, "AUTH": 1000}
)
UNRECOGNIZED_COMMANDS_LIMIT = 5
PROXY_HEADER_TIMEOUT = 10.0
_BODY_PROBLEM_REPLIES = {
    BodyProblem.LINE_TOO_LONG: replies.LINE_TOO_LONG,
    BodyProblem.TOO_LARGE: replies.MESSAGE_TOO_LARGE,
    BodyProblem.NO_ROOM: replies.NO_ROOM_FOR_MESSAGE,
}
UNKNOWN_CLIENT = Client(None, None, exempt=False)
_COMMAND_WORD = re.compile(r"[A-Z][A-Z0-9-]{0,15}\Z")
_LOGIN_USERNAME_PROMPT = base64.b64encode(b"Username:")
_LOGIN_PASSWORD_PROMPT = base64.b64encode(b"Password:")


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a session authenticated as."""

    inbox_pk: int
    inbox_id: str
    email: str
    organization_id: int
    api_key_id: int


class GatewayEnvelope(Envelope):
    def __init__(self) -> None:
        super().__init__()
        # The recipients so far, domain in lower case: to keep each mailbox once.
        self.mailboxes: set[str] = set()


class GatewaySession(Session):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.session_id: str = secrets.token_hex(6)
        self.identity: Identity | None = None
        self.tls: TlsInfo | None = None
        self.auth_failures = 0
        # The client as the limits see it (exempt or not, the network counted),
        # set once its address is known, before the first command.
        self.client = UNKNOWN_CLIENT

    @property
    def remote_addr(self) -> str | None:
        """The client's address (after a PROXY header, the real client's), as
        :func:`client_address` made it when the connection or header came in."""
        return self.peer[0] if isinstance(self.peer, tuple) else None


def client_address(address: object) -> str | None:
    """An address as the gateway records, counts and limits it: the IP address's
    text without an IPv6 zone, or None if it is not an IP address.

    A link-local client's socket address carries a zone ("fe80::7%eth0"), naming
    an interface of this host rather than anything about the client; PostgreSQL's
    inet refuses it, and one such record would fail its whole batch. A PROXY v2
    header for a client on a UNIX socket gives a path (bytes), not an address."""
    if isinstance(address, (IPv4Address, IPv6Address)):
        address = str(address)
    if not isinstance(address, str):
        return None
    return address.partition("%")[0]


@dataclass(slots=True)
class _Rejected:
    """An AUTH exchange that ended before validation."""

    reason: Reason
    reply: str
    username: bytes = field(default=b"")


class _ClientGone(Exception):
    """The client closed its side; the session ends quietly."""


class GatewaySMTP(SMTP):
    """``starttls_context`` is what STARTTLS upgrades with (None on the implicit-TLS
    listener, where the connection is encrypted from the start)."""

    # Command name -> its function, found once per class (aiosmtpd searches with
    # dir() and inspect.getmembers on every connection: a third of its CPU) and
    # shared by every session: binding each command's method per connection cost
    # 3-5% of a session's CPU. Called as ``function(self, arg)``; HELP only reads
    # the functions' syntax attributes.
    _command_functions: dict[str, Callable[..., Awaitable[None]]] | None = None

    def __init__(
        self, handler: GatewayHandler, loop: asyncio.AbstractEventLoop, starttls_context: ssl.SSLContext | None = None
    ) -> None:
        # Sets what aiosmtpd's SMTP.__init__ sets (aiosmtpd 1.4.6), without its
        # per-connection reflection; the AUTH, EHLO and command-loop tables it
        # builds are ours (see the module docstring).
        config = handler.config
        # No client_connected_cb (aiosmtpd passes one of its methods, which this
        # protocol would then hold: a reference cycle that outlives a connection
        # whose TLS handshake fails); connection_made sets up the streams.
        self._reader = asyncio.StreamReader(loop=loop, limit=self.line_length_limit)
        asyncio.StreamReaderProtocol.__init__(self, self._reader, loop=loop)
        self.__ident__ = replies.GREETING_TEXT
        self.loop = loop
        self.event_handler: GatewayHandler = handler
        self.config = config
        self.data_size_limit = config.max_message_size
        self.enable_SMTPUTF8 = True
        self._decode_data = False
        self.hostname = config.hostname
        self.tls_context = starttls_context
        self.require_starttls = False
        self._timeout_duration = config.idle_timeout
        self._timeout_handle = None
        self._tls_handshake_okay = True
        self._tls_protocol = None
        self._original_transport = None
        self.session = None
        self.envelope = None
        self.transport = None
        self._handler_coroutine = None
        self._auth_require_tls = config.auth_require_tls
        self._auth_required = False  # enforced by check_auth_needed below
        self._authenticator = None
        self._auth_callback = None
        self._auth_methods = {}
        self._proxy_timeout = None
        self._enforce_call_limit = False
        self._ehlo_hook_ver = None
        self._handle_hooks = handler.hooks
        self._smtp_methods = self._commands()
        self.command_size_limits = COMMAND_SIZE_LIMITS
        self.busy = False  # a command is being carried out (shutdown waits for it)
        self._admitted = UNKNOWN_CLIENT  # counted in the connection registry as this
        self._counted = False
        self._refused = False
        self._lost = False  # connection_lost has run: no timer may be armed again

    @classmethod
    def _commands(cls) -> dict[str, Callable[..., Awaitable[None]]]:
        if cls._command_functions is None:
            cls._command_functions = {name[5:]: getattr(cls, name) for name in dir(cls) if name.startswith("smtp_")}
        return cls._command_functions

    def _create_session(self) -> GatewaySession:
        return GatewaySession(self.loop)

    def _create_envelope(self) -> GatewayEnvelope:
        return GatewayEnvelope()

    def gateway_session(self) -> GatewaySession:
        """The session, typed as ours (None only before connection_made)."""
        assert isinstance(self.session, GatewaySession)
        return self.session

    # --- connection lifecycle --------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        previous = self.session
        if previous is None:  # a new connection (not the STARTTLS upgrade)
            peername = transport.get_extra_info("peername")
            client = self._classify(client_address(peername[0]) if isinstance(peername, tuple) else None)
            refusal = self.event_handler.admission_refusal(client)
            if refusal is not None:
                self._refused = True
                log.warning("Connection from %s refused: %s", client.address, refusal)
                transport.write(refusal.encode("ascii") + b"\r\n")
                transport.close()
                return
            self._admitted, self._counted = client, True
        super().connection_made(transport)  # after STARTTLS too, with a new session
        if previous is None:  # before the session's task (just created) first runs
            self._writer = asyncio.StreamWriter(transport, self, self._reader, self.loop)
        session = self.gateway_session()
        if isinstance(previous, GatewaySession):
            # After STARTTLS: still the same connection and the same client.
            session.session_id = previous.session_id
            session.auth_failures = previous.auth_failures
            session.peer, session.proxy_data = previous.peer, previous.proxy_data
        elif isinstance(session.peer, tuple):  # a new connection: its address made once, as admitted
            session.peer = (self._admitted.address, *session.peer[1:])
        session.client = self._admitted  # after STARTTLS too: the same client
        # Judged from the transport itself, so that a connection to the implicit-TLS
        # listener counts as encrypted too (aiosmtpd looks only at its own STARTTLS
        # state and withholds AUTH there: aio-libs/aiosmtpd issue 281).
        session.tls = TlsInfo.of(transport)
        self.event_handler.sessions.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        self._lost = True
        if self._counted:
            self._counted = False
            self.event_handler.connections.release(self._admitted)
        self.event_handler.sessions.discard(self)
        super().connection_lost(error)  # cancels the session's task
        task = self._handler_coroutine
        if task is not None:
            task.add_done_callback(self._release_session)

    def _release_session(self, task: asyncio.Task[None]) -> None:
        """Drop the references by which a finished session refers to itself, so
        that reference counting frees it at once. Left to the cyclic garbage
        collector, every session (some 30 objects: this protocol, its streams and
        task, the CancelledError that ended the task and its traceback back into
        this protocol) lived on into the older generations: at 64 connections the
        collector took 5% of the gateway's CPU, in pauses of up to 17 ms."""
        self._handler_coroutine = None  # the task -> its CancelledError -> frames -> self
        self._writer = None  # type: ignore[assignment]  # StreamWriter -> self

    def eof_received(self) -> bool | None:
        if not self._refused:
            super().eof_received()  # cancels the session's task
        # Close our side too. aiosmtpd keeps the half-closed transport open and
        # leaves closing it to the cancelled task, but under uvloop the EOF can come
        # before that task ever ran: the socket then stayed open (a leaked fd per
        # client that connects and leaves at once).
        return False

    def _reset_timeout(self, duration: float | None = None) -> None:
        # Once the connection is lost, no timer: a DATA that ended with its
        # connection re-armed the idle timer on the way out (its finally), and
        # that timer then held the whole session for up to SMTP_IDLE_TIMEOUT and
        # fired into aiosmtpd's assertion on the missing transport. (Not judged
        # by the transport: aiosmtpd arms the first timer before it sets one.)
        if self._lost:
            if self._timeout_handle is not None:
                self._timeout_handle.cancel()
            return
        super()._reset_timeout(duration)

    def _timeout_cb(self) -> None:
        if self.transport is None:  # already gone (connection_lost cancels the timer)
            return
        # RFC 5321 4.5.3.2: say why before closing.
        if not self.transport.is_closing():
            self.transport.write(replies.TIMEOUT.format(hostname=self.hostname).encode("ascii") + b"\r\n")
        super()._timeout_cb()

    def begin_shutdown(self) -> None:
        """The server is stopping: an idle session is told so and closed now; a busy
        one finishes its command first (see the command loop)."""
        if not self.busy and self.transport is not None and not self.transport.is_closing():
            self.transport.write(replies.SHUTTING_DOWN.encode("ascii") + b"\r\n")
            self.transport.close()

    # --- the command loop ------------------------------------------------------------------
    async def _handle_client(self) -> None:
        if self.config.proxy_protocol and not await self._accept_proxy_header():
            return
        await self.push(f"220 {self.hostname} {self.__ident__}")
        unauthenticated_left = self.config.max_unauth_commands
        unrecognized_left = UNRECOGNIZED_COMMANDS_LIMIT
        while self.transport is not None:
            try:
                if self._reader._buffer:
                    # The client pipelined: its next command is already here. Let
                    # the others have a turn first: served in one go, a burst of
                    # 20,000 NOOPs held the event loop for 680 ms while another
                    # client's NOOP waited. One command per turn; a client that
                    # waits for each reply never gets here.
                    await asyncio.sleep(0)
                line = await self._read_command_line()
                if line is None:
                    continue
                if self.event_handler.shutting_down:
                    await self._close_with(replies.SHUTTING_DOWN)
                    return
                session = self.gateway_session()
                if not session.authenticated and self.config.max_unauth_commands:
                    unauthenticated_left -= 1
                    if unauthenticated_left < 0:
                        log.warning("Too many commands before AUTH from %s (session %s)", session.remote_addr, session.session_id)
                        await self._close_with(replies.TOO_MANY_UNAUTHENTICATED_COMMANDS)
                        return
                command, arg = self._parse(line)
                if command is None:
                    await self.push(replies.BAD_SYNTAX)
                    continue
                if len(line) > (self.command_size_limits[command] if session.extended_smtp else self.command_size_limit):
                    await self.push(replies.LINE_TOO_LONG)
                    continue
                function = self._smtp_methods.get(command)
                if function is None:
                    unrecognized_left -= 1
                    if unrecognized_left < 1:
                        await self._close_with(replies.TOO_MANY_UNRECOGNIZED)
                        return
                    shown = command if _COMMAND_WORD.match(command) else None
                    await self.push(replies.unrecognized(shown))
                    continue
                self._reset_timeout()
                self.busy = True
                try:
                    await function(self, arg)
                finally:
                    self.busy = False
                if self.event_handler.shutting_down and self.transport is not None:
                    await self._close_with(replies.SHUTTING_DOWN)
                    return
            except (asyncio.CancelledError, _ClientGone, ConnectionError) as gone:
                self._writer.close()
                if isinstance(gone, asyncio.CancelledError):
                    raise
                return
            except TLSSetupException as error:
                log.info("TLS handshake after STARTTLS failed (session %s): %s", self.gateway_session().session_id, error.__cause__ or error)
                if self.transport is not None:
                    self.transport.close()
                self.connection_lost(error)
                return
            except Exception as error:
                await self.push(await self.handle_exception(error))

    async def _accept_proxy_header(self) -> bool:
        """Read the PROXY header (v1 or v2) a load balancer sends first; from then
        on the session is the real client's: its address in records, logs, limits."""
        self._reset_timeout(PROXY_HEADER_TIMEOUT)
        try:
            header = await get_proxy(self._reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            header = None
        address = client_address(header.src_addr) if header is not None and header.valid else None
        if header is None or address is None:
            problem = "client left" if header is None else header.error or "no client address (UNIX socket or LOCAL)"
            log.warning("Connection closed: no valid PROXY header (%s)", problem)
            if self.transport is not None:
                self.transport.close()
            return False
        session = self.gateway_session()
        session.peer, session.proxy_data = (address, header.src_port), header
        session.client = client = self._classify(address)
        registry = self.event_handler.connections
        registry.release(self._admitted)  # it was counted as the balancer's
        self._counted = registry.admit(client)
        if not self._counted:
            await self._close_with(replies.TOO_MANY_CONNECTIONS)
            return False
        self._admitted = client
        self._reset_timeout()
        return True

    async def _read_command_line(self) -> bytes | None:
        """One line without its CRLF, or None if it was too long (already answered)."""
        try:
            line = await self._reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as overrun:
            await self._discard_line(overrun.consumed)
            await self.push(replies.LINE_TOO_LONG)
            return None
        except asyncio.IncompleteReadError as eof:
            raise _ClientGone from eof
        return line.rstrip(b"\r\n")

    def _parse(self, line: bytes) -> tuple[str | None, str | None]:
        command_bytes, _, arg_bytes = line.partition(b" ")
        try:
            command = command_bytes.upper().decode("ascii")
        except UnicodeDecodeError:
            return None, None
        if not command:
            return None, None
        # Arguments may be UTF-8 (SMTPUTF8); surrogateescape keeps any bytes intact.
        arg = arg_bytes.strip().decode("utf-8", errors="surrogateescape") if arg_bytes.strip() else None
        return command, arg

    async def _discard_line(self, consumed: int) -> None:
        await self._reader.read(consumed)
        while True:
            try:
                await self._reader.readuntil(b"\n")
                return
            except asyncio.LimitOverrunError as more:
                await self._reader.read(more.consumed)

    async def _close_with(self, reply: str) -> None:
        await self.push(reply)
        if self.transport is not None:
            self.transport.close()

    # --- replies -----------------------------------------------------------------------------
    async def push(self, status: str | bytes) -> None:
        if isinstance(status, str):
            status = replies.with_enhanced_code(status)
        await super().push(status)

    async def _push_lines(self, lines: list[str]) -> None:
        """A reply of one or more lines in one write, as is: for HELO and EHLO, whose
        lines carry no enhanced code (RFC 2034 section 3)."""
        text = "".join(f"250-{line}\r\n" for line in lines[:-1]) + f"250 {lines[-1]}\r\n"
        self._writer.write(text.encode("ascii"))
        await self._writer.drain()

    @syntax("VRFY <address>")
    async def smtp_VRFY(self, arg: str | None) -> None:
        """aiosmtpd's VRFY (252 for an address: this gateway verifies nothing),
        except that an argument that is no address is not echoed back."""
        if arg:
            address, _ = self._getaddr(arg)
            if address is None:
                await self.push(replies.VRFY_NOT_AN_ADDRESS)
                return
        await super().smtp_VRFY(arg)

    # --- EHLO, STARTTLS, DATA -------------------------------------------------------------------
    def encrypted(self) -> bool:
        return self.gateway_session().tls is not None

    def auth_offered(self) -> bool:
        return not self._auth_require_tls or self.encrypted()

    async def _greeted(self, command: str, hostname: str, extended: bool) -> bool:
        """What HELO and EHLO share: a hostname is required; it resets the
        transaction and records how the client greeted. False if refused."""
        if not hostname:
            await self.push(replies.GREETING_SYNTAX.format(command=command))
            return False
        self._set_rset_state()
        session = self.gateway_session()
        session.extended_smtp = extended
        session.host_name = hostname
        return True

    @syntax("HELO hostname")
    async def smtp_HELO(self, hostname: str) -> None:
        if await self._greeted("HELO", hostname, extended=False):
            await self._push_lines([self.hostname])

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str) -> None:
        if not await self._greeted("EHLO", hostname, extended=True):
            return
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

    @syntax("DATA")
    async def smtp_DATA(self, arg: str | None) -> None:
        # The whole DATA phase gets one deadline, so a client dripping a byte at a
        # time cannot hold the session beyond it.
        self._reset_timeout(self.config.data_timeout)
        try:
            await self._receive_message(arg)
        finally:
            self._reset_timeout()

    async def _receive_message(self, arg: str | None) -> None:
        """aiosmtpd's DATA, with the body read into one buffer (``smtpgateway.body``)."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push(replies.NEED_RCPT)
            return
        if arg:
            await self.push(replies.DATA_SYNTAX)
            return
        await self.push(replies.START_MAIL_INPUT)
        body = bytearray()
        budget = self.event_handler.body_budget
        identity = self.gateway_session().identity
        assert identity is not None  # check_auth_needed ran first
        owner = identity.inbox_pk  # whose share of the body budget this body takes
        try:
            try:
                problem = await read_body(self._reader, body, self.data_size_limit, budget, owner)
            except asyncio.IncompleteReadError as eof:
                raise _ClientGone from eof
            if problem is not None:
                if problem is BodyProblem.NO_ROOM:
                    log.warning(
                        "Message body refused for now (session %s): bodies in memory %d of %d bytes; this inbox's %d of %d",
                        self.gateway_session().session_id, budget.used, budget.limit, budget.held_by(owner), budget.share,
                    )
                self._set_post_data_state()
                await self.push(_BODY_PROBLEM_REPLIES[problem])
                return
            # The buffer itself, not a bytes copy: handle_DATA only reads it.
            self.envelope.content = self.envelope.original_content = body  # type: ignore[assignment]
            status = await self._call_handler_hook("DATA")
            self._set_post_data_state()
        finally:
            budget.give_back(len(body), owner)
            del body
        await self.push(status)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """The address of MAIL, RCPT and VRFY by RFC 5321's grammar
        (``smtpgateway.addresses``) instead of aiosmtpd's RFC 5322 parser, which
        accepted what no path can be and took milliseconds on crafted input; and
        without the typing class aiosmtpd creates on every call (5% of the CPU of
        a message). ``(None, None)`` is malformed: 553 5.1.3."""
        if not arg:
            return "", ""
        parsed = parse_path(arg)
        if parsed is None:
            return None, None
        addr, rest = parsed
        localpart = addr.rpartition("@")[0]
        if self.local_part_limit and len(localpart) > self.local_part_limit:
            return None, None
        return addr, rest

    async def check_auth_needed(self, caller_method: str) -> bool:
        if caller_method in ("MAIL", "RCPT", "DATA") and not self.gateway_session().authenticated:
            await self.push(replies.AUTH_REQUIRED)
            return True
        return False

    # --- AUTH ---------------------------------------------------------------------------------------
    def peer(self) -> Peer:
        session = self.gateway_session()
        port = session.peer[1] if isinstance(session.peer, tuple) else None
        return Peer(session.session_id, session.remote_addr, port, session.client.network, session.tls)

    def _classify(self, address: str | None) -> Client:
        return classify_client(address, self.config.throttle_exempt, self.config.ipv6_client_prefix)

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
        started = self.loop.time()
        mechanism = args[0].upper()
        if mechanism not in AUTH_MECHANISMS:
            await self._reject(mechanism[:32], _Rejected(Reason.UNSUPPORTED_MECHANISM, replies.AUTH_UNSUPPORTED), started)
            return
        if not self.auth_offered():
            await self._reject(mechanism, _Rejected(Reason.ENCRYPTION_REQUIRED, replies.AUTH_ENCRYPTION_REQUIRED), started)
            return
        initial = args[1] if len(args) == 2 else None
        try:
            if mechanism == "PLAIN":
                credentials = await self._read_plain(initial)
            else:
                credentials = await self._read_login(initial)
        except (asyncio.CancelledError, ConnectionError, _ClientGone):
            # The client left mid-exchange: still an attempt that reached us.
            self._record_unchecked(mechanism, b"", Reason.ABORTED)
            raise
        if isinstance(credentials, _Rejected):
            await self._reject(mechanism, credentials, started)
            return
        username, password = credentials
        rate_limit = None if session.client.exempt else self.config.auth_rate_limit
        outcome: Outcome = await self.event_handler.db.check(AuthJob(self.peer(), mechanism, username, password, rate_limit))
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
        await self.push(reply)

    async def _reject(self, mechanism: str, rejected: _Rejected, started: float) -> None:
        self._record_unchecked(mechanism, rejected.username, rejected.reason)
        await self._answer_failure(rejected.reason, rejected.reply, started)

    def _record_unchecked(self, mechanism: str, username: bytes, reason: Reason) -> None:
        """Record an attempt that never reached the checks (committed shortly)."""
        record = AttemptRecord.build(peer=self.peer(), when=timezone.now(), mechanism=mechanism, username=username, reason=reason)
        self.event_handler.db.submit(RecordsJob((record,)))

    async def _answer_failure(self, reason: Reason, reply: str, started: float) -> None:
        """Log, then answer a failed AUTH no sooner than ``auth_failure_delay`` after
        it began (so every failure takes the same time, whatever failed), and close
        the session on its ``auth_max_failures``-th failure."""
        session = self.gateway_session()
        if reason is not Reason.TEMPORARY_FAILURE:
            session.auth_failures += 1
        closing = 0 < self.config.auth_max_failures <= session.auth_failures
        code = " ".join(reply.split(" ", 2)[:2])  # "535 5.7.8", "538 5.7.11"
        log.warning("Auth failed: %s, returning %s (session %s, %s)", reason, code, session.session_id, session.remote_addr)
        if not session.client.exempt and self.config.auth_failure_delay > 0:
            await asyncio.sleep(max(0.0, started + self.config.auth_failure_delay - self.loop.time()))
        await self.push(reply)
        if closing:
            # The error that was made comes first, as Postfix answers it: a
            # client that reads only the 421 would take a wrong key for a
            # passing fault and retry it later.
            await self._close_with(replies.TOO_MANY_AUTH_FAILURES)

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
        authzid, authcid, password = parts
        # RFC 4616 section 2: the session acts as the authzid when one is given,
        # and an inbox may act only as itself. Refused before any check, so it
        # reveals nothing about the credentials (Cyrus and Dovecot refuse it too).
        if authzid and authzid != authcid:
            return _Rejected(Reason.AUTHZID_MISMATCH, replies.AUTH_INVALID, username=authcid)
        return authcid, password

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
        except asyncio.IncompleteReadError as eof:
            raise _ClientGone from eof
        answer = line.strip()
        if answer == b"*":
            return _Rejected(Reason.ABORTED, replies.AUTH_ABORTED)
        return _decode_base64(answer)


def _decode_base64(data: bytes) -> bytes | _Rejected:
    if data == b"=":  # RFC 4954: an empty initial response
        return b""
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return _Rejected(Reason.MALFORMED, replies.AUTH_BAD_BASE64)
