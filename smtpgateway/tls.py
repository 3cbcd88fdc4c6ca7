"""TLS for the gateway: the server context, reloading certificates, what a session
negotiated, and a self-signed certificate for development.

Reloading works in place: both listeners (STARTTLS and implicit TLS) share one
``ssl.SSLContext``, and a new chain is first loaded into a scratch context to
validate it, then into the live one. OpenSSL uses a context's current certificate
for each new handshake, so new sessions get the new certificate, sessions already
established keep theirs, and a bad file leaves the old certificate in service.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

log = logging.getLogger(__name__)

MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


@dataclass(frozen=True, slots=True)
class TlsInfo:
    """What one session negotiated."""

    version: str
    cipher: str
    bits: int

    @classmethod
    def of(cls, transport: asyncio.BaseTransport) -> TlsInfo | None:
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None:
            return None
        name, _, bits = ssl_object.cipher() or ("unknown", "", 0)
        return cls(ssl_object.version() or "unknown", name, bits or 0)

    def received_note(self) -> str:
        """The comment Postfix-style ``Received:`` headers carry."""
        return f"(using {self.version} with cipher {self.cipher} ({self.bits}/{self.bits} bits))"


@dataclass(frozen=True, slots=True)
class CertificateSummary:
    subject: str
    serial: int
    not_after: dt.datetime

    @classmethod
    def of_file(cls, cert_file: Path) -> CertificateSummary:
        certificate = x509.load_pem_x509_certificate(cert_file.read_bytes())
        return cls(certificate.subject.rfc4514_string(), certificate.serial_number, certificate.not_valid_after_utc)

    def __str__(self) -> str:
        return f"{self.subject}, serial {self.serial:x}, expires {self.not_after:%Y-%m-%d}"


def _new_context(min_version: str) -> ssl.SSLContext:
    if min_version not in MIN_VERSIONS:
        raise ValueError(f"SMTP_TLS_MIN_VERSION must be one of {', '.join(MIN_VERSIONS)}, not {min_version!r}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MIN_VERSIONS[min_version]
    # Submission clients do not present certificates; we do not ask for one.
    context.verify_mode = ssl.CERT_NONE
    return context


class CertificateStore:
    """The live server context, and its certificate's reloading."""

    def __init__(self, cert_file: Path, key_file: Path, min_version: str = "1.2") -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.min_version = min_version
        self.context = _new_context(min_version)
        self.context.load_cert_chain(cert_file, key_file)
        self.summary = CertificateSummary.of_file(cert_file)

    def reload(self) -> bool:
        """Re-read the files. Returns False (and keeps serving the old certificate)
        if they do not load."""
        try:
            _new_context(self.min_version).load_cert_chain(self.cert_file, self.key_file)
            summary = CertificateSummary.of_file(self.cert_file)
            self.context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError, ValueError) as error:
            log.error("TLS certificate not reloaded, still serving the previous one: %s", error)
            return False
        self.summary = summary
        log.info("TLS certificate reloaded: %s", summary)
        return True


def write_self_signed(cert_file: Path, key_file: Path, hostname: str, days: int = 365) -> CertificateSummary:
    """A self-signed certificate for development, valid for ``hostname``,
    localhost and 127.0.0.1. The key file is written readable by its owner only."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = dt.datetime.now(dt.timezone.utc)
    alt_names: list[x509.GeneralName] = [x509.DNSName(hostname), x509.DNSName("localhost")]
    alt_names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.touch(mode=0o600, exist_ok=True)
    key_file.chmod(0o600)
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return CertificateSummary.of_file(cert_file)
