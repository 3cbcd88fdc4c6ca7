"""DKIM signing: keys made as dkimpy takes them, and RSA done by OpenSSL giving
dkimpy's very bytes (RSASSA-PKCS1-v1_5 is deterministic)."""

from __future__ import annotations

import hashlib

import dkim
import dkim.crypto

from delivery.signing import SigningKey, dkimpy_rsa_sign, new_key, openssl_rsa_sign, sign

MESSAGE = (
    b"From: test@agentmail.dev\r\nTo: a@example.com\r\nSubject: hi\r\nMessage-ID: <1@agentmail.dev>\r\n\r\nhello\r\n"
)


def test_openssl_gives_the_signature_dkimpy_would() -> None:
    private, _ = new_key("rsa-sha256")
    parsed = dkim.crypto.parse_pem_private_key(private.encode())
    for algorithm in (hashlib.sha256, hashlib.sha1):
        digest = algorithm(b"the headers dkimpy hashed")
        assert openssl_rsa_sign(digest.copy(), parsed) == dkimpy_rsa_sign(digest.copy(), parsed)


def test_both_kinds_of_key_sign_what_dkimpy_verifies() -> None:
    for algorithm, kind in (("rsa-sha256", "rsa"), ("ed25519-sha256", "ed25519")):
        private, public = new_key(algorithm)
        signatures, used = sign(MESSAGE, [SigningKey("agentmail.dev", "s1", algorithm, private.encode())])
        assert used == [f"s1 ({algorithm})"]
        record = f"v=DKIM1; k={kind}; p={public}".encode()
        assert dkim.verify(signatures + MESSAGE, dnsfunc=lambda name, timeout=5, record=record: record)
        assert not dkim.verify(
            signatures + MESSAGE.replace(b"hello", b"hullo"), dnsfunc=lambda name, timeout=5, record=record: record
        )
