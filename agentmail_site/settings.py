"""Settings for agentmail-smtp: the one place the environment is read.

Every variable is described in docs/configuration.md (values in `.env.example`).
An optional `.env` file in the project root is read first; real environment
variables win over it.
"""

from __future__ import annotations

import socket
from pathlib import Path

import django_stubs_ext
import environ
from django.core.exceptions import ImproperlyConfigured

# Lets the admin's classes be subscripted as django-stubs types them (ModelAdmin[ApiKey]).
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG: bool = env.bool("DEBUG", default=False)

_DEV_SECRET_KEY = "django-insecure-development-only-key-never-use-in-production"
SECRET_KEY: str = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off.")
    SECRET_KEY = _DEV_SECRET_KEY

ALLOWED_HOSTS: list[str] = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "inboxes",
    "apikeys",
    "smtpgateway",
    "delivery",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Serves STATIC_ROOT (what collectstatic wrote) under gunicorn in production.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "agentmail_site.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "agentmail_site.wsgi.application"

# --- Database ------------------------------------------------------------------
# SQLite is the embedded default; PostgreSQL works by changing DATABASE_URL only.
# DATABASE_TIMEOUT bounds how long one query may wait on a lock (SQLite busy
# timeout, PostgreSQL lock_timeout/statement_timeout): an SMTP client gets a 4xx
# after that instead of hanging.
DATABASE_TIMEOUT: float = env.float("DATABASE_TIMEOUT", default=5.0)

DATABASES = {
    "default": env.db_url("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
}
_db = DATABASES["default"]
_db["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=600)
if _db["ENGINE"] == "django.db.backends.sqlite3":
    _db.setdefault("OPTIONS", {}).update(
        {
            # WAL lets the admin read while the gateway writes; synchronous=FULL
            # makes every commit durable, so a 250 survives a power cut too.
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL",
            # Take the write lock at BEGIN: no read-to-write upgrade deadlocks.
            "transaction_mode": "IMMEDIATE",
            "timeout": DATABASE_TIMEOUT,
        }
    )
    # Tests share one database file between the test thread, the gateway's
    # worker threads and gateway subprocesses, so it must be a real file.
    _db["TEST"] = {"NAME": env.str("TEST_DATABASE_NAME", default=str(BASE_DIR / "test-db.sqlite3"))}
elif _db["ENGINE"] in ("django.db.backends.postgresql",):
    _timeout_ms = int(DATABASE_TIMEOUT * 1000)
    _db.setdefault("OPTIONS", {}).update(
        {
            "connect_timeout": max(1, int(DATABASE_TIMEOUT)),
            "options": f"-c lock_timeout={_timeout_ms} -c statement_timeout={_timeout_ms}",
        }
    )

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# "SQLite does not support indexes with non-key columns": the INCLUDE columns of
# AuthAttempt's overview indexes are for PostgreSQL's index-only scans; SQLite
# makes the same indexes without them, which is all it needs.
SILENCED_SYSTEM_CHECKS = ["models.W040"]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
# Times to the second, with the zone, agreeing with the log lines (the admin).
FORMAT_MODULE_PATH = ["agentmail_site.formats"]

STATIC_URL = "static/"
# Where `manage.py collectstatic` puts the admin's CSS and scripts; WhiteNoise
# serves them from there (read at start unless DEBUG is on: run collectstatic
# before starting the admin; docs/deployment.md).
# A relative path is relative to the project root.
STATIC_ROOT: Path = BASE_DIR / env.str("STATIC_ROOT", default="var/static")
# Decided here from the environment's DEBUG, not from settings.DEBUG at the first
# request (which the test runner turns off): development and tests look for files
# on each request and need no collectstatic.
WHITENOISE_AUTOREFRESH: bool = DEBUG

# --- SMTP gateway ----------------------------------------------------------------
SMTP_HOST: str = env.str("SMTP_HOST", default="127.0.0.1")
SMTP_PORT: int = env.int("SMTP_PORT", default=2525)
SMTP_HOSTNAME: str = env.str("SMTP_HOSTNAME", default=socket.gethostname())
SMTP_MAX_MESSAGE_SIZE: int = env.int("SMTP_MAX_MESSAGE_SIZE", default=10 * 1024 * 1024)
SMTP_MAX_RECIPIENTS: int = env.int("SMTP_MAX_RECIPIENTS", default=100)
# Recipients per rolling 24 hours for an inbox, and for an organization, whose
# own daily_recipient_limit is empty; 0: no limit (docs/configuration.md).
SMTP_DAILY_RECIPIENT_LIMIT: int = env.int("SMTP_DAILY_RECIPIENT_LIMIT", default=0)
# Bytes of message bodies a gateway process holds in memory at once, over all
# sessions; past it a body gets 452 4.3.1 (try again later). 0: no limit.
SMTP_MAX_BUFFERED_DATA: int = env.int("SMTP_MAX_BUFFERED_DATA", default=256 * 1024 * 1024)
# TLS: a certificate enables STARTTLS on SMTP_PORT; SMTP_TLS_PORT (0 or unset:
# off) adds a listener that speaks TLS from the first byte. Relative paths are
# relative to the project root.
SMTP_TLS_CERT_FILE: str = env.str("SMTP_TLS_CERT_FILE", default="")
SMTP_TLS_KEY_FILE: str = env.str("SMTP_TLS_KEY_FILE", default="")
SMTP_TLS_PORT: int | None = env.int("SMTP_TLS_PORT", default=0) or None
SMTP_TLS_MIN_VERSION: str = env.str("SMTP_TLS_MIN_VERSION", default="1.2")
# AUTH only over encryption, unless DEBUG is on (the loopback demo).
SMTP_AUTH_REQUIRE_TLS: bool = env.bool("SMTP_AUTH_REQUIRE_TLS", default=not DEBUG)
# Committer threads that write records and messages (each holds one DB connection;
# one more thread, the AUTH checker, only reads). One is right for SQLite, which
# has a single writer; raise it for PostgreSQL.
SMTP_DB_WORKERS: int = env.int("SMTP_DB_WORKERS", default=1)
SMTP_LISTEN_BACKLOG: int = env.int("SMTP_LISTEN_BACKLOG", default=1024)
# Every connection starts with a PROXY protocol header (behind HAProxy or a cloud
# TCP load balancer); only the balancer may then reach the port.
SMTP_PROXY_PROTOCOL: bool = env.bool("SMTP_PROXY_PROTOCOL", default=False)
# Event loop for runsmtp: "uvloop" (faster, lower latency under load) or "asyncio".
SMTP_EVENT_LOOP: str = env.str("SMTP_EVENT_LOOP", default="uvloop")

# Abuse limits (see the README's "Reliability" section).
SMTP_AUTH_MAX_FAILURES: int = env.int("SMTP_AUTH_MAX_FAILURES", default=3)
SMTP_AUTH_FAILURE_DELAY: float = env.float("SMTP_AUTH_FAILURE_DELAY", default=1.0)
SMTP_AUTH_RATE_LIMIT: str = env.str("SMTP_AUTH_RATE_LIMIT", default="10/600")
# How long a key's and an inbox's state may be served from memory after it was
# read (0 to 1 second): a revoked key or disabled inbox is refused within this.
SMTP_AUTH_CACHE_SECONDS: float = env.float("SMTP_AUTH_CACHE_SECONDS", default=1.0)
SMTP_THROTTLE_EXEMPT: list[str] = env.list("SMTP_THROTTLE_EXEMPT", default=[])
# The per-address limits count an IPv6 client by its network of this many bits
# (64: a host can rotate through its /64); 128 counts each address.
SMTP_IPV6_CLIENT_PREFIX: int = env.int("SMTP_IPV6_CLIENT_PREFIX", default=64)
SMTP_MAX_CONNECTIONS: int = env.int("SMTP_MAX_CONNECTIONS", default=1000)
SMTP_MAX_CONNECTIONS_PER_IP: int = env.int("SMTP_MAX_CONNECTIONS_PER_IP", default=20)
SMTP_MAX_UNAUTH_COMMANDS: int = env.int("SMTP_MAX_UNAUTH_COMMANDS", default=10)
SMTP_IDLE_TIMEOUT: float = env.float("SMTP_IDLE_TIMEOUT", default=300.0)
SMTP_DATA_TIMEOUT: float = env.float("SMTP_DATA_TIMEOUT", default=600.0)
SMTP_SHUTDOWN_GRACE: float = env.float("SMTP_SHUTDOWN_GRACE", default=30.0)
# AuthAttempt records kept in memory while the database cannot take them.
SMTP_AUTH_BACKLOG_MAX: int = env.int("SMTP_AUTH_BACKLOG_MAX", default=10_000)
# Prometheus metrics at /metrics, with /healthz and /readyz, on this port (0: off);
# with runsmtp --workers the supervisor serves the sum of its workers.
SMTP_METRICS_PORT: int = env.int("SMTP_METRICS_PORT", default=0)
SMTP_METRICS_HOST: str = env.str("SMTP_METRICS_HOST", default="127.0.0.1")

# --- Delivery (manage.py deliver; docs/delivery.md) ------------------------------
# Where accepted mail goes: smtp://user:password@host:587 (STARTTLS required,
# certificate verified; ?ca=/path.pem trusts a private CA), smtps://host:465,
# smtp://127.0.0.1:25?tls=none (a loopback sink only), or file://var/outbox (one
# .eml per recipient). Unset: nothing is delivered (runsmtp warns, deliver refuses).
DELIVERY_RELAY_URL: str = env.str("DELIVERY_RELAY_URL", default="")
# Retries as Postfix does them: a temporary failure waits from the minimal to the
# maximal backoff, doubling; after the lifetime in the queue the recipient expires.
DELIVERY_MIN_BACKOFF: float = env.float("DELIVERY_MIN_BACKOFF", default=300.0)
DELIVERY_MAX_BACKOFF: float = env.float("DELIVERY_MAX_BACKOFF", default=4000.0)
DELIVERY_MAX_LIFETIME: float = env.float("DELIVERY_MAX_LIFETIME", default=5 * 24 * 3600.0)
DELIVERY_CONNECT_TIMEOUT: float = env.float("DELIVERY_CONNECT_TIMEOUT", default=30.0)
DELIVERY_COMMAND_TIMEOUT: float = env.float("DELIVERY_COMMAND_TIMEOUT", default=120.0)
# Upstream connections per worker process, each reused for many messages.
DELIVERY_CONNECTIONS: int = env.int("DELIVERY_CONNECTIONS", default=4)
# How long a worker's claim on a recipient lasts (renewed while it works): a
# worker killed outright leaves its recipients to others after this.
DELIVERY_LEASE: float = env.float("DELIVERY_LEASE", default=300.0)
# Seconds between looks at the queue when there was nothing to do.
DELIVERY_POLL_INTERVAL: float = env.float("DELIVERY_POLL_INTERVAL", default=0.2)
# Seconds SIGTERM/SIGINT gives the deliveries in flight before deliver exits.
DELIVERY_SHUTDOWN_GRACE: float = env.float("DELIVERY_SHUTDOWN_GRACE", default=30.0)
# The delivery worker's own Prometheus metrics (queue depth, attempts, latency) at
# /metrics on this port (0: off); one port per worker process.
DELIVERY_METRICS_PORT: int = env.int("DELIVERY_METRICS_PORT", default=0)
DELIVERY_METRICS_HOST: str = env.str("DELIVERY_METRICS_HOST", default="127.0.0.1")

# --- Logging ---------------------------------------------------------------------
LOG_LEVEL: str = env.str("LOG_LEVEL", default="INFO")
# "human": one line of text per record; "json": one JSON object per line, for a
# log shipper (smtpgateway/runtime/logformat.py).
LOG_FORMAT: str = env.str("LOG_FORMAT", default="human")
if LOG_FORMAT not in ("human", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT must be human or json, not {LOG_FORMAT!r}.")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "human": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "smtpgateway.runtime.logformat.JsonFormatter"},
    },
    "handlers": {
        # Written by a thread of its own: a stalled reader of stderr must not block
        # the event loop (smtpgateway/runtime/logwriter.py).
        "console": {"class": "smtpgateway.runtime.logwriter.BackgroundStreamHandler", "formatter": LOG_FORMAT},
    },
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "smtpgateway": {"level": LOG_LEVEL},
        "apikeys": {"level": LOG_LEVEL},
        "inboxes": {"level": LOG_LEVEL},
        "delivery": {"level": LOG_LEVEL},
        # aiosmtpd logs every command line at INFO and some client input at
        # WARNING; our own logger says what matters without echoing client bytes.
        "mail.log": {"level": "ERROR"},
    },
}
