"""API key crypto: generate, recognise, digest and verify keys. No ORM here.

A key is ``am_`` followed by 40 random letters and digits from ``secrets``
(about 238 bits of entropy). Keys presented by clients may be 32 to 64 characters
after the prefix.

Why a plain SHA-256 and not a slow password hash: slow hashes exist to make
guessing low-entropy *passwords* expensive. A random 238-bit key cannot be guessed
whatever the hash costs, so a fast digest loses nothing and lets the gateway look a
key up by its digest with one indexed query per AUTH. The digest is unkeyed on
purpose: it must not depend on ``SECRET_KEY`` or any per-install secret, so that
fixtures and issued keys survive a secret rotation.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string

KEY_PREFIX = "am_"
KEY_RANDOM_LENGTH = 40
KEY_PATTERN = re.compile(r"am_[a-zA-Z0-9]{32,64}")
# How much of a key stays visible (in the admin, in AuthAttempt rows, in logs):
# "am_" and 7 more characters, leaving over 190 bits secret.
VISIBLE_PREFIX_LENGTH = 10

_ALPHABET = string.ascii_letters + string.digits


def generate_key() -> str:
    """Return a new plaintext key. Show it once; store only its digest."""
    return KEY_PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(KEY_RANDOM_LENGTH))


def is_well_formed(candidate: str) -> bool:
    """True if ``candidate`` has the shape of an API key (says nothing of validity)."""
    return KEY_PATTERN.fullmatch(candidate) is not None


def visible_prefix(key: str) -> str:
    """The part of a key that may be shown and stored next to its digest."""
    return key[:VISIBLE_PREFIX_LENGTH]


def digest_key(key: str) -> str:
    """Hex SHA-256 of the key: what the database stores and looks keys up by."""
    return hashlib.sha256(key.encode("ascii")).hexdigest()


def verify_key(key: str, stored_digest: str) -> bool:
    """Constant-time check of a plaintext key against a stored digest."""
    return hmac.compare_digest(digest_key(key), stored_digest)
