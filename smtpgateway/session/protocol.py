"""One SMTP session: aiosmtpd's ``SMTP`` protocol with the gateway's rules.

We keep aiosmtpd's command implementations (MAIL, RCPT, RSET, ...) and its TLS
upgrade, and own what it leaves open:

* the command loop, so that every line counts against the limits, nothing a client
  sends is echoed into logs, and a shutting-down server answers ``421 4.3.2``;
* EHLO (``PIPELINING``, ``ENHANCEDSTATUSCODES``) and an enhanced code on every reply;
* AUTH, through its exchange (``smtpgateway.session.auth_exchange``);
* DATA, so that the body is read into one buffer (``smtpgateway.session.body``)
  under one deadline;
* connection admission (limits overall and per client address) and timeouts that
  say ``421`` before they close.

This module never touches the ORM: database work goes to the server's database
threads as jobs (``smtpgateway.storage.jobs``), through the :class:`SessionHost`
it is given (``smtpgateway.session.host``).

aiosmtpd coupling: the methods marked ``@override`` replace aiosmtpd 1.4.6's,
and ``__init__`` sets what its ``SMTP.__init__`` sets (``AIOSMTPD_VERSION``);
``tests/unit/test_aiosmtpd_coupling.py`` fails when either drifts.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import ssl
import weakref
from collections.abc import Awaitable, Callable
from typing import cast

from aiosmtpd.proxy_protocol import get_proxy
from aiosmtpd.smtp import SMTP, TLSSetupException, syntax
from typing_extensions import override

from smtpgateway.auth.limits import Client, classify_client
from smtpgateway.auth.rules import Outcome, Peer
from smtpgateway.metrics import Tally
from smtpgateway.session import replies
from smtpgateway.session.addresses import parse_path
from smtpgateway.session.auth_exchange import AUTH_MECHANISMS, AuthExchange
from smtpgateway.session.body import BodyProblem, read_body
from smtpgateway.session.host import SessionHost
from smtpgateway.session.state import (
    UNKNOWN_CLIENT,
    ClientGone,
    GatewayEnvelope,
    GatewaySession,
    Overlong,
    client_address,
)
from smtpgateway.storage.jobs import AttemptRecord, AuthJob, RecordsJob, ReleaseJob
from smtpgateway.tls import TlsInfo

log = logging.getLogger("smtpgateway.server")

# The aiosmtpd release GatewaySMTP is written against: what its SMTP.__init__
# sets, which methods it has and what they do (tests/unit/test_aiosmtpd_coupling.py).
AIOSMTPD_VERSION = "1.4.6"
# What that release's SMTP.__init__ sets besides asyncio.StreamReaderProtocol's
# own attributes; GatewaySMTP.__init__ sets each of them, without aiosmtpd's
# per-connection reflection over the server and handler.
AIOSMTPD_INIT_ATTRIBUTES = frozenset(
    {
        "__ident__", "_auth_callback", "_auth_methods", "_auth_require_tls", "_auth_required", "_authenticator",
        "_decode_data", "_ehlo_hook_ver", "_enforce_call_limit", "_handle_hooks", "_handler_coroutine",
        "_original_transport", "_proxy_timeout", "_smtp_methods", "_timeout_duration", "_timeout_handle",
        "_tls_handshake_okay", "_tls_protocol", "data_size_limit", "enable_SMTPUTF8", "envelope", "event_handler",
        "hostname", "loop", "require_starttls", "session", "tls_context", "transport",
    }
)  # fmt: skip
# The longest line read: an AUTH command or response, CRLF included (RFC 4954
# section 4, so that a long initial response fits on the command line).
AUTH_LINE_LIMIT = 12_288
# RFC 5321 4.5.3.1.4 allows 512 octets per command line; extensions may add to it
# (SIZE=, BODY=, SMTPUTF8 on MAIL; RFC 4954 allows long AUTH lines).
COMMAND_SIZE_LIMITS: collections.defaultdict[str, int] = collections.defaultdict(
    lambda: 512, {"MAIL": 512 + 26 + 14 + 10, "AUTH": AUTH_LINE_LIMIT - 2}
)
UNRECOGNIZED_COMMANDS_LIMIT = 5
PROXY_HEADER_TIMEOUT = 10.0
_BODY_PROBLEM_REPLIES = {
    BodyProblem.LINE_TOO_LONG: replies.LINE_TOO_LONG,
    BodyProblem.TOO_LARGE: replies.MESSAGE_TOO_LARGE,
    BodyProblem.NO_ROOM: replies.NO_ROOM_FOR_MESSAGE,
}
_COMMAND_WORD = re.compile(r"[A-Z][A-Z0-9-]{0,15}\Z")
_BODY_PROBLEM_METRICS = {
    BodyProblem.LINE_TOO_LONG: "line_too_long",
    BodyProblem.TOO_LARGE: "message_too_large",
    BodyProblem.NO_ROOM: "no_room",
}


class HandshakeWatch:
    """Whether an implicit-TLS connection got past its handshake. asyncio does
    that handshake before the protocol hears of the connection, and tells it
    nothing when it fails: the protocol is dropped without ``connection_made``.
    So a finalizer on the protocol counts the failures (``tls_failures``)."""

    __slots__ = ("made",)

    def __init__(self) -> None:
        self.made = False

    @staticmethod
    def ended(watch: HandshakeWatch, failures: Tally) -> None:
        if not watch.made:
            failures.pending += 1


class GatewaySMTP(SMTP):
    """``starttls_context`` is what STARTTLS upgrades with (None on the implicit-TLS
    listener, where the connection is encrypted from the start); ``listener``
    names the listener for the metrics ("submission" or "implicit_tls")."""

    # Command name -> its function, found once per class (aiosmtpd searches with
    # dir() and inspect.getmembers on every connection, its largest cost) and
    # shared by every session, instead of binding each command's method per
    # connection. Called as ``function(self, arg)``; HELP only reads the
    # functions' syntax attributes.
    _command_functions: dict[str, Callable[..., Awaitable[None]]] | None = None

    def __init__(
        self,
        handler: SessionHost,
        loop: asyncio.AbstractEventLoop,
        starttls_context: ssl.SSLContext | None = None,
        listener: str = "submission",
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
        self.event_handler: SessionHost = handler
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
        self.metrics = handler.metrics
        self.listener = listener
        # The tallies of the reply classes, by a reply's first character (str or bytes).
        self._reply_tallies = self.metrics.reply_tallies
        self._handshake: HandshakeWatch | None = None
        if listener == "implicit_tls" and self.metrics.enabled:
            self._handshake = HandshakeWatch()
            weakref.finalize(self, HandshakeWatch.ended, self._handshake, self.metrics.tls_failures[listener])

    @classmethod
    def _commands(cls) -> dict[str, Callable[..., Awaitable[None]]]:
        if cls._command_functions is None:
            cls._command_functions = {name[5:]: getattr(cls, name) for name in dir(cls) if name.startswith("smtp_")}
        return cls._command_functions

    @override
    def _create_session(self) -> GatewaySession:
        return GatewaySession(self.loop)

    @override
    def _create_envelope(self) -> GatewayEnvelope:
        # Every end of a mail transaction comes here (RSET, EHLO, after DATA):
        # holds its recipients took for a message not stored are given back.
        self._release_holds()
        return GatewayEnvelope()

    def _release_holds(self) -> None:
        envelope = self.envelope
        if isinstance(envelope, GatewayEnvelope) and envelope.hold_ids:
            self.event_handler.db.submit(ReleaseJob(tuple(envelope.hold_ids)))
            if isinstance(self.session, GatewaySession):
                self.session.released_holds.extend(envelope.hold_ids)
            envelope.hold_ids.clear()

    def gateway_session(self) -> GatewaySession:
        """The session, typed as ours (None only before connection_made)."""
        assert isinstance(self.session, GatewaySession)
        return self.session

    # --- connection lifecycle --------------------------------------------------------
    @override
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        previous = self.session
        if previous is None:  # a new connection (not the STARTTLS upgrade)
            self.metrics.connections[self.listener].pending += 1
            if self._handshake is not None:
                self._handshake.made = True
            peername = transport.get_extra_info("peername")
            client = self._classify(client_address(peername[0]) if isinstance(peername, tuple) else None)
            refusal = self.event_handler.admission_refusal(client)
            if refusal is not None:
                self._refused = True
                log.warning(
                    "Connection from %s refused: %s", client.address, refusal, extra={"client_address": client.address}
                )
                self._count_reply(refusal)
                cast(asyncio.WriteTransport, transport).write(refusal.encode("ascii") + b"\r\n")
                transport.close()
                return
            self._admitted, self._counted = client, True
        super().connection_made(transport)  # after STARTTLS too, with a new session
        if previous is None:  # before the session's task (just created) first runs
            self._writer = asyncio.StreamWriter(cast(asyncio.WriteTransport, transport), self, self._reader, self.loop)
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
        if session.tls is not None:
            self.metrics.tls_handshake("submission" if previous is not None else self.listener, session.tls.version)
        self.event_handler.sessions.add(self)

    @override
    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        self._lost = True
        self._release_holds()
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
        this protocol) lived on into the older generations, and under load the
        collector's pauses showed in the gateway's CPU and latency."""
        self._handler_coroutine = None  # the task -> its CancelledError -> frames -> self
        self._writer = None  # type: ignore[assignment]  # StreamWriter -> self

    @override
    def eof_received(self) -> bool | None:
        if not self._refused:
            super().eof_received()  # cancels the session's task
        # Close our side too. aiosmtpd keeps the half-closed transport open and
        # leaves closing it to the cancelled task, but under uvloop the EOF can come
        # before that task ever ran: the socket then stayed open (a leaked fd per
        # client that connects and leaves at once).
        return False

    @override
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

    def _socket(self) -> asyncio.Transport | None:
        """The transport, as what it is: a socket's (aiosmtpd types it as a base transport)."""
        return cast(asyncio.Transport | None, self.transport)

    @override
    def _timeout_cb(self) -> None:
        transport = self._socket()
        if transport is None:  # already gone (connection_lost cancels the timer)
            return
        # RFC 5321 4.5.3.2: say why before closing.
        if not transport.is_closing():
            self._count_reply(replies.TIMEOUT)
            transport.write(replies.TIMEOUT.format(hostname=self.hostname).encode("ascii") + b"\r\n")
        super()._timeout_cb()

    def abort(self) -> None:
        """Close the connection now, without waiting for the client."""
        transport = self._socket()
        if transport is not None:
            transport.abort()

    def begin_shutdown(self) -> None:
        """The server is stopping: an idle session is told so and closed now; a busy
        one finishes its command first (see the command loop)."""
        transport = self._socket()
        if not self.busy and transport is not None and not transport.is_closing():
            self._count_reply(replies.SHUTTING_DOWN)
            transport.write(replies.SHUTTING_DOWN.encode("ascii") + b"\r\n")
            transport.close()

    # --- the command loop ------------------------------------------------------------------
    @override
    async def _handle_client(self) -> None:
        if self.config.proxy_protocol and not await self._accept_proxy_header():
            return
        await self.push(f"220 {self.hostname} {self.__ident__}")
        unauthenticated_left = self.config.max_unauth_commands
        unrecognized_left = UNRECOGNIZED_COMMANDS_LIMIT
        while self.transport is not None:
            try:
                if self._reader._buffer:  # type: ignore[attr-defined]  # asyncio's, not public
                    # The client pipelined: its next command is already here. Let
                    # the others have a turn first: served in one go, a long burst
                    # held the event loop for all of its length while other
                    # clients waited. One command per turn; a client that waits
                    # for each reply never gets here.
                    await asyncio.sleep(0)
                line = await self.read_line()
                if isinstance(line, Overlong):
                    if line.start[:5].upper() in (b"AUTH ", b"AUTH\r", b"AUTH\n"):
                        await AuthExchange(self).refuse_overlong(line.start)
                    else:
                        await self.push(replies.LINE_TOO_LONG)
                    continue
                if self.event_handler.shutting_down:
                    await self.close_with(replies.SHUTTING_DOWN)
                    return
                session = self.gateway_session()
                if not session.authenticated and self.config.max_unauth_commands:
                    unauthenticated_left -= 1
                    if unauthenticated_left < 0:
                        log.warning(
                            "Too many commands before AUTH from %s (session %s)",
                            session.remote_addr,
                            session.session_id,
                            extra=session.log_fields(),
                        )
                        await self.close_with(replies.TOO_MANY_UNAUTHENTICATED_COMMANDS)
                        return
                command, arg = self._parse(line)
                if command is None:
                    await self.push(replies.BAD_SYNTAX)
                    continue
                if len(line) > (
                    self.command_size_limits[command] if session.extended_smtp else self.command_size_limit
                ):
                    await self.push(replies.LINE_TOO_LONG)
                    continue
                function = self._smtp_methods.get(command)
                if function is None:
                    unrecognized_left -= 1
                    if unrecognized_left < 1:
                        await self.close_with(replies.TOO_MANY_UNRECOGNIZED)
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
                    await self.close_with(replies.SHUTTING_DOWN)
                    return
            except (asyncio.CancelledError, ClientGone, ConnectionError) as gone:
                self._writer.close()
                if isinstance(gone, asyncio.CancelledError):
                    raise
                return
            except TLSSetupException as error:
                self.metrics.tls_failures["submission"].pending += 1
                log.info(
                    "TLS handshake after STARTTLS failed (session %s): %s",
                    self.gateway_session().session_id,
                    error.__cause__ or error,
                    extra=self.gateway_session().log_fields(),
                )
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
            # The session's address is still the balancer's.
            log.warning(
                "Connection closed: no valid PROXY header (%s)", problem, extra=self.gateway_session().log_fields()
            )
            if self.transport is not None:
                self.transport.close()
            return False
        session = self.gateway_session()
        session.peer = (address, header.src_port)  # type: ignore[assignment]  # aiosmtpd types it str, sets a tuple
        session.proxy_data = header
        session.client = client = self._classify(address)
        registry = self.event_handler.connections
        registry.release(self._admitted)  # it was counted as the balancer's
        self._counted = registry.admit(client)
        if not self._counted:
            self.metrics.connections_refused[registry.refused_by()].pending += 1
            await self.close_with(replies.TOO_MANY_CONNECTIONS)
            return False
        self._admitted = client
        self._reset_timeout()
        return True

    async def read_line(self) -> bytes | Overlong:
        """One line without its CRLF, up to ``AUTH_LINE_LIMIT`` octets with it, or
        Overlong if it was longer (then read to its end and dropped). Raises
        ClientGone at the end of input. The reader's own limit stays at a body
        line's (it bounds DATA lines too), so a longer line comes in pieces."""
        try:
            line = await self._reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as overrun:
            return await self._read_long_line(overrun.consumed)
        except asyncio.IncompleteReadError as eof:
            raise ClientGone from eof
        return line.rstrip(b"\r\n")

    async def _read_long_line(self, consumed: int) -> bytes | Overlong:
        try:
            pieces = [await self._reader.readexactly(consumed)]
            size = consumed
            while size <= AUTH_LINE_LIMIT:
                try:
                    piece = await self._reader.readuntil(b"\n")
                except asyncio.LimitOverrunError as more:
                    piece = await self._reader.readexactly(more.consumed)
                    pieces.append(piece)
                    size += len(piece)
                    continue
                if size + len(piece) > AUTH_LINE_LIMIT:
                    return Overlong(pieces[0][:32])
                pieces.append(piece)
                return b"".join(pieces).rstrip(b"\r\n")
            await self._discard_line(0)
            return Overlong(pieces[0][:32])
        except asyncio.IncompleteReadError as eof:
            raise ClientGone from eof

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

    async def close_with(self, reply: str) -> None:
        await self.push(reply)
        if self.transport is not None:
            self.transport.close()

    # --- replies -----------------------------------------------------------------------------
    def _count_reply(self, status: str | bytes) -> None:
        tally = self._reply_tallies.get(status[:1])
        if tally is not None:
            tally.pending += 1

    @override
    async def push(self, status: str | bytes) -> None:
        tally = self._reply_tallies.get(status[:1])  # _count_reply, inlined: every reply passes here
        if tally is not None:
            tally.pending += 1
        if isinstance(status, str):
            await super().push(replies.with_enhanced_code(status))
        else:
            await super().push(status)

    async def _push_lines(self, lines: list[str]) -> None:
        """A reply of one or more lines in one write, as is: for HELO and EHLO, whose
        lines carry no enhanced code (RFC 2034 section 3)."""
        text = "".join(f"250-{line}\r\n" for line in lines[:-1]) + f"250 {lines[-1]}\r\n"
        self._count_reply(text)
        self._writer.write(text.encode("ascii"))
        await self._writer.drain()

    @override
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

    @override
    @syntax("HELO hostname")
    async def smtp_HELO(self, hostname: str) -> None:
        if await self._greeted("HELO", hostname, extended=False):
            await self._push_lines([self.hostname])

    @override
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

    @override
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

    @override
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
        """aiosmtpd's DATA, with the body read into one buffer (``smtpgateway.session.body``)."""
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
                problem = await read_body(self._reader, body, self.config.max_message_size, budget, owner)
            except asyncio.IncompleteReadError as eof:
                raise ClientGone from eof
            if problem is not None:
                self.metrics.messages_refused[_BODY_PROBLEM_METRICS[problem]].pending += 1
                if problem is BodyProblem.NO_ROOM:
                    log.warning(
                        "Message body refused for now (session %s): bodies in memory %d of %d bytes; this inbox's %d of %d",
                        self.gateway_session().session_id,
                        budget.used,
                        budget.limit,
                        budget.held_by(owner),
                        budget.share,
                        extra=self.gateway_session().log_fields(),
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

    @override
    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """The address of MAIL, RCPT and VRFY by RFC 5321's grammar
        (``smtpgateway.session.addresses``) instead of aiosmtpd's RFC 5322 parser, which
        accepted what no path can be and took milliseconds on crafted input; and
        without the typing class aiosmtpd creates on every call. ``(None, None)``
        is malformed: 553 5.1.3."""
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

    @override
    async def check_auth_needed(self, caller_method: str) -> bool:
        if caller_method in ("MAIL", "RCPT", "DATA") and not self.gateway_session().authenticated:
            await self.push(replies.AUTH_REQUIRED)
            return True
        return False

    # --- AUTH (the exchange itself: smtpgateway.session.auth_exchange) -------------------------------
    @override
    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str | None) -> None:
        await AuthExchange(self).run(arg)

    async def check(self, job: AuthJob) -> Outcome:
        return await self.event_handler.db.check(job)

    def record(self, record: AttemptRecord) -> None:
        self.event_handler.db.submit(RecordsJob((record,)))

    def peer(self) -> Peer:
        session = self.gateway_session()
        port = session.peer[1] if isinstance(session.peer, tuple) else None
        return Peer(session.session_id, session.remote_addr, port, session.client.network, session.tls)

    def _classify(self, address: str | None) -> Client:
        return classify_client(address, self.config.throttle_exempt, self.config.ipv6_client_prefix)
