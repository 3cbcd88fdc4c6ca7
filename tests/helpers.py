"""Test helpers: a live gateway in a thread, SMTP clients, the demo credentials."""

from __future__ import annotations

import asyncio
import base64
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from smtpgateway.config import GatewayConfig
from smtpgateway.runtime.server import GatewayServer

# The demo's plaintext keys (the fixture holds only their digests).
VALID_INBOX = "inb_valid1234567890"
VALID_EMAIL = "test@agentmail.dev"
DISABLED_INBOX = "inb_disabled456789012"
SUSPENDED_INBOX = "inb_suspended78901234"
VALID_KEY = "am_validkey12345678901234567890123456"
WRONG_ORG_KEY = "am_wrongorg45678901234567890123456789"
REVOKED_KEY = "am_revoked78901234567890123456789012"
EXPIRED_KEY = "am_expired12345678901234567890123456"
NO_SCOPE_KEY = "am_noscope12345678901234567890123456"
UNKNOWN_KEY = "am_doesnotexist0123456789012345678901"
LIMITED_KEY = "am_limited12345678901234567890123456"  # limited to OTHER_INBOX
UNKNOWN_INBOX = "inb_doesnotexist00000"
OTHER_INBOX = "inb_other12345678901"
DEMO_KEYS = (VALID_KEY, WRONG_ORG_KEY, REVOKED_KEY, EXPIRED_KEY, NO_SCOPE_KEY, UNKNOWN_KEY, LIMITED_KEY)
# Each demo inbox id's address, for the username form AgentMail uses.
DEMO_ADDRESSES = {
    VALID_INBOX: VALID_EMAIL,
    DISABLED_INBOX: "disabled@agentmail.dev",
    SUSPENDED_INBOX: "suspended@agentmail.dev",
    OTHER_INBOX: "other@agentmail.dev",
    UNKNOWN_INBOX: "nobody@agentmail.dev",
}

INVALID = "535 5.7.8 Authentication credentials invalid"
INSUFFICIENT = "535 5.7.8 Insufficient permissions"
SUCCESS = "235 2.7.0 Authentication successful"


@dataclass(frozen=True)
class Scenario:
    number: int
    username: str
    password: str
    reply: str
    reason: str


SCENARIOS = [
    Scenario(1, VALID_INBOX, VALID_KEY, SUCCESS, "OK"),
    Scenario(2, VALID_INBOX, "am_invalidkey", INVALID, "INVALID_API_KEY_FORMAT"),
    Scenario(3, VALID_INBOX, UNKNOWN_KEY, INVALID, "API_KEY_NOT_FOUND"),
    Scenario(4, UNKNOWN_INBOX, VALID_KEY, INVALID, "INBOX_NOT_FOUND"),
    Scenario(5, VALID_INBOX, WRONG_ORG_KEY, INVALID, "ORGANIZATION_MISMATCH"),
    Scenario(6, VALID_INBOX, REVOKED_KEY, INVALID, "API_KEY_REVOKED"),
    Scenario(7, VALID_INBOX, EXPIRED_KEY, INVALID, "API_KEY_EXPIRED"),
    Scenario(8, DISABLED_INBOX, VALID_KEY, INVALID, "INBOX_DISABLED"),
    Scenario(9, VALID_INBOX, NO_SCOPE_KEY, INSUFFICIENT, "INSUFFICIENT_PERMISSIONS"),
    Scenario(10, "invalid_inbox", VALID_KEY, INVALID, "INVALID_INBOX_FORMAT"),
    Scenario(11, VALID_INBOX, LIMITED_KEY, INVALID, "INBOX_NOT_ALLOWED"),
]


def by_address(scenario: Scenario) -> Scenario:
    """The scenario with the inbox named by its email address instead of its id."""
    return replace(scenario, username=DEMO_ADDRESSES.get(scenario.username, scenario.username))


def b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode()


def secret_markers(keys: tuple[str, ...] | list[str]) -> set[str]:
    """Every form in which a key could leak: plain, base64 alone, as AUTH PLAIN."""
    markers: set[str] = set()
    for key in keys:
        markers.add(key)
        markers.add(b64(key))
        for inbox in (*DEMO_ADDRESSES, *DEMO_ADDRESSES.values(), "invalid_inbox"):
            markers.add(b64(f"\0{inbox}\0{key}"))
    return markers


class LiveGateway:
    """The real GatewayServer on its own event loop in a thread, on a free port."""

    def __init__(
        self, loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop, **overrides: Any
    ) -> None:
        # Independent of the developer's .env: no TLS and plaintext AUTH unless
        # asked, and failures answered at once (the delay has tests of its own).
        pinned: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "auth_require_tls": False}
        pinned |= {"tls_port": None, "tls_cert_file": None, "tls_key_file": None}
        pinned |= {"auth_failure_delay": 0.0, "throttle_exempt": ()}
        self.config = replace(GatewayConfig.from_settings(), **(pinned | overrides))
        self.loop = loop_factory()
        self.server = GatewayServer(self.config)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="live-gateway", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.server.start())
        except BaseException as error:  # surfaced by start()
            self._error = error
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()

    def start(self) -> LiveGateway:
        self._thread.start()
        assert self._ready.wait(10), "gateway did not start"
        if self._error:
            raise self._error
        return self

    def stop(self) -> None:
        if self.loop.is_closed():  # stopped already (by the test itself)
            return
        if self._error is None:
            asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(30)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(30)
        self.loop.close()

    def settle(self) -> None:
        """Wait until the gateway has committed everything it was given: AUTH
        replies come before their AuthAttempt rows are committed."""
        assert self.server.db.settled(10), "the gateway's database work did not finish"

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def tls_port(self) -> int:
        port = self.server.tls_port
        assert port is not None, "this gateway has no implicit-TLS listener"
        return port

    def smtp(self, timeout: float = 10) -> smtplib.SMTP:
        client = smtplib.SMTP("127.0.0.1", self.port, timeout=timeout)
        client.ehlo("tester.example")
        return client

    def wire(self) -> Wire:
        return Wire(self.port)


GatewayFactory = Callable[..., "LiveGateway"]  # the gateway_factory fixture: overrides -> a started gateway


def auth(client: smtplib.SMTP, mechanism: str, username: str, password: str) -> tuple[int, str]:
    """AUTH with smtplib's own mechanism code; returns the final reply."""
    client.user, client.password = username, password
    authobject = getattr(client, f"auth_{mechanism.lower()}")
    text: bytes | str
    try:
        code, text = client.auth(mechanism, authobject)
    except smtplib.SMTPAuthenticationError as error:
        code, text = error.smtp_code, error.smtp_error
    return code, f"{code} {text.decode() if isinstance(text, bytes) else text}"


class Wire:
    """A raw SMTP client on a socket, for exchanges that smtplib cannot produce."""

    def __init__(self, port: int, timeout: float = 10, source: str | None = None, preamble: bytes = b"") -> None:
        """``source``: connect from this loopback address (Linux routes all of 127/8
        to lo); ``preamble``: bytes sent before the greeting (a PROXY header)."""
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=timeout, source_address=(source, 0) if source else None
        )
        if preamble:
            self.sock.sendall(preamble)
        self.buffer = b""
        self.greeting = self.reply()

    def send(self, line: bytes | str) -> None:
        data = line.encode() if isinstance(line, str) else line
        self.sock.sendall(data + b"\r\n")

    def _line(self) -> str:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionResetError(f"server closed the connection; unread: {self.buffer!r}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line.decode()

    def reply(self) -> list[str]:
        """One whole (possibly multi-line) reply."""
        lines = [self._line()]
        while len(lines[-1]) > 3 and lines[-1][3] == "-":
            lines.append(self._line())
        return lines

    def command(self, line: bytes | str) -> str:
        """Send a command; return the last line of its reply."""
        self.send(line)
        return self.reply()[-1]

    def closed_by_server(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except (TimeoutError, ConnectionResetError):
            return False

    def close(self) -> None:
        self.sock.close()


def authenticated_wire(gateway: LiveGateway) -> Wire:
    """A raw session after EHLO and a successful AUTH PLAIN as the valid inbox."""
    wire = gateway.wire()
    wire.command("EHLO tester.example")
    assert wire.command("AUTH PLAIN " + b64(f"\0{VALID_INBOX}\0{VALID_KEY}")).startswith("235 ")
    return wire


def database_url() -> str:
    """DATABASE_URL for a subprocess that must use this test run's database."""
    from django.db import connection

    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    from urllib.parse import quote

    auth = quote(db["USER"] or "") + (":" + quote(db["PASSWORD"]) if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or 'localhost'}:{db['PORT'] or 5432}/{db['NAME']}"


def eventually(condition: Any, timeout: float = 10.0) -> None:
    """Wait for ``condition()`` to hold: for a gateway in another process, whose
    AuthAttempt rows are committed within about 20 ms of its replies."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        time.sleep(0.02)


def http_get(port: int, path: str, timeout: float = 10) -> tuple[int, str]:
    """GET http://127.0.0.1:port/path: (status, body), whatever the status."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_metrics(text: str) -> Samples:
    """Prometheus text as {(sample name, its labels): value}, by prometheus-client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(port: int) -> Samples:
    status, text = http_get(port, "/metrics")
    assert status == 200, (status, text[:500])
    return parse_metrics(text)


def sample(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; a series that is not there is an error, not a 0."""
    return samples[(name, frozenset(labels.items()))]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def served_serial(port: int, cafile: Path) -> int:
    context = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            from cryptography import x509

            der = tls.getpeercert(binary_form=True)
            assert der is not None
            return x509.load_der_x509_certificate(der).serial_number


def starttls_serial(port: int, cafile: Path) -> int:
    """The serial of the certificate STARTTLS on ``port`` presents."""
    from cryptography import x509

    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.starttls(context=ssl.create_default_context(cafile=str(cafile)))
        der = client.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number
