"""Where accepted mail goes (``DELIVERY_RELAY_URL``) and the SMTP client that
takes it there. No ORM: the worker hands a message in and gets each recipient's
result back.

* ``smtp://user:password@host:587``: a smarthost; STARTTLS is required and the
  certificate verified (``?ca=/path.pem`` trusts a private CA). An upstream that
  does not offer STARTTLS defers the mail, as Postfix does with
  ``smtp_tls_security_level = encrypt``.
* ``smtps://host:465``: TLS from the first byte.
* ``smtp://127.0.0.1:25?tls=none``: plaintext, for a sink on this machine only.
* ``file://var/outbox``: each delivery written as ``<queue_id>.<recipient-hash>.eml``
  (a relative path is under the project root), for development.

One :class:`Upstream` holds one connection and carries many messages over it
(RSET between them). A refused or dropped connection, a timeout or a 4xx defers;
a 5xx bounces, recipient by recipient from the RCPT replies.
"""

from __future__ import annotations

import hashlib
import os
import re
import smtplib
import socket
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from delivery.states import RecipientStatus
from smtpgateway.safetext import printable

REPLY_LIMIT = 512
_ENHANCED = re.compile(r"([245]\.\d{1,3}\.\d{1,3})(?:\s|$)")
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class RelayTarget:
    """A parsed ``DELIVERY_RELAY_URL``. Its ``repr`` and :meth:`describe` never
    show the password."""

    kind: str  # "smtp" (STARTTLS), "smtps", "plain" (tls=none) or "file"
    host: str = ""
    port: int = 0
    username: str = ""
    password: str = field(default="", repr=False)
    ca_file: Path | None = None
    outbox: Path | None = None

    @classmethod
    def parse(cls, url: str, base_dir: Path) -> RelayTarget:
        """The target, or ValueError saying what is wrong with ``url``."""
        if not url:
            raise ValueError("DELIVERY_RELAY_URL is not set: nowhere to deliver to")
        parts = urlsplit(url)
        if parts.scheme == "file":
            path = Path(unquote(parts.netloc + parts.path))
            return cls("file", outbox=path if path.is_absolute() else base_dir / path)
        if parts.scheme not in ("smtp", "smtps"):
            raise ValueError("DELIVERY_RELAY_URL must start with smtp://, smtps:// or file://")
        if not parts.hostname:
            raise ValueError("DELIVERY_RELAY_URL names no host")
        options = {name: values[-1] for name, values in parse_qs(parts.query).items()}
        unknown = set(options) - {"ca", "tls"}
        if unknown:
            raise ValueError(f"DELIVERY_RELAY_URL: unknown option(s) {', '.join(sorted(unknown))} (known: ca, tls)")
        kind = parts.scheme
        if options.get("tls") == "none":
            if parts.scheme != "smtp" or parts.hostname not in LOOPBACK_HOSTS:
                raise ValueError(
                    "DELIVERY_RELAY_URL: tls=none is only for smtp:// to a sink on this machine (127.0.0.1)"
                )
            kind = "plain"
        elif "tls" in options:
            raise ValueError("DELIVERY_RELAY_URL: tls may only be none")
        try:
            port = parts.port or (465 if kind == "smtps" else 587)
        except ValueError as error:
            raise ValueError(f"DELIVERY_RELAY_URL: {error}") from None
        ca = Path(options["ca"]) if "ca" in options else None
        return cls(
            kind,
            host=parts.hostname,
            port=port,
            username=unquote(parts.username or ""),
            password=unquote(parts.password or ""),
            ca_file=ca if ca is None or ca.is_absolute() else base_dir / ca,
        )

    def describe(self) -> str:
        if self.kind == "file":
            return f"files in {self.outbox}"
        security = {"smtp": "STARTTLS required", "smtps": "implicit TLS", "plain": "no TLS (loopback sink)"}[self.kind]
        login = f", AUTH as {self.username}" if self.username else ""
        return f"{self.host}:{self.port} ({security}{login})"

    def tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context


@dataclass(frozen=True, slots=True)
class RecipientResult:
    address: str
    status: RecipientStatus  # delivered, deferred or bounced
    code: int | None
    enhanced_code: str
    reply: str


@dataclass(frozen=True, slots=True)
class MessageResult:
    """What one delivery of one message to its recipients came to."""

    recipients: list[RecipientResult]
    started: float  # time.time()
    duration: float
    upstream: str
    tls_version: str = ""
    tls_cipher: str = ""


def reply_text(code: int | None, message: bytes | str) -> tuple[str, str]:
    """(enhanced code, the reply made printable and truncated) of an upstream reply."""
    raw = message if isinstance(message, bytes) else message.encode("utf-8", "replace")
    text = printable(raw.replace(b"\n", b" ").replace(b"\r", b""), REPLY_LIMIT - 4)
    found = _ENHANCED.match(text)
    return (found.group(1) if found else ""), (f"{code} {text}" if code is not None else text)


def _result(address: str, code: int | None, message: bytes | str, temporary: bool | None = None) -> RecipientResult:
    enhanced, text = reply_text(code, message)
    if temporary is None:
        temporary = code is None or code < 500
    if code is not None and 200 <= code < 300:
        status = RecipientStatus.DELIVERED
    else:
        status = RecipientStatus.DEFERRED if temporary else RecipientStatus.BOUNCED
    return RecipientResult(address, status, code, enhanced, text)


class Upstream:
    """One connection to the relay target, opened on first use and reused."""

    def __init__(self, target: RelayTarget, helo_name: str, connect_timeout: float, command_timeout: float) -> None:
        self.target = target
        self.helo_name = helo_name
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self._smtp: smtplib.SMTP | None = None
        self._sent_on_connection = 0
        self._context = target.tls_context() if target.kind in ("smtp", "smtps") else None

    def close(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            try:
                smtp.quit()
            except (smtplib.SMTPException, OSError):
                smtp.close()

    def send(self, queue_id: str, sender: str, recipients: list[str], content: bytes) -> MessageResult:
        started, clock = time.time(), time.monotonic()
        if self.target.kind == "file":
            results = self._write_files(queue_id, recipients, content)
            return MessageResult(results, started, time.monotonic() - clock, f"file {self.target.outbox}")
        upstream = f"{self.target.host}:{self.target.port}"
        try:
            smtp = self._connection()
            results = self._transaction(smtp, sender, recipients, content)
        except smtplib.SMTPResponseException as error:  # refused at greeting, STARTTLS or AUTH
            self._drop()
            results = [_result(address, error.smtp_code, error.smtp_error, temporary=True) for address in recipients]
        except (smtplib.SMTPException, OSError) as error:  # refused, dropped, timed out, TLS failed
            self._drop()
            results = [_result(address, None, _describe(error)) for address in recipients]
        tls_version, tls_cipher = self._tls()
        return MessageResult(results, started, time.monotonic() - clock, upstream, tls_version, tls_cipher)

    def _connection(self) -> smtplib.SMTP:
        if self._smtp is not None:
            return self._smtp
        target = self.target
        smtp: smtplib.SMTP
        if target.kind == "smtps":
            smtp = smtplib.SMTP_SSL(
                target.host,
                target.port,
                local_hostname=self.helo_name,
                timeout=self.connect_timeout,
                context=self._context,
            )
        else:
            smtp = smtplib.SMTP(target.host, target.port, local_hostname=self.helo_name, timeout=self.connect_timeout)
        try:
            if smtp.sock is not None:
                smtp.sock.settimeout(self.command_timeout)
            smtp.ehlo()
            if target.kind == "smtp":
                if not smtp.has_extn("starttls"):
                    raise smtplib.SMTPResponseException(454, b"4.7.0 upstream does not offer STARTTLS (required)")
                smtp.starttls(context=self._context)
                smtp.ehlo()
            if target.username:
                smtp.login(target.username, target.password)
        except BaseException:
            smtp.close()
            raise
        self._smtp, self._sent_on_connection = smtp, 0
        return smtp

    def _transaction(
        self, smtp: smtplib.SMTP, sender: str, recipients: list[str], content: bytes
    ) -> list[RecipientResult]:
        if self._sent_on_connection:
            smtp.rset()  # between messages on one connection
        self._sent_on_connection += 1
        code, message = smtp.mail(sender)
        if code != 250:
            return [_result(address, code, message) for address in recipients]
        decided: dict[str, RecipientResult] = {}
        accepted: list[str] = []
        for address in recipients:
            code, message = smtp.rcpt(address)
            if code in (250, 251):
                accepted.append(address)
            else:
                decided[address] = _result(address, code, message)
        if accepted:
            reply: bytes | str
            try:
                code, reply = smtp.data(content)
            except smtplib.SMTPDataError as refused:  # DATA itself refused (no 354)
                code, reply = refused.smtp_code, refused.smtp_error
            for address in accepted:
                decided[address] = _result(address, code, reply)
        return [decided[address] for address in recipients]

    def _tls(self) -> tuple[str, str]:
        sock = self._smtp.sock if self._smtp is not None else None
        if isinstance(sock, ssl.SSLSocket):
            cipher = sock.cipher()
            return sock.version() or "", (cipher[0] if cipher else "")[:64]
        return "", ""

    def _drop(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            smtp.close()

    def _write_files(self, queue_id: str, recipients: list[str], content: bytes) -> list[RecipientResult]:
        outbox = self.target.outbox
        assert outbox is not None
        outbox.mkdir(parents=True, exist_ok=True)
        results = []
        for address in recipients:
            name = f"{queue_id}.{hashlib.sha256(address.encode('utf-8', 'surrogateescape')).hexdigest()[:16]}.eml"
            partial = outbox / f".{name}.tmp"
            try:
                with open(partial, "wb") as file:
                    file.write(content)
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(partial, outbox / name)
            except OSError as error:
                results.append(_result(address, None, f"writing {name}: {error.strerror or error}"))
                continue
            results.append(RecipientResult(address, RecipientStatus.DELIVERED, None, "", f"written to {name}"))
        return results


def _describe(error: BaseException) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(error, smtplib.SMTPServerDisconnected):  # smtplib's word for a read that failed
        return "timed out" if "timed out" in str(error) else "connection lost"
    if isinstance(error, ssl.SSLError):
        return f"TLS failed: {error.reason or error}"
    return f"{type(error).__name__}: {error}"
