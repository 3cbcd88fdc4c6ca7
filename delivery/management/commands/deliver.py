"""``manage.py deliver``: deliver the queue until SIGTERM/SIGINT (or once)."""

from __future__ import annotations

import signal
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from prometheus_client import generate_latest

from delivery import queue
from delivery.relay import RelayTarget
from delivery.retry import RetryPolicy
from delivery.worker import DeliveryWorker, WorkerSettings
from smtpgateway.metrics import DeliveryMetrics
from smtpgateway.runtime.monitoring import MetricsPortUnavailable, MonitoringServer, why_not_listening


def worker_settings() -> WorkerSettings:
    """The worker's settings, or CommandError naming the one that is wrong."""
    try:
        target = RelayTarget.parse(settings.DELIVERY_RELAY_URL, settings.BASE_DIR)
    except ValueError as error:
        raise CommandError(f"{error}; see docs/delivery.md.") from None
    if settings.DELIVERY_MIN_BACKOFF <= 0 or settings.DELIVERY_MAX_BACKOFF < settings.DELIVERY_MIN_BACKOFF:
        raise CommandError("DELIVERY_MIN_BACKOFF must be positive and DELIVERY_MAX_BACKOFF at least as large.")
    return WorkerSettings(
        target=target,
        hostname=settings.SMTP_HOSTNAME,
        policy=RetryPolicy(
            settings.DELIVERY_MIN_BACKOFF, settings.DELIVERY_MAX_BACKOFF, settings.DELIVERY_MAX_LIFETIME
        ),
        connections=settings.DELIVERY_CONNECTIONS,
        lease=settings.DELIVERY_LEASE,
        poll_interval=settings.DELIVERY_POLL_INTERVAL,
        shutdown_grace=settings.DELIVERY_SHUTDOWN_GRACE,
        connect_timeout=settings.DELIVERY_CONNECT_TIMEOUT,
        command_timeout=settings.DELIVERY_COMMAND_TIMEOUT,
    )


class Command(BaseCommand):
    help = "Deliver accepted mail to DELIVERY_RELAY_URL until Ctrl-C or SIGTERM."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="Deliver what is due now, then exit (cron, tests).")
        parser.add_argument(
            "--flush", action="store_true", help="Make every deferred recipient due now (like postqueue -f), then exit."
        )
        parser.add_argument(
            "--metrics-port",
            type=int,
            help="Serve this worker's Prometheus metrics at /metrics on this port (on DELIVERY_METRICS_HOST, "
            f"{settings.DELIVERY_METRICS_HOST}; default DELIVERY_METRICS_PORT, 0 = off).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["flush"]:
            self.stdout.write(f"{queue.flush()} deferred recipient(s) due now.")
            if not options["once"]:
                return
        config = worker_settings()
        port = options["metrics_port"] if options["metrics_port"] is not None else settings.DELIVERY_METRICS_PORT
        metrics = DeliveryMetrics() if port else None
        self.monitoring: MonitoringServer | None = None
        if metrics is not None:
            registry = metrics.registry
            try:
                self.monitoring = MonitoringServer(
                    settings.DELIVERY_METRICS_HOST, port, exposition=lambda: generate_latest(registry), health=None
                )
            except MetricsPortUnavailable as failure:
                raise CommandError(
                    f"Cannot listen on {failure.where} (metrics): {why_not_listening(failure.error)}."
                ) from None
            self.monitoring.start()
        worker = DeliveryWorker(config, metrics)

        def on_signal(signum: int, frame: object) -> None:
            if worker.stopping.is_set():
                worker.stop_now.set()
            worker.stopping.set()

        previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            worker.run(once=options["once"], on_ready=lambda: self.banner(config))
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if self.monitoring is not None:
                self.monitoring.stop()
        self.stdout.write(f"agentmail-smtp delivery stopped ({worker.delivered} recipient result(s) recorded).")

    def banner(self, config: WorkerSettings) -> None:
        policy = config.policy
        lines = [
            f"agentmail-smtp delivering to {config.target.describe()}",
            f"  connections: {config.connections}; lease {config.lease:g}s; as {config.hostname}",
            f"  retries:     {policy.min_backoff:g}s doubling to {policy.max_backoff:g}s; expire after {policy.max_lifetime:g}s",
        ]
        if config.target.kind == "plain":
            lines.append("  WARNING:     no TLS to the upstream (tls=none): for a loopback sink only")
        if config.target.kind == "file":
            lines.append("  NOTE:        mail is written to files, not sent (development)")
        if self.monitoring is not None:
            lines.append(f"  metrics:     {self.monitoring.url}/metrics")
        lines.append("Quit with Ctrl-C.")
        self.stdout.write("\n".join(lines))
        self.stdout.flush()
