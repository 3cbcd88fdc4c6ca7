"""The gateway's server side: mail-transaction hooks, listeners, shutdown.

* :class:`GatewayHandler` holds aiosmtpd's hooks for MAIL, RCPT and DATA, and what
  every session consults: the configuration, the database worker, the connection
  registry and whether the server is shutting down. No per-session state.
* :class:`GatewayServer` listens (submission port with STARTTLS, optional
  implicit-TLS port), retries unwritten AuthAttempt records, reloads certificates,
  and stops gracefully.

This module never touches the ORM: every database step is a job from
``smtpgateway.commits`` run by the ``DatabaseWorker``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import ssl
from typing import Any, Callable

from django.db import DatabaseError

from smtpgateway import replies
from smtpgateway.body import BodyBudget, inbox_share
from smtpgateway.config import GatewayConfig
from smtpgateway.limits import Client, ConnectionRegistry
from smtpgateway.protocol import AUTH_MECHANISMS, GatewayEnvelope, GatewaySession, GatewaySMTP
from smtpgateway.recorder import recorder
from smtpgateway.commits import FlushJob, StoreJob
from smtpgateway.submission import Submission
from smtpgateway.tls import CertificateStore
from smtpgateway.worker import DatabaseWorker

__all__ = ["AUTH_MECHANISMS", "CannotListen", "GatewayConfig", "GatewayHandler", "GatewayServer", "serve_until_signalled"]

log = logging.getLogger(__name__)

CLOSE_LINGER = 1.0  # seconds closing sessions get to finish before they are aborted


class CannotListen(Exception):
    """A listener could not be opened: ``listener`` says which ("127.0.0.1:4650
    (implicit TLS)"), ``error`` why."""

    def __init__(self, listener: str, error: OSError) -> None:
        super().__init__(f"{listener}: {error.strerror or error}")
        self.listener = listener
        self.error = error


class GatewayHandler:
    def __init__(self, config: GatewayConfig, db: DatabaseWorker) -> None:
        self.config = config
        self.db = db
        self.connections = ConnectionRegistry(config.max_connections, config.max_connections_per_ip)
        self.body_budget = BodyBudget(config.max_buffered_data, inbox_share(config.max_buffered_data, config.max_message_size))
        self.sessions: set[GatewaySMTP] = set()
        self.shutting_down = False
        # aiosmtpd's hook table ("MAIL" -> handle_MAIL), built once, not per connection.
        self.hooks = {name[7:]: getattr(self, name) for name in dir(self) if name.startswith("handle_") and name != "handle_exception"}

    def admission_refusal(self, client: Client) -> str | None:
        """The reply that refuses a new connection, or None to admit it."""
        if self.shutting_down:
            return replies.SHUTTING_DOWN
        if not self.connections.admit(client):
            return replies.TOO_MANY_CONNECTIONS
        return None

    async def handle_MAIL(
        self, server: GatewaySMTP, session: GatewaySession, envelope: GatewayEnvelope, address: str, mail_options: list[str]
    ) -> str:
        identity = session.identity
        assert identity is not None  # check_auth_needed ran first
        if not (address.isascii() or envelope.smtp_utf8):
            return replies.UNDECLARED_SMTPUTF8
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
        self, server: GatewaySMTP, session: GatewaySession, envelope: GatewayEnvelope, address: str, rcpt_options: list[str]
    ) -> str:
        if not (address.isascii() or envelope.smtp_utf8):
            return replies.UNDECLARED_SMTPUTF8
        # The parser takes a bare local part ("<postmaster>", "someone"), so that
        # this says what is wrong: a message for it could never be delivered.
        local_part, at, domain = address.rpartition("@")
        if not (local_part and at and domain):
            return replies.RECIPIENT_WITHOUT_DOMAIN
        # A repeated recipient is accepted and kept once, as Postfix's cleanup
        # does, so that nothing downstream delivers the message to it twice. Only
        # the domain is compared without regard to case (RFC 5321 2.4: a local
        # part may be case-sensitive).
        mailbox = f"{local_part}@{domain.lower()}"
        if mailbox in envelope.mailboxes:
            return replies.RECIPIENT_OK
        if len(envelope.rcpt_tos) >= self.config.max_recipients:
            return replies.TOO_MANY_RECIPIENTS
        envelope.mailboxes.add(mailbox)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return replies.RECIPIENT_OK

    async def handle_DATA(self, server: GatewaySMTP, session: GatewaySession, envelope: GatewayEnvelope) -> str:
        identity = session.identity
        assert identity is not None and envelope.mail_from is not None
        submission = Submission(
            inbox_pk=identity.inbox_pk,
            helo_name=session.host_name or "unknown",
            remote_addr=session.remote_addr,
            hostname=self.config.hostname,
            protocol="ESMTPSA" if session.tls else "ESMTPA",
            tls_note=session.tls.received_note() if session.tls else "",
            mail_from=envelope.mail_from,
            rcpt_tos=tuple(envelope.rcpt_tos),
            content=envelope.original_content or b"",
        )
        try:
            queue_id = await self.db.commit(StoreJob(submission))
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
        # The traceback goes to our log; the client gets a generic reply.
        log.error("Unexpected error in an SMTP session", exc_info=error)
        return replies.INTERNAL_ERROR


class GatewayServer:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.certificates: CertificateStore | None = None
        if config.tls_cert_file and config.tls_key_file:
            self.certificates = CertificateStore(config.tls_cert_file, config.tls_key_file, config.tls_min_version)
        elif config.tls_port is not None:
            raise ValueError("An implicit-TLS port needs SMTP_TLS_CERT_FILE and SMTP_TLS_KEY_FILE.")
        if config.proxy_protocol and config.tls_port is not None:
            # The PROXY header comes before the TLS handshake, which the implicit-TLS
            # listener does first; terminate TLS at the balancer, or use STARTTLS.
            raise ValueError("The PROXY protocol works on the STARTTLS port only; turn off the implicit-TLS port.")
        self.db = DatabaseWorker(config.db_workers, config.auth_cache_seconds)
        self.handler = GatewayHandler(config, self.db)
        self._listeners: list[asyncio.base_events.Server] = []
        self._flush_task: asyncio.Task[None] | None = None
        self._force_stop = asyncio.Event()
        self._stopped = False

    def _new_protocol(self, starttls_context: ssl.SSLContext | None) -> GatewaySMTP:
        return GatewaySMTP(self.handler, asyncio.get_running_loop(), starttls_context)

    async def start(self) -> None:
        """Open the listeners, or none: if one cannot listen, those already open
        are closed, the database threads stopped, and :class:`CannotListen` names it."""
        loop = asyncio.get_running_loop()
        context = self.certificates.context if self.certificates else None
        common = {"host": self.config.host, "backlog": self.config.backlog, "reuse_address": True, "reuse_port": self.config.reuse_port}
        wanted: list[tuple[int, str, Callable[[], GatewaySMTP], dict[str, Any]]] = [
            (self.config.port, "STARTTLS" if context else "plaintext", lambda: self._new_protocol(context), {}),
        ]
        if self.config.tls_port is not None:  # 0: any free port (tests)
            wanted.append((self.config.tls_port, "implicit TLS", lambda: self._new_protocol(None), {"ssl": context, "ssl_handshake_timeout": 30}))
        for port, kind, factory, options in wanted:
            try:
                self._listeners.append(await loop.create_server(factory, port=port, **common, **options))
            except OSError as error:
                for listener in self._listeners:
                    listener.close()
                    await listener.wait_closed()
                self._listeners.clear()
                await loop.run_in_executor(None, self.db.shutdown)
                raise CannotListen(f"{self.config.host}:{port} ({kind})", error) from error
        # Remembered here: a closed listener no longer has its sockets.
        ports = [listener.sockets[0].getsockname()[1] for listener in self._listeners]
        self.port: int = ports[0]
        self.tls_port: int | None = ports[1] if len(ports) > 1 else None
        self._flush_task = loop.create_task(self._flush_kept_records())

    @property
    def sessions(self) -> set[GatewaySMTP]:
        return self.handler.sessions

    def reload_certificates(self) -> None:
        if self.certificates is None:
            log.warning("Asked to reload TLS certificates, but none are configured")
            return
        self.certificates.reload()

    async def _flush_kept_records(self) -> None:
        while True:
            await asyncio.sleep(self.config.flush_interval)
            if len(recorder):
                await self.db.commit(FlushJob())

    def force_stop(self) -> None:
        """A second SIGINT/SIGTERM: stop waiting for busy sessions."""
        self._force_stop.set()

    async def stop(self) -> None:
        """Stop accepting; tell idle sessions 421 4.3.2 and close them; let busy ones
        (a DATA in progress, say) finish within ``shutdown_grace`` seconds; then close
        the rest, write every pending record and release the database."""
        if self._stopped:
            return
        self._stopped = True
        self.handler.shutting_down = True
        for listener in self._listeners:
            listener.close()
        for session in list(self.sessions):
            session.begin_shutdown()
        busy = sum(session.busy for session in self.sessions)
        if busy:
            log.info("Waiting up to %ss for %d busy session(s)", self.config.shutdown_grace, busy)
            try:
                await asyncio.wait_for(self._until(self._none_busy), self.config.shutdown_grace)
            except asyncio.TimeoutError:
                log.warning("Shutdown grace over; closing %d session(s)", len(self.sessions))
        # Sessions told 421 are closing. Give their closes a moment, but do not wait
        # for a TLS peer that never answers close_notify (asyncio would for 30 s).
        try:
            await asyncio.wait_for(self._until(lambda: not self.sessions), CLOSE_LINGER)
        except asyncio.TimeoutError:
            pass
        for session in list(self.sessions):
            if session.transport is not None:
                session.transport.abort()
        if self._flush_task is not None:
            self._flush_task.cancel()
        await asyncio.sleep(0)  # let connection_lost run for the closed sessions
        await self.db.commit(FlushJob())
        await asyncio.get_running_loop().run_in_executor(None, self.db.shutdown)
        if len(recorder):
            log.error("%d AuthAttempt record(s) could not be written; they are in this log as JSON lines", len(recorder))

    def _none_busy(self) -> bool:
        return not any(session.busy for session in self.sessions)

    async def _until(self, condition: Callable[[], bool]) -> None:
        """Return once ``condition`` holds, or a second signal asks to stop now."""
        while not condition() and not self._force_stop.is_set():
            await asyncio.sleep(0.05)


async def serve_until_signalled(config: GatewayConfig, on_ready: Callable[[GatewayServer], None]) -> None:
    """Run the gateway until SIGINT or SIGTERM, then stop gracefully (a second
    signal cuts the grace period short). SIGHUP re-reads the TLS certificate
    without dropping a connection."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    server = GatewayServer(config)

    def on_stop_signal() -> None:
        if stop.is_set():
            server.force_stop()
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_stop_signal)
    loop.add_signal_handler(signal.SIGHUP, server.reload_certificates)
    await server.start()
    # What exists now (Django, the models, the listeners, compiled SQL) lives as
    # long as the process: take it out of the garbage collector's view. Else every
    # full collection walks its ~60,000 objects and stalls the loop 45-60 ms, a
    # few times a minute under load (the AUTH p99); frozen, 5-10 ms.
    gc.freeze()
    on_ready(server)
    await stop.wait()
    log.info("Stopping the gateway")
    await server.stop()
