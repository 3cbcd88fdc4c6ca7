"""TLS for the gateway: the server context, reloading certificates, what a session
negotiated, and a self-signed certificate for development.

Both listeners (STARTTLS and implicit TLS) hand their handshakes to one
listening ``ssl.SSLContext``, which never holds a certificate of its own choosing:
at each ClientHello its servername callback (called with or without SNI) moves
the handshake to the context of the certificate now in service. A reload builds a
fresh context from the files and, once it has loaded, puts it in service. So new
sessions get exactly the certificate in the files, whatever its key type; sessions
already established keep theirs; a file that does not load changes nothing.

Loading the new pair into the live context instead would not do: an OpenSSL
context holds one certificate per key type, so an RSA pair loaded into a context
holding an EC pair is added beside it, and clients that accept ECDSA keep being
served the old certificate.
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
from cryptography.hazmat.primitives.asymmetric import ec, rsa
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
    """The listening context, and the certificate in service behind it."""

    def __init__(self, cert_file: Path, key_file: Path, min_version: str = "1.2") -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.min_version = min_version
        self._serving = self._load()
        self.summary = CertificateSummary.of_file(cert_file)
        # The protocol version is settled on the context the handshake starts
        # on, so the listening context has the minimum too; it also holds the
        # first pair, for a client whose handshake never reaches the callback.
        self.context = _new_context(min_version)
        self.context.load_cert_chain(cert_file, key_file)
        self.context.sni_callback = self._serve_current

    def _load(self) -> ssl.SSLContext:
        context = _new_context(self.min_version)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def _serve_current(
        self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, context: ssl.SSLContext
    ) -> None:
        connection.context = self._serving

    def reload(self) -> bool:
        """Re-read the files. Returns False (and keeps serving the old certificate)
        if they do not load."""
        try:
            fresh = self._load()
            summary = CertificateSummary.of_file(self.cert_file)
        except (OSError, ssl.SSLError, ValueError) as error:
            log.error("TLS certificate not reloaded, still serving the previous one: %s", error)
            return False
        self._serving, self.summary = fresh, summary
        log.info("TLS certificate reloaded: %s", summary)
        return True


KeyType = str  # "ec" (P-256, as certbot issues by default) or "rsa" (2048 bits)


def write_self_signed(
    cert_file: Path, key_file: Path, hostname: str, days: int = 365, key_type: KeyType = "ec"
) -> CertificateSummary:
    """A self-signed certificate for development, valid for ``hostname``,
    localhost and 127.0.0.1. The key file is written readable by its owner only."""
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if key_type == "ec":
        key = ec.generate_private_key(ec.SECP256R1())
    elif key_type == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        raise ValueError(f"key type must be ec or rsa, not {key_type!r}")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = dt.datetime.now(dt.UTC)
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
