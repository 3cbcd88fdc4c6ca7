"""apikeys.keys: generation, shape, digest, verification."""

from __future__ import annotations

import hashlib
import re
import string
import zlib

from apikeys import keys


def test_generated_keys_have_the_documented_shape_and_are_distinct() -> None:
    generated = {keys.generate_key() for _ in range(200)}
    assert len(generated) == 200
    for key in generated:
        assert len(key) == 46 and key.startswith("amk_") and keys.is_well_formed(key)
        assert re.fullmatch(r"amk_[A-Za-z0-9]{42}", key)  # the expression docs/authentication.md gives scanners


def test_legacy_shape_still_accepted() -> None:
    assert keys.is_well_formed("am_" + "a" * 32) and keys.is_well_formed("am_" + "Z9" * 32)
    for bad in ("am_" + "a" * 31, "am_" + "a" * 65, "am_invalidkey", "xx_" + "a" * 40, "am_" + "a" * 39 + "-", ""):
        assert not keys.is_well_formed(bad)


def test_the_checksum_is_crc32_in_base62() -> None:
    key = keys.generate_key()
    body, check = key[:-6], key[-6:]
    value = 0
    for character in check:
        value = value * 62 + (string.digits + string.ascii_uppercase + string.ascii_lowercase).index(character)
    assert value == zlib.crc32(body.encode())
    assert not keys.has_bad_checksum(key)
    # Every single-character change of the random part or the checksum is caught.
    for position in range(4, len(key)):
        for other in "0aZ":
            changed = key[:position] + other + key[position + 1 :]
            if changed != key:
                assert keys.has_bad_checksum(changed) and not keys.is_well_formed(changed)
    assert not keys.has_bad_checksum("am_" + "a" * 40)  # the old shape has no checksum


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
