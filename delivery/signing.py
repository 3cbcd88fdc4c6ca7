"""DKIM signing with dkimpy, and making keys.

A domain may have an RSA (2048 bits) and an Ed25519 key active at once; then
both signatures are added, as Stalwart does, so that receivers that know only
RSA still verify one. Signed at delivery time, relaxed/relaxed, ``d=`` the From
domain (so DMARC aligns). A message whose domain has no active key goes out
unsigned, and its delivery attempts say so.
"""

from __future__ import annotations

import base64
import functools
from dataclasses import dataclass, field
from typing import Any

import dkim
import dkim.crypto
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from delivery.states import DkimAlgorithm

# Signed when present: who it is from and to, what it is, and its structure.
SIGNED_HEADERS = [
    b"from", b"sender", b"reply-to", b"subject", b"date", b"message-id", b"to", b"cc",
    b"mime-version", b"content-type", b"content-transfer-encoding", b"in-reply-to", b"references",
]  # fmt: skip


@dataclass(frozen=True)
class SigningKey:
    domain: str
    selector: str
    algorithm: str
    private_key: bytes = field(repr=False)  # PEM (RSA) or the base64 seed (Ed25519), as dkimpy takes it


# dkimpy computes RSA signatures with Python's own big-number pow(): several
# milliseconds of a sender thread, holding the GIL, per signature (figures in
# docs/performance.md). RSASSA-PKCS1-v1_5 is deterministic, so OpenSSL's
# operation gives the very same bytes, faster and without the GIL; dkimpy still
# does everything else (canonicalization, the header, Ed25519).
# tests/unit/test_signing.py checks that both give the same signature.
_PREHASHED = {"sha256": Prehashed(hashes.SHA256()), "sha1": Prehashed(hashes.SHA1())}


@functools.lru_cache(maxsize=64)
def _openssl_key(modulus: int, public_exponent: int, private_exponent: int, p: int, q: int) -> rsa.RSAPrivateKey:
    numbers = rsa.RSAPrivateNumbers(
        p, q, private_exponent, rsa.rsa_crt_dmp1(private_exponent, p), rsa.rsa_crt_dmq1(private_exponent, q),
        rsa.rsa_crt_iqmp(p, q), rsa.RSAPublicNumbers(public_exponent, modulus),
    )  # fmt: skip
    return numbers.private_key()


# OpenSSL keys by the parsed key dkimpy hands over: the same dict object for a
# key every time (the PEM parse is cached below), and hashing its five 2048-bit
# numbers for _openssl_key's cache on every signature cost 5% of the sender's time.
_by_parsed_key: dict[int, tuple[dict[str, int], rsa.RSAPrivateKey]] = {}


def openssl_rsa_sign(digest: Any, private_key: dict[str, int]) -> bytes:
    """dkimpy's ``RSASSA_PKCS1_v1_5_sign(hash, private_key)``, done by OpenSSL."""
    entry = _by_parsed_key.get(id(private_key))
    if entry is None or entry[0] is not private_key:  # new, or an id reused by another dict
        if len(_by_parsed_key) >= 64:
            _by_parsed_key.clear()
        key = _openssl_key(
            private_key["modulus"], private_key["publicExponent"], private_key["privateExponent"],
            private_key["prime1"], private_key["prime2"],
        )  # fmt: skip
        entry = _by_parsed_key[id(private_key)] = (private_key, key)
    return entry[1].sign(digest.digest(), padding.PKCS1v15(), _PREHASHED[digest.name.lower()])


dkimpy_rsa_sign = dkim.crypto.RSASSA_PKCS1_v1_5_sign
dkim.RSASSA_PKCS1_v1_5_sign = openssl_rsa_sign  # the name dkimpy's signer calls
# dkimpy also parses the PEM key (ASN.1, in Python) on every signature: the same
# few keys, parsed once each. The parsed key is only read.
dkim.parse_pem_private_key = functools.lru_cache(maxsize=64)(dkim.crypto.parse_pem_private_key)


def new_key(algorithm: str) -> tuple[str, str]:
    """(private key as stored, public key as published in p=) for ``algorithm``."""
    if algorithm == DkimAlgorithm.RSA_SHA256:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        private = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        ).decode("ascii")
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return private, base64.b64encode(public).decode("ascii")
    if algorithm == DkimAlgorithm.ED25519_SHA256:
        seed = ed25519.Ed25519PrivateKey.generate()
        private_raw = seed.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        public_raw = seed.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return base64.b64encode(private_raw).decode("ascii"), base64.b64encode(public_raw).decode("ascii")
    raise ValueError(f"algorithm must be rsa-sha256 or ed25519-sha256, not {algorithm!r}")


def sign(content: bytes, keys: list[SigningKey]) -> tuple[bytes, list[str]]:
    """The DKIM-Signature header lines for ``content``, one per key, and the
    selectors used."""
    signatures = b""
    for key in keys:
        signatures += dkim.sign(
            content,
            key.selector.encode("ascii"),
            key.domain.encode("ascii"),
            key.private_key,
            canonicalize=(b"relaxed", b"relaxed"),
            signature_algorithm=key.algorithm.encode("ascii"),
            include_headers=SIGNED_HEADERS,
        )
    return signatures, [f"{key.selector} ({key.algorithm})" for key in keys]
