"""The gateway's server: listeners, certificate reload, retries of kept
records, and a graceful stop.

:class:`GatewayServer` listens (the submission port with STARTTLS, an optional
implicit-TLS port), hands each connection a ``GatewaySMTP`` session that shares
one ``GatewayHandler``, nudges the database threads to write AuthAttempt records
kept while the database was away, reloads certificates, and stops gracefully.

No ORM here: every database step is a job (``smtpgateway.storage.jobs``) run by
the database threads (``smtpgateway.storage.threads``).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import ssl
from collections.abc import Callable

from smtpgateway.config import GatewayConfig
from smtpgateway.metrics import OFF, GatewayMetrics
from smtpgateway.session.handler import GatewayHandler
from smtpgateway.session.host import LiveSession
from smtpgateway.session.protocol import GatewaySMTP
from smtpgateway.storage.jobs import FlushJob
from smtpgateway.storage.records import recorder
from smtpgateway.storage.threads import DatabaseThreads
from smtpgateway.tls import CertificateStore

log = logging.getLogger("smtpgateway.server")

CLOSE_LINGER = 1.0  # seconds closing sessions get to finish before they are aborted
# Seconds between heartbeats of the event loop, which also hand the metrics'
# tallies to prometheus-client (smtpgateway.metrics): a scrape sees counts at
# most this old, and a worker killed outright loses at most this much of them.
HEARTBEAT_INTERVAL = 0.25


class CannotListen(Exception):
    """A listener could not be opened: ``listener`` says which ("127.0.0.1:4650
    (implicit TLS)"), ``error`` why."""

    def __init__(self, listener: str, error: OSError) -> None:
        super().__init__(f"{listener}: {error.strerror or error}")
        self.listener = listener
        self.error = error


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
        self.metrics = GatewayMetrics(enabled=True) if config.metrics else OFF
        self.db = DatabaseThreads(
            config.committers, config.auth_cache_seconds, (self.metrics.check_batch, self.metrics.commit_batch)
        )
        self.handler = GatewayHandler(config, self.db, self.metrics)
        self._listeners: list[asyncio.base_events.Server] = []
        self._flush_task: asyncio.Task[None] | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        self.listening = False  # every listener open, and not stopping (for /readyz)
        self._force_stop = asyncio.Event()
        self._stopped = False

    def _new_protocol(self, starttls_context: ssl.SSLContext | None, listener: str = "submission") -> GatewaySMTP:
        return GatewaySMTP(self.handler, asyncio.get_running_loop(), starttls_context, listener)

    async def start(self) -> None:
        """Open the listeners, or none: if one cannot listen, those already open
        are closed, the database threads stopped, and :class:`CannotListen` names it."""
        loop = asyncio.get_running_loop()
        context = self.certificates.context if self.certificates else None
        # (port, kind, protocol factory, TLS from the first byte)
        wanted: list[tuple[int, str, Callable[[], GatewaySMTP], ssl.SSLContext | None]] = [
            (self.config.port, "STARTTLS" if context else "plaintext", lambda: self._new_protocol(context), None),
        ]
        if self.config.tls_port is not None:  # 0: any free port (tests)
            wanted.append(
                (self.config.tls_port, "implicit TLS", lambda: self._new_protocol(None, "implicit_tls"), context)
            )
        for port, kind, factory, implicit_tls in wanted:
            try:
                listener = await loop.create_server(
                    factory,
                    host=self.config.host,
                    port=port,
                    backlog=self.config.backlog,
                    reuse_address=True,
                    reuse_port=self.config.reuse_port,
                    ssl=implicit_tls,
                    ssl_handshake_timeout=30 if implicit_tls else None,
                )
                self._listeners.append(listener)
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
        if self.metrics.enabled:
            self._heartbeat_task = loop.create_task(self._heartbeat())
        self.listening = True

    @property
    def sessions(self) -> set[LiveSession]:
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

    async def _heartbeat(self) -> None:
        """Every HEARTBEAT_INTERVAL: the metrics' tallies and gauges, and the
        heartbeat by which the --workers supervisor's /healthz knows that this
        event loop runs."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            now = loop.time()
            self._publish_metrics(lag=max(0.0, now - due))
            due = now + HEARTBEAT_INTERVAL
            await asyncio.sleep(HEARTBEAT_INTERVAL)

    def _publish_metrics(self, lag: float = 0.0) -> None:
        self.metrics.flush(len(self.sessions), len(recorder), recorder.dropped, self.handler.body_budget.used, lag)

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
        self.listening = False
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
            except TimeoutError:
                log.warning("Shutdown grace over; closing %d session(s)", len(self.sessions))
        # Sessions told 421 are closing. Give their closes a moment, but do not wait
        # for a TLS peer that never answers close_notify (asyncio would for 30 s).
        try:
            await asyncio.wait_for(self._until(lambda: not self.sessions), CLOSE_LINGER)
        except TimeoutError:
            pass
        for session in list(self.sessions):
            session.abort()
        if self._flush_task is not None:
            self._flush_task.cancel()
        await asyncio.sleep(0)  # let connection_lost run for the closed sessions
        await self.db.commit(FlushJob())
        await asyncio.get_running_loop().run_in_executor(None, self.db.shutdown)
        if self._heartbeat_task is not None:  # after the last batch: its duration counts too
            self._heartbeat_task.cancel()
            self._publish_metrics()
        if len(recorder):
            log.error(
                "%d AuthAttempt record(s) could not be written; they are in this log as JSON lines", len(recorder)
            )

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
    # full collection walks all of it and stalls the loop, a few times a minute
    # under load (the AUTH p99; figures in docs/performance.md).
    gc.freeze()
    on_ready(server)
    await stop.wait()
    log.info("Stopping the gateway")
    await server.stop()
