"""Stored password schemes of the shipped auth service, and the APOP / CRAM-MD5 digests."""

from __future__ import annotations

import base64
import hashlib
import warnings

import argon2
import bcrypt
import pytest

from mailgate.auth.passwords import apop_digest, cram_md5_digest, parse_stored_password
from mailgate.auth.sha_crypt import sha_crypt

SALT = b"0123saltSALT"
SHA512_CRYPT = (
    "$6$abcdefgh$ltjgWl6579NluT/Vi1nwEvcil.G5Nbc4NiXZaNGStk8PSwGfQv72N2CKPPrVACtLtip/cZ/1GM/O6IND4WQhG."
)
SHA256_CRYPT = "$5$abcdefgh$gruCpC7VkOTspMQTTSAR8mtlO9Upms.fwqE5y16JVM."


def stored_forms() -> list[str]:
    password = b"secret"
    return [
        "{PLAIN}secret",
        "{CLEAR}secret",
        "{SHA256}" + base64.b64encode(hashlib.sha256(password).digest()).decode(),
        "{SHA256.HEX}" + hashlib.sha256(password).hexdigest(),
        "{SSHA256}" + base64.b64encode(hashlib.sha256(password + SALT).digest() + SALT).decode(),
        "{SHA512}" + base64.b64encode(hashlib.sha512(password).digest()).decode(),
        "{SSHA512}" + base64.b64encode(hashlib.sha512(password + SALT).digest() + SALT).decode(),
        "{SHA512-CRYPT}" + SHA512_CRYPT,
        "{SHA256-CRYPT}" + SHA256_CRYPT,
        SHA512_CRYPT,
        "{BLF-CRYPT}" + bcrypt.hashpw(password, bcrypt.gensalt(4)).decode().replace("$2b$", "$2y$"),
        bcrypt.hashpw(password, bcrypt.gensalt(4)).decode(),
        "{ARGON2ID}" + argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash(password),
        argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash(password),
    ]


FORM_NAMES = [
    "plain", "clear", "sha256", "sha256-hex", "ssha256", "sha512", "ssha512", "sha512-crypt", "sha256-crypt",
    "bare-sha512-crypt", "blf-crypt-2y", "bare-bcrypt", "argon2id", "bare-argon2id",
]  # fmt: skip


@pytest.mark.parametrize("stored", stored_forms(), ids=FORM_NAMES)
def test_each_scheme_accepts_the_password_and_refuses_others(stored: str) -> None:
    parsed = parse_stored_password(stored)
    assert parsed.verify(b"secret")
    assert not parsed.verify(b"Secret")
    assert not parsed.verify(b"")


def test_only_plain_gives_the_plaintext_back() -> None:
    assert parse_stored_password("{PLAIN}pa ss").plaintext == b"pa ss"
    assert parse_stored_password("{SHA512-CRYPT}" + SHA512_CRYPT).plaintext is None


def test_password_text_never_appears_in_repr() -> None:
    assert "hunter2" not in repr(parse_stored_password("{PLAIN}hunter2"))


@pytest.mark.parametrize(
    ("stored", "message"),
    [
        ("{MD5}abc", 'unknown password scheme "{MD5}"'),
        ("{PLAIN", "unterminated password scheme"),
        ("{BLF-CRYPT}$6$abc$def", 'password of scheme "{BLF-CRYPT}" is not a valid hash'),
        ("secret", "password has no {SCHEME} prefix"),
    ],
)
def test_unknown_or_malformed_schemes_are_refused_with_a_reason(stored: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("}", r"\}")):
        parse_stored_password(stored)


def test_corrupt_digest_values_never_match() -> None:
    assert not parse_stored_password("{SHA256}not base64!").verify(b"secret")
    assert not parse_stored_password("{SSHA256}" + base64.b64encode(b"short").decode()).verify(b"secret")


def test_bcrypt_uses_the_first_72_bytes_like_every_bcrypt() -> None:
    long_password = b"x" * 80
    stored = parse_stored_password(bcrypt.hashpw(long_password[:72], bcrypt.gensalt(4)).decode())
    assert stored.verify(long_password)


@pytest.mark.parametrize("password", [b"", b"x", b"Hello world!", b"a" * 100, "pässwörd".encode()])
@pytest.mark.parametrize(
    "setting",
    [
        "$5$saltstring",
        "$6$saltstring",
        "$5$rounds=10000$saltstringsaltstring",
        "$6$rounds=1000$abc",
        "$6$toolongsaltstringXXXXX",
    ],
)
def test_sha_crypt_matches_the_system_crypt(password: bytes, setting: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        crypt = pytest.importorskip("crypt")
    assert sha_crypt(password, setting) == crypt.crypt(password.decode(), setting)


def test_sha_crypt_known_answers() -> None:
    assert sha_crypt(b"secret", "$6$abcdefgh") == SHA512_CRYPT
    assert sha_crypt(b"secret", SHA256_CRYPT) == SHA256_CRYPT


def test_apop_and_cram_md5_digests_match_the_rfc_examples() -> None:
    assert (
        apop_digest(b"<1896.697170952@dbc.mtview.ca.us>", b"tanstaaf") == "c4c9334bac560ecc979e58001b3e22fb"
    )
    assert (
        cram_md5_digest(b"<1896.697170952@postoffice.reston.mci.net>", b"tanstaaftanstaaf")
        == "b913a602c7eda7a495b4e6e7334d3890"
    )
