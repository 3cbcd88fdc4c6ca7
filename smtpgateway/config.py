"""The gateway's configuration as one immutable value, built from Django settings."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from django.conf import settings

from smtpgateway.auth.limits import Network, RateLimit, checked_ipv6_prefix, parse_networks


@dataclass(frozen=True)
class GatewayConfig:
    host: str
    port: int
    hostname: str
    max_message_size: int
    max_recipients: int
    auth_require_tls: bool
    # Committer threads (SMTP_DB_WORKERS): one suits SQLite, a few PostgreSQL.
    committers: int
    backlog: int
    # TLS (port None: no implicit-TLS listener; 0: any free port)
    tls_port: int | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_min_version: str = "1.2"
    # Abuse limits
    auth_max_failures: int = 3
    auth_failure_delay: float = 1.0
    auth_rate_limit: RateLimit | None = None
    # Seconds a key's or inbox's state may be served from memory (0 to 1).
    auth_cache_seconds: float = 1.0
    throttle_exempt: tuple[Network, ...] = ()
    # Bits of an IPv6 address that make one client for the per-address limits.
    ipv6_client_prefix: int = 64
    max_connections: int = 1000
    max_connections_per_ip: int = 20
    # Bytes of message bodies held in memory at once, over all sessions (0: no limit).
    max_buffered_data: int = 256 * 1024 * 1024
    max_unauth_commands: int = 10
    idle_timeout: float = 300.0
    data_timeout: float = 600.0
    shutdown_grace: float = 30.0
    # Seconds between retries of AuthAttempt records the database could not take (away or locked).
    flush_interval: float = 5.0
    # Scale-out: a PROXY protocol header (v1 or v2) starts every connection; the
    # port is shared with other processes (SO_REUSEPORT).
    proxy_protocol: bool = False
    reuse_port: bool = False
    # Recipients an inbox, and an organization, may send to per 24 hours, where
    # its own field is empty (0: no limit).
    daily_recipient_limit: int = 0
    # Count metrics (smtpgateway.metrics): on when they are served, by this
    # process (SMTP_METRICS_PORT) or by the --workers supervisor.
    metrics: bool = False

    @classmethod
    def from_settings(cls, **overrides: Any) -> GatewayConfig:
        """The settings, with ``overrides`` on top; an override of None (a
        command-line option left out) keeps the setting."""
        cert, key = settings.SMTP_TLS_CERT_FILE, settings.SMTP_TLS_KEY_FILE
        config = cls(
            host=settings.SMTP_HOST,
            port=settings.SMTP_PORT,
            hostname=settings.SMTP_HOSTNAME,
            max_message_size=settings.SMTP_MAX_MESSAGE_SIZE,
            max_recipients=settings.SMTP_MAX_RECIPIENTS,
            daily_recipient_limit=settings.SMTP_DAILY_RECIPIENT_LIMIT,
            auth_require_tls=settings.SMTP_AUTH_REQUIRE_TLS,
            committers=settings.SMTP_DB_WORKERS,
            backlog=settings.SMTP_LISTEN_BACKLOG,
            tls_port=settings.SMTP_TLS_PORT,
            tls_cert_file=settings.BASE_DIR / cert if cert else None,
            tls_key_file=settings.BASE_DIR / key if key else None,
            tls_min_version=settings.SMTP_TLS_MIN_VERSION,
            auth_max_failures=settings.SMTP_AUTH_MAX_FAILURES,
            auth_failure_delay=settings.SMTP_AUTH_FAILURE_DELAY,
            auth_rate_limit=RateLimit.parse(settings.SMTP_AUTH_RATE_LIMIT),
            auth_cache_seconds=settings.SMTP_AUTH_CACHE_SECONDS,
            throttle_exempt=parse_networks(settings.SMTP_THROTTLE_EXEMPT),
            ipv6_client_prefix=checked_ipv6_prefix(settings.SMTP_IPV6_CLIENT_PREFIX),
            max_connections=settings.SMTP_MAX_CONNECTIONS,
            max_connections_per_ip=settings.SMTP_MAX_CONNECTIONS_PER_IP,
            max_buffered_data=settings.SMTP_MAX_BUFFERED_DATA,
            max_unauth_commands=settings.SMTP_MAX_UNAUTH_COMMANDS,
            idle_timeout=settings.SMTP_IDLE_TIMEOUT,
            data_timeout=settings.SMTP_DATA_TIMEOUT,
            shutdown_grace=settings.SMTP_SHUTDOWN_GRACE,
            proxy_protocol=settings.SMTP_PROXY_PROTOCOL,
            metrics=bool(settings.SMTP_METRICS_PORT),
        )
        return replace(config, **{k: v for k, v in overrides.items() if v is not None})
