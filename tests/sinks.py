"""Upstream servers for the delivery tests, on loopback: a real aiosmtpd sink
(as a smarthost with STARTTLS and AUTH, over implicit TLS, or plain), whose
replies a test can script, and a server that accepts and never speaks."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from tests.helpers import free_port

SINK_USER, SINK_PASSWORD = "relay-user", "relay-secret-0123456789"


@dataclass
class Received:
    sender: str
    recipients: list[str]
    content: bytes


@dataclass
class SinkHandler:
    """Records every message; replies as scripted. ``rcpt_replies``: address ->
    reply for its RCPT; ``data_replies``: replies for the next DATAs in turn
    (then 250)."""

    rcpt_replies: dict[str, str] = field(default_factory=dict)
    data_replies: list[str] = field(default_factory=list)
    data_delay: float = 0.0  # seconds each DATA takes before its reply
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]) -> str:
        reply = self.rcpt_replies.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        with self.lock:
            if self.data_replies:
                return self.data_replies.pop(0)
            sender = "" if envelope.mail_from == "<>" else envelope.mail_from
            self.received.append(Received(sender, list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 Ok: queued"

    def deliveries(self) -> list[tuple[str, str]]:
        """(Message-ID or first line, recipient) for each delivery received."""
        with self.lock:
            return [(message_key(item.content), rcpt) for item in self.received for rcpt in item.recipients]


def message_key(content: bytes) -> str:
    for line in content.split(b"\r\n"):
        if line.lower().startswith(b"message-id:"):
            return line.split(b":", 1)[1].strip().decode()
        if not line:
            break
    return ""


class NullSenderSMTP(SMTP):
    """aiosmtpd, taking the null reverse-path (``MAIL FROM:<>``) that bounces
    use, as every MTA does; stock aiosmtpd answers it 501."""

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        if arg.strip().startswith("<>"):
            return "<>", arg.strip()[2:].strip()
        return super()._getaddr(arg)


class SinkController(Controller):
    def factory(self) -> SMTP:
        return NullSenderSMTP(self.handler, **self.SMTP_kwargs)


class Sink:
    """An aiosmtpd sink on 127.0.0.1. ``mode``: "starttls" (STARTTLS and AUTH
    required, as a smarthost), "smtps" (TLS from the first byte, AUTH) or "plain"."""

    def __init__(self, mode: str, certificate: tuple[Path, Path] | None = None, port: int | None = None) -> None:
        self.handler = SinkHandler()
        self.port = port or free_port()
        self.mode = mode
        context = None
        if certificate is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*certificate)
        kwargs: dict[str, Any] = {"hostname": "127.0.0.1", "port": self.port, "server_hostname": "sink.test"}
        if mode == "starttls":
            kwargs |= {"tls_context": context, "require_starttls": True, "auth_required": True}
            kwargs |= {"authenticator": self._authenticate, "auth_require_tls": True}
        elif mode == "smtps":
            # aiosmtpd withholds AUTH on implicit TLS unless told TLS is not needed (its issue 281).
            kwargs |= {"ssl_context": context, "auth_required": True, "authenticator": self._authenticate}
            kwargs |= {"auth_require_tls": False}
        self.controller = SinkController(self.handler, **kwargs)

    @staticmethod
    def _authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
            SINK_USER.encode(),
            SINK_PASSWORD.encode(),
        )
        return AuthResult(success=ok, handled=False)

    def start(self) -> Sink:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def url(self, ca: Path | None = None) -> str:
        if self.mode == "plain":
            return f"smtp://127.0.0.1:{self.port}?tls=none"
        scheme = "smtps" if self.mode == "smtps" else "smtp"
        return f"{scheme}://{SINK_USER}:{SINK_PASSWORD}@127.0.0.1:{self.port}" + (f"?ca={ca}" if ca else "")


class SilentServer:
    """Accepts connections and never says a word."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.accepted.append(connection)

    def close(self) -> None:
        self.listener.close()
        for connection in self.accepted:
            connection.close()
