"""The metrics port: ``/metrics`` (Prometheus text), ``/healthz`` and ``/readyz``.

A small HTTP server in threads of its own (the standard library's
``ThreadingHTTPServer``), never on the event loop: a slow scraper, or a health
check that waits for the database, cannot hold up an SMTP session. It binds when
it is made, so a port in use is one error line before the gateway starts
(:class:`MetricsPortUnavailable`), and serves from :meth:`MonitoringServer.start`.

Where the answers come from is not this module's business: ``exposition`` returns
the metrics text (one process's registry, or the sum of the ``--workers``
processes' files), ``health`` answers the two checks
(``smtpgateway.runtime.health``).
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST

log = logging.getLogger("smtpgateway.server")

# Seconds a client of the metrics port may take to send its request.
REQUEST_TIMEOUT = 10.0


class Health(Protocol):
    """The two checks: ``(healthy, one line saying why)``."""

    def alive(self) -> tuple[bool, str]:
        """/healthz: the event loop(s) answer within a second."""
        ...

    def ready(self) -> tuple[bool, str]:
        """/readyz: listening, not draining, the database reachable."""
        ...


def why_not_listening(error: OSError) -> str:
    """A bind error, said for an operator (also for the SMTP listeners)."""
    return {
        errno.EADDRINUSE: "that port is already in use",
        errno.EACCES: "permission denied (ports below 1024 need privileges)",
        errno.EADDRNOTAVAIL: "that address is not on this machine",
    }.get(error.errno or 0, error.strerror or str(error))


class MetricsPortUnavailable(Exception):
    """The metrics port could not be bound: ``where`` is "host:port"."""

    def __init__(self, where: str, error: OSError) -> None:
        super().__init__(f"{where}: {error.strerror or error}")
        self.where = where
        self.error = error


class MonitoringServer:
    def __init__(self, host: str, port: int, exposition: Callable[[], bytes], health: Health | None) -> None:
        self.exposition = exposition
        self.health = health
        try:
            self._http = ThreadingHTTPServer((host, port), _handler_for(self), bind_and_activate=True)
        except OSError as error:
            raise MetricsPortUnavailable(f"{host}:{port}", error) from error
        self._http.daemon_threads = True
        self.host = host
        self.port: int = self._http.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._http.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._http.shutdown()
            self._thread.join(5)
        self._http.server_close()

    def answer(self, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for a GET of ``path``."""
        route = path.split("?", 1)[0]
        if route == "/metrics":
            return 200, CONTENT_TYPE_LATEST, self.exposition()
        if route in ("/healthz", "/readyz") and self.health is not None:
            healthy, why = self.health.alive() if route == "/healthz" else self.health.ready()
            return (200 if healthy else 503), "text/plain; charset=utf-8", why.encode() + b"\n"
        return 404, "text/plain; charset=utf-8", b"not found: /metrics, /healthz, /readyz\n"


def _handler_for(server: MonitoringServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = REQUEST_TIMEOUT
        server_version = "agentmail-smtp"
        sys_version = ""

        def do_GET(self) -> None:
            try:
                status, content_type, body = server.answer(self.path)
            except Exception:  # a bug: logged, and the scraper gets a 500, not a dropped connection
                log.exception("The metrics port failed to answer %s", self.path[:100])
                status, content_type, body = 500, "text/plain; charset=utf-8", b"internal error\n"
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # a scrape every few seconds is not worth a log line

    return Handler
