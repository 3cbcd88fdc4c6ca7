"""``manage.py runsmtp``: options in, banner out, the server runs until a signal."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import resource
import ssl
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from prometheus_client import generate_latest

from smtpgateway.config import GatewayConfig
from smtpgateway.metrics import gateway_families
from smtpgateway.runtime import glibc
from smtpgateway.runtime.health import DatabaseProbe, GatewayHealth
from smtpgateway.runtime.monitoring import MetricsPortUnavailable, MonitoringServer, why_not_listening
from smtpgateway.runtime.server import CannotListen, GatewayServer, serve_until_signalled
from smtpgateway.runtime.supervisor import run_workers
from smtpgateway.session.auth_exchange import AUTH_MECHANISMS


def describe_delivery() -> str:
    """Where ``manage.py deliver`` sends accepted mail, without credentials."""
    from delivery.relay import RelayTarget

    try:
        return f"{RelayTarget.parse(settings.DELIVERY_RELAY_URL, settings.BASE_DIR).describe()} (by manage.py deliver)"
    except ValueError as error:
        return f"none ({error})"


def describe_database() -> str:
    """Which database the gateway uses, without credentials."""
    db = settings.DATABASES["default"]
    vendor = db["ENGINE"].rsplit(".", 1)[-1]
    if vendor == "sqlite3":
        return f"SQLite {db['NAME']}"
    host = db.get("HOST") or "local socket"
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"{vendor} {host}{port}/{db['NAME']}"


def return_large_buffers_to_the_system() -> None:
    """Fix glibc's mmap threshold (128 KiB) so that message-sized buffers are always
    mmap'ed and go back to the system when freed. By default the threshold rises to
    the largest block ever freed, after which large messages are served from the
    heap and a long-running server keeps their memory for good."""
    mallopt = glibc.function("mallopt")
    if mallopt is not None:  # without glibc: nothing to tune
        m_mmap_threshold = -3
        mallopt(m_mmap_threshold, 128 * 1024)


# Open files a gateway needs besides its sessions: listening sockets, database
# connections (and SQLite's database, WAL and shared-memory files per connection),
# the certificate on reload, the log. Generous on purpose.
FILES_BESIDES_SESSIONS = 64


def raise_open_files_limit(max_connections: int) -> tuple[float, str | None]:
    """Raise this process's soft limit on open files to what ``max_connections``
    sessions need, as far as the hard limit allows; return the limit now in force
    (``inf``: none) and, if it is still too low, a warning. A soft limit of 1024 is
    common (shells, many service managers) and is below 1000 sessions plus the
    gateway's own files; past it, accept() fails, and new clients wait in the
    kernel's queue without a greeting while nothing is logged
    (``test_commands.py::test_runsmtp_raises_a_low_soft_limit_on_open_files``).
    0 connections means no connection limit: up to the hard limit."""
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft, hard = (math.inf if value == resource.RLIM_INFINITY else value for value in limits)  # RLIM_INFINITY is -1
    needed = max_connections + FILES_BESIDES_SESSIONS if max_connections else math.inf
    wanted = min(needed, hard)
    if wanted > soft:
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (resource.RLIM_INFINITY if wanted == math.inf else int(wanted), limits[1])
        )
        soft = wanted
    if max_connections and soft < needed:  # no connection limit: whatever the hard limit allows
        return soft, (
            f"open files are limited to {soft} (hard limit), fewer than SMTP_MAX_CONNECTIONS ({max_connections}) + "
            f"{FILES_BESIDES_SESSIONS}: clients past it wait without a greeting. Raise the hard limit "
            "(ulimit -Hn, systemd LimitNOFILE=) or lower SMTP_MAX_CONNECTIONS."
        )
    return soft, None


def run_event_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop unless SMTP_EVENT_LOOP says "asyncio"."""
    return_large_buffers_to_the_system()
    if settings.SMTP_EVENT_LOOP == "uvloop":
        import uvloop

        uvloop.run(main)
    elif settings.SMTP_EVENT_LOOP == "asyncio":
        asyncio.run(main)
    else:
        raise CommandError(f"SMTP_EVENT_LOOP must be uvloop or asyncio, not {settings.SMTP_EVENT_LOOP!r}.")


def open_metrics_port(port: int | None) -> MonitoringServer | None:
    """Bind the metrics port (SMTP_METRICS_HOST:port; None or 0: no metrics), or
    CommandError saying why it cannot be. What it serves is set by the caller."""
    if not port:
        return None
    try:
        return MonitoringServer(settings.SMTP_METRICS_HOST, port, exposition=lambda: b"", health=None)
    except MetricsPortUnavailable as failure:
        raise CommandError(f"Cannot listen on {failure.where} (metrics): {why_not_listening(failure.error)}.") from None


def describe_throttling(config: GatewayConfig) -> str:
    limit = config.auth_rate_limit
    parts = [
        f"{limit.failures} failed AUTH per address (IPv6: per /{config.ipv6_client_prefix}) per {int(limit.window.total_seconds())}s"
        if limit
        else "no AUTH rate limit",
        f"{config.auth_max_failures} per session",
        f"{config.auth_failure_delay:g}s delay per failure",
    ]
    exempt = ", ".join(str(network) for network in config.throttle_exempt)
    if exempt:
        loopback = " (loopback exempt: demo)" if any(network.is_loopback for network in config.throttle_exempt) else ""
        parts.append(f"exempt: {exempt}{loopback}")
    return "; ".join(parts)


class Command(BaseCommand):
    help = "Run the SMTP submission gateway until Ctrl-C or SIGTERM."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", help=f"Address to listen on (default SMTP_HOST, {settings.SMTP_HOST}).")
        parser.add_argument("--port", type=int, help=f"Port to listen on (default SMTP_PORT, {settings.SMTP_PORT}).")
        parser.add_argument(
            "--workers",
            type=int,
            default=1,
            help="Run this many gateway processes on the same port (SO_REUSEPORT), for multi-core hosts (default 1).",
        )
        parser.add_argument(
            "--proxy-protocol",
            action="store_true",
            default=None,
            help="Expect a PROXY protocol v1/v2 header on every connection (behind HAProxy or a TCP load balancer; "
            "default SMTP_PROXY_PROTOCOL).",
        )
        parser.add_argument(
            "--metrics-port",
            type=int,
            help="Serve Prometheus metrics at /metrics, and /healthz and /readyz, on this port "
            f"(on SMTP_METRICS_HOST, {settings.SMTP_METRICS_HOST}; default SMTP_METRICS_PORT, 0 = off).",
        )
        # What the --workers supervisor tells its workers: --reuse-port, their
        # index, a pipe for "listening" and whether to count metrics (it serves them).
        parser.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
        parser.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
        parser.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
        parser.add_argument("--no-banner", action="store_true", help=argparse.SUPPRESS)
        parser.add_argument("--metrics-collect", action="store_true", help=argparse.SUPPRESS)
        parser.add_argument(
            "--tls-port",
            type=int,
            help="Also listen here with TLS from the first byte (implicit TLS, e.g. 465; default SMTP_TLS_PORT, 0 = off).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["workers"] < 1:
            raise CommandError("--workers must be at least 1.")
        worker = options["worker_index"] is not None  # one of a supervisor's: it serves no metrics
        metrics_port = None if worker else options["metrics_port"]
        if metrics_port is None and not worker:
            metrics_port = settings.SMTP_METRICS_PORT
        self.monitoring = open_metrics_port(metrics_port)
        if options["workers"] > 1:
            passed = [
                f"--{name.replace('_', '-')}={options[name]}"
                for name in ("host", "port", "tls_port")
                if options[name] is not None
            ]
            passed += ["--proxy-protocol"] if options["proxy_protocol"] else []
            if self.monitoring is not None:
                self.stdout.write(
                    f"agentmail-smtp metrics on {self.monitoring.url}/metrics (and /healthz, /readyz): "
                    f"the sum of {options['workers']} workers"
                )
                self.stdout.flush()
            database = DatabaseProbe(settings.DATABASE_TIMEOUT)
            raise SystemExit(run_workers(options["workers"], passed, self.monitoring, database))
        try:
            config = GatewayConfig.from_settings(
                host=options["host"],
                port=options["port"],
                proxy_protocol=options["proxy_protocol"],
                reuse_port=options["reuse_port"] or None,
            )
        except ValueError as error:  # a setting out of its range, said as such
            raise CommandError(str(error)) from error
        config = replace(config, metrics=options["metrics_collect"] or self.monitoring is not None)
        if options["tls_port"] is not None:
            config = replace(config, tls_port=options["tls_port"] or None)
        self.worker_index = options["worker_index"]
        self.ready_fd: int | None = options["ready_fd"]
        self.banner = not options["no_banner"]
        self.health: GatewayHealth | None = None
        if self.monitoring is not None:
            registry = gateway_families().registry
            self.health = GatewayHealth(DatabaseProbe(settings.DATABASE_TIMEOUT))
            self.monitoring.exposition = lambda: generate_latest(registry)
            self.monitoring.health = self.health
            self.monitoring.start()
        self.open_files, self.open_files_warning = raise_open_files_limit(config.max_connections)
        try:
            run_event_loop(serve_until_signalled(config, on_ready=self.on_ready))
        except (ValueError, ssl.SSLError) as error:
            raise CommandError(f"TLS is misconfigured: {error}") from error
        except FileNotFoundError as error:
            raise CommandError(
                f"TLS certificate or key not found: {error.filename} (make one with manage.py gencert)."
            ) from error
        except CannotListen as failure:
            raise CommandError(f"Cannot listen on {failure.listener}: {why_not_listening(failure.error)}.") from failure
        finally:
            if self.monitoring is not None:  # after the drain: /readyz said "draining" during it
                self.monitoring.stop()
        # Log lines are written by a thread of their own (smtpgateway.runtime.logwriter):
        # let the last ones out before the final word.
        for handler in logging.getLogger().handlers:
            handler.flush()
        self.stdout.write("agentmail-smtp stopped.")

    def on_ready(self, server: GatewayServer) -> None:
        """The server listens: attach the health checks, tell the supervisor, say so."""
        if self.health is not None:
            self.health.attach(server, asyncio.get_running_loop())
        if self.ready_fd is not None:
            os.write(self.ready_fd, b"R")
            os.close(self.ready_fd)
        if self.banner:
            self.print_banner(server)

    def print_banner(self, server: GatewayServer) -> None:
        if self.worker_index:  # one banner for all workers: the first one's
            return
        config = server.config
        certificates = server.certificates
        lines = [
            f"agentmail-smtp listening on {config.host}:{server.port} ({'STARTTLS' if certificates else 'plaintext only'})"
        ]
        if server.tls_port:
            lines.append(f"                          {config.host}:{server.tls_port} (implicit TLS)")
        lines.append(f"  hostname:  {config.hostname}")
        if config.reuse_port:
            lines.append("  workers:   several processes share this port (SO_REUSEPORT); limits are per process")
        if config.proxy_protocol:
            lines.append(
                "  PROXY:     every connection must start with a PROXY v1/v2 header (only the balancer may connect)"
            )
        if config.auth_require_tls:
            lines.append(f"  AUTH:      {' '.join(AUTH_MECHANISMS)}, only over TLS")
            if certificates is None:
                lines.append("  WARNING:   AUTH requires TLS but no certificate is configured: no client can log in")
        else:
            lines.append(
                f"  AUTH:      {' '.join(AUTH_MECHANISMS)}, plaintext allowed (SMTP_AUTH_REQUIRE_TLS is off: demo only)"
            )
        if certificates:
            lines.append(f"  TLS:       {certificates.summary}; TLS {config.tls_min_version}+; SIGHUP reloads it")
        else:
            lines.append("  TLS:       off (no certificate configured)")
        lines += [
            f"  limits:    {config.max_message_size} bytes per message, {config.max_recipients} recipients, "
            f"{config.max_connections} connections ({config.max_connections_per_ip} per address), "
            f"{'unlimited' if self.open_files == math.inf else self.open_files} open files",
            f"  throttle:  {describe_throttling(config)}",
            f"  database:  {describe_database()}",
            f"  loop:      {settings.SMTP_EVENT_LOOP}",
        ]
        if self.monitoring is not None:
            lines.append(f"  metrics:   {self.monitoring.url}/metrics (and /healthz, /readyz)")
        lines.append(f"  delivery:  {describe_delivery()}")
        if not settings.DELIVERY_RELAY_URL:
            lines.append("  WARNING:   DELIVERY_RELAY_URL is not set: accepted mail is queued but not delivered")
        if self.open_files_warning:
            lines.append(f"  WARNING:   {self.open_files_warning}")
        lines.append("Quit with Ctrl-C.")
        self.stdout.write("\n".join(lines))
        self.stdout.flush()
