"""``manage.py smtpcheck``: one real SMTP conversation with a running gateway,
judged as a Nagios check (``docs/operations.md#monitoring``).

Connect (with TLS from the first byte for ``tls``), read the greeting, EHLO,
STARTTLS and EHLO again for ``starttls``, optionally AUTH PLAIN, QUIT. The
result is OK, WARNING (answered, but: slow, a certificate near its end, a 421
because the gateway is stopping or full) or CRITICAL (no connection, no answer, a
greeting or reply that refuses, TLS that fails or is not trusted, AUTH refused);
UNKNOWN is for a check that could not be run as asked. No ORM: a plain client.

The API key is held by :class:`CheckTarget` outside its ``repr`` and is sent
only inside the AUTH exchange; nothing here puts it in a message.
"""

from __future__ import annotations

import smtplib
import socket
import ssl
import time
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Literal

Security = Literal["plain", "starttls", "tls"]


class Status(IntEnum):
    """Nagios plugin exit codes."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


@dataclass(frozen=True)
class CheckTarget:
    host: str
    port: int
    security: Security = "plain"
    inbox: str | None = None
    key: str | None = field(default=None, repr=False)
    cafile: str | None = None  # trust this CA (or self-signed certificate) instead of the system's
    helo: str = field(default_factory=socket.gethostname)


@dataclass(frozen=True)
class Thresholds:
    timeout: float = 10.0  # seconds for each step: connecting, each reply
    warning: float = 2.0  # seconds for the whole conversation
    critical: float = 8.0
    certificate_days: float = 14.0  # WARNING when the certificate ends sooner


@dataclass(frozen=True)
class CheckResult:
    status: Status
    summary: str
    elapsed: float  # seconds from the connect to the last reply

    def line(self, thresholds: Thresholds) -> str:
        """The Nagios line: status, summary, and the time as performance data."""
        perfdata = f"time={self.elapsed:.3f}s;{thresholds.warning:g};{thresholds.critical:g};0"
        return f"SMTP {self.status.name} - {self.summary} | {perfdata}"


class Refused(Exception):
    """A step of the conversation failed; carries the status it earns."""

    def __init__(self, status: Status, summary: str) -> None:
        super().__init__(summary)
        self.status, self.summary = status, summary


def parse_address(text: str, default_port: int | None) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT``, or ``HOST`` alone with ``default_port``."""
    host, port = text, None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port = rest[1:]
        elif rest:
            raise ValueError(f"not HOST:PORT: {text!r}")
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not host:
        raise ValueError(f"no host in {text!r}")
    if port is None:
        if default_port is None:
            raise ValueError(f"no port in {text!r}")
        return host, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not a port: {port!r}")
    return host, int(port)


def local_address(listen_host: str) -> str:
    """Where to reach a gateway that listens on ``listen_host`` from this host."""
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(listen_host, listen_host)


def _reply(code: int, text: bytes | str) -> str:
    message = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    return f"{code} {' '.join(message.split())}".strip()


def _refusal(code: int, text: bytes | str, step: str) -> Refused:
    """A reply that is not what ``step`` needs: 421 is the gateway stopping or at
    a connection limit, so a WARNING; anything else is CRITICAL."""
    status = Status.WARNING if code == 421 else Status.CRITICAL
    return Refused(status, f"{step}: {_reply(code, text)}")


def _tls_failure(error: ssl.SSLError, step: str) -> Refused:
    if isinstance(error, ssl.SSLCertVerificationError):
        return Refused(Status.CRITICAL, f"{step}: certificate not trusted ({error.verify_message})")
    return Refused(Status.CRITICAL, f"{step}: TLS failed ({error.reason or error})")


def _days_left(client: smtplib.SMTP) -> float | None:
    sock = client.sock
    if not isinstance(sock, ssl.SSLSocket):
        return None
    certificate = sock.getpeercert()
    not_after = certificate.get("notAfter") if certificate else None
    if not isinstance(not_after, str):
        return None
    return (ssl.cert_time_to_seconds(not_after) - time.time()) / 86400


def _tls_version(client: smtplib.SMTP) -> str | None:
    sock = client.sock
    return sock.version() if isinstance(sock, ssl.SSLSocket) else None


def _ehlo(client: smtplib.SMTP, helo: str) -> None:
    code, text = client.ehlo(helo)
    if code != 250:
        raise _refusal(code, text, "EHLO refused")


def _connect(target: CheckTarget, context: ssl.SSLContext, timeout: float) -> smtplib.SMTP:
    """Connected, greeted with 220. (smtplib verifies TLS against the host it was
    constructed with, so it connects in its constructor.)"""
    try:
        if target.security == "tls":
            return smtplib.SMTP_SSL(target.host, target.port, target.helo, timeout=timeout, context=context)
        return smtplib.SMTP(target.host, target.port, target.helo, timeout=timeout)
    except smtplib.SMTPConnectError as error:
        raise _refusal(error.smtp_code, error.smtp_error, "greeting") from None
    except ssl.SSLError as error:
        raise _tls_failure(error, "implicit TLS") from None


@dataclass
class Conversation:
    """What a check found on its way: notes for the line, and WARNING reasons
    that do not stop it (so an AUTH refused after them is still CRITICAL)."""

    notes: list[str]
    warnings: list[str] = field(default_factory=list)


def _converse(target: CheckTarget, thresholds: Thresholds, found: Conversation) -> int:
    """The conversation; returns the last reply's code, or raises Refused."""
    context = ssl.create_default_context(cafile=target.cafile)
    client = _connect(target, context, thresholds.timeout)
    try:
        _ehlo(client, target.helo)
        last = 250
        if target.security == "starttls":
            if not client.has_extn("starttls"):
                raise Refused(Status.CRITICAL, "STARTTLS not offered")
            try:
                client.starttls(context=context)
            except smtplib.SMTPResponseException as error:
                raise _refusal(error.smtp_code, error.smtp_error, "STARTTLS refused") from None
            except ssl.SSLError as error:
                raise _tls_failure(error, "STARTTLS") from None
            _ehlo(client, target.helo)
        version, days = _tls_version(client), _days_left(client)
        if version:
            found.notes.append(f"{version} ({'implicit TLS' if target.security == 'tls' else 'STARTTLS'})")
        if days is not None:
            found.notes.append(f"certificate ends in {days:.0f} days")
            if days < thresholds.certificate_days:
                found.warnings.append(f"certificate ends in {days:.1f} days")
        if target.inbox is not None:
            last = _authenticate(client, target)
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            pass  # answered everything asked: a lost QUIT changes nothing
        return last
    finally:
        client.close()


def _authenticate(client: smtplib.SMTP, target: CheckTarget) -> int:
    if "PLAIN" not in client.esmtp_features.get("auth", "").upper().split():
        hint = "" if isinstance(client.sock, ssl.SSLSocket) else " (over plaintext: add --starttls or --tls)"
        raise Refused(Status.CRITICAL, f"AUTH PLAIN not offered{hint}")
    assert target.inbox is not None and target.key is not None
    client.user, client.password = target.inbox, target.key
    # One mechanism only: smtplib's login() would try LOGIN after a refused PLAIN,
    # a second failure on the client's count.
    try:
        code, text = client.auth("PLAIN", client.auth_plain)
    except smtplib.SMTPAuthenticationError as error:
        raise _refusal(error.smtp_code, error.smtp_error, "AUTH refused") from None
    finally:
        client.password = ""
    if code != 235:
        raise _refusal(code, text, "AUTH refused")
    return code


def check_smtp(target: CheckTarget, thresholds: Thresholds) -> CheckResult:
    """Talk to the gateway at ``target`` once and judge the conversation."""
    started = time.perf_counter()
    found = Conversation(notes=[f"{target.host}:{target.port}"])

    def result(status: Status, summary: str) -> CheckResult:
        elapsed = time.perf_counter() - started
        return CheckResult(status, f"{summary} in {elapsed * 1000:.0f} ms ({', '.join(found.notes)})", elapsed)

    try:
        code = _converse(target, thresholds, found)
    except Refused as refused:
        return result(refused.status, refused.summary)
    except TimeoutError:
        return result(Status.CRITICAL, f"no answer within {thresholds.timeout:g} s")
    except smtplib.SMTPServerDisconnected as error:
        # smtplib reports a reply that never came as a disconnect; its cause says which.
        if isinstance(error.__context__, TimeoutError):
            return result(Status.CRITICAL, f"no answer within {thresholds.timeout:g} s")
        return result(Status.CRITICAL, "connection closed by the server")
    except ssl.SSLError as error:
        return result(Status.CRITICAL, _tls_failure(error, "TLS").summary)
    except smtplib.SMTPException as error:
        return result(Status.CRITICAL, f"SMTP error: {type(error).__name__}")
    except OSError as error:
        return result(Status.CRITICAL, f"cannot connect: {error.strerror or type(error).__name__}")
    elapsed = time.perf_counter() - started
    if elapsed > thresholds.critical:
        return result(Status.CRITICAL, f"{code}, slower than {thresholds.critical:g} s")
    if elapsed > thresholds.warning:
        found.warnings.append(f"slower than {thresholds.warning:g} s")
    if found.warnings:
        return result(Status.WARNING, f"{code}, {'; '.join(found.warnings)},")
    return result(Status.OK, str(code))
