"""apikeys.keys: generation, shape, digest, verification."""

from __future__ import annotations

import hashlib

from apikeys import keys


def test_generated_keys_have_the_documented_shape_and_are_distinct() -> None:
    generated = {keys.generate_key() for _ in range(200)}
    assert len(generated) == 200
    for key in generated:
        assert len(key) == 43 and key.startswith("am_") and keys.is_well_formed(key)


def test_shape() -> None:
    assert keys.is_well_formed("am_" + "a" * 32) and keys.is_well_formed("am_" + "Z9" * 32)
    for bad in ("am_" + "a" * 31, "am_" + "a" * 65, "am_invalidkey", "xx_" + "a" * 40, "am_" + "a" * 39 + "-", ""):
        assert not keys.is_well_formed(bad)


def test_digest_is_plain_sha256_independent_of_secret_key(settings) -> None:  # type: ignore[no-untyped-def]
    key = "am_validkey12345678901234567890123456"
    before = keys.digest_key(key)
    settings.SECRET_KEY = "rotated"
    assert keys.digest_key(key) == before == hashlib.sha256(key.encode()).hexdigest()


def test_verify() -> None:
    key = keys.generate_key()
    stored = keys.digest_key(key)
    assert keys.verify_key(key, stored)
    assert not keys.verify_key(key[:-1] + ("A" if key[-1] != "A" else "B"), stored)


def test_visible_prefix() -> None:
    assert keys.visible_prefix("am_validkey12345678901234567890123456") == "am_validke"
