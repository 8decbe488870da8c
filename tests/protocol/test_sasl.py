"""SASL shared by the engines: nginx's base64 rules, the salt, and each mechanism's exchange."""

from __future__ import annotations

import re
import time

import pytest

from mailgate.protocol.credentials import AuthMethod
from mailgate.protocol.sasl import (
    PASSWORD_CHALLENGE,
    USERNAME_CHALLENGE,
    SaslDone,
    SaslExchange,
    SaslInvalid,
    SaslPrompt,
    decode_base64,
    encode_base64,
    make_salt,
)

SALT = b"<1.2@mx.example>"


def _salt() -> bytes:
    return SALT


def exchange(*, cram_md5: bool = True, external: bool = True) -> SaslExchange:
    return SaslExchange(cram_md5=cram_md5, external=external)


@pytest.mark.parametrize(
    ("encoded", "decoded"),
    [
        (b"", b""),
        (b"dXNlcg==", b"user"),
        (b"dXNlcg", b"user"),  # padding is optional
        (b"dXNlcg=garbage!", b"user"),  # everything from the first '=' is ignored
        (b"dXNlcg==dXNlcg==", b"user"),
        (b"dXNlch==", b"user"),  # stray low bits of the last character are dropped
        (b"+/+/", b"\xfb\xff\xbf"),
        (b"=", b""),
    ],
)
def test_decode_base64_follows_nginx(encoded: bytes, decoded: bytes) -> None:
    assert decode_base64(encoded) == decoded


@pytest.mark.parametrize("encoded", [b"d", b"dXNlc", b"dX Ng", b"dXN*", b"-_-_", b"dXNl\r\n", b"*"])
def test_decode_base64_rejects_what_nginx_rejects(encoded: bytes) -> None:
    assert decode_base64(encoded) is None


def test_encode_base64_pads() -> None:
    assert encode_base64(b"<1.2@x>") == b"PDEuMkB4Pg=="


def test_make_salt_is_random_dot_unix_time_at_server_name() -> None:
    before = int(time.time())
    salt = make_salt("mail.example.com")
    match = re.fullmatch(rb"<(\d+)\.(\d+)@mail\.example\.com>", salt)
    assert match is not None
    assert 0 <= int(match[1]) < 2**31
    assert before <= int(match[2]) <= int(time.time())


def test_make_salt_differs_between_calls() -> None:
    assert len({make_salt("x") for _ in range(20)}) > 1


def test_plain_with_initial_response_ignores_authzid() -> None:
    assert exchange().start([b"PLAIN", encode_base64(b"admin\0bob\0pw")], _salt) == SaslDone(
        AuthMethod.PLAIN, b"bob", b"pw"
    )


def test_plain_password_keeps_nul_bytes_and_may_be_empty() -> None:
    assert exchange().start([b"plain", encode_base64(b"\0bob\0p\0w")], _salt) == SaslDone(
        AuthMethod.PLAIN, b"bob", b"p\0w"
    )
    assert exchange().start([b"PLAIN", encode_base64(b"\0bob\0")], _salt) == SaslDone(
        AuthMethod.PLAIN, b"bob", b""
    )


@pytest.mark.parametrize(
    ("plain", "log"),
    [
        (b"bob", b"client sent invalid login in AUTH PLAIN command"),
        (b"bob\0", b"client sent invalid login in AUTH PLAIN command"),
        (b"", b"client sent invalid login in AUTH PLAIN command"),
        (b"\0bob", b"client sent invalid password in AUTH PLAIN command"),
    ],
)
def test_plain_needs_two_nul_bytes(plain: bytes, log: bytes) -> None:
    assert exchange().start([b"PLAIN", encode_base64(plain)], _salt) == SaslInvalid(log)


def test_plain_without_initial_response_prompts_empty() -> None:
    sasl = exchange()
    assert sasl.start([b"PLAIN"], _salt) == SaslPrompt(b"")
    assert sasl.active
    assert sasl.respond(encode_base64(b"\0a\0b")) == SaslDone(AuthMethod.PLAIN, b"a", b"b")
    assert not sasl.active


def test_login_asks_username_then_password() -> None:
    sasl = exchange()
    assert sasl.start([b"LOGIN"], _salt) == SaslPrompt(USERNAME_CHALLENGE)
    assert sasl.respond(b"Ym9i") == SaslPrompt(PASSWORD_CHALLENGE)
    assert sasl.respond(b"cHc=") == SaslDone(AuthMethod.PLAIN, b"bob", b"pw")


def test_login_with_initial_username() -> None:
    sasl = exchange()
    assert sasl.start([b"login", b"Ym9i"], _salt) == SaslPrompt(PASSWORD_CHALLENGE)
    assert sasl.respond(b"") == SaslDone(AuthMethod.PLAIN, b"bob", b"")


@pytest.mark.parametrize("step", [0, 1])
def test_login_bad_base64_ends_the_exchange(step: int) -> None:
    sasl = exchange()
    sasl.start([b"LOGIN"], _salt)
    if step:
        sasl.respond(b"Ym9i")
    assert sasl.respond(b"*") == SaslInvalid(b"client sent invalid base64 encoding in AUTH LOGIN command")
    assert not sasl.active


def test_cram_md5_challenges_with_the_salt_and_splits_at_the_first_space() -> None:
    sasl = exchange()
    assert sasl.start([b"CRAM-MD5"], _salt) == SaslPrompt(encode_base64(SALT))
    digest = b"0123456789abcdef0123456789abcdef"
    assert sasl.respond(encode_base64(b"bob " + digest)) == SaslDone(
        AuthMethod.CRAM_MD5, b"bob", digest, SALT
    )


def test_cram_md5_digest_is_checked_for_length_only() -> None:
    sasl = exchange()
    sasl.start([b"CRAM-MD5"], _salt)
    digest = (b"not hex, with spaces " * 2)[:32]
    assert sasl.respond(encode_base64(b"bob " + digest)) == SaslDone(
        AuthMethod.CRAM_MD5, b"bob", digest, SALT
    )


@pytest.mark.parametrize("response", [b"bob", b"bob 0123", b"bob " + b"0" * 33, b"0" * 32])
def test_cram_md5_needs_a_space_and_a_32_character_digest(response: bytes) -> None:
    sasl = exchange()
    sasl.start([b"CRAM-MD5"], _salt)
    assert sasl.respond(encode_base64(response)) == SaslInvalid(
        b"client sent invalid CRAM-MD5 hash in AUTH CRAM-MD5 command"
    )


def test_cram_md5_response_without_space_is_invalid_even_after_an_earlier_valid_digest() -> None:
    sasl = exchange()
    sasl.start([b"CRAM-MD5"], _salt)
    sasl.respond(encode_base64(b"bob " + b"0" * 32))
    sasl.start([b"CRAM-MD5"], _salt)
    assert isinstance(sasl.respond(encode_base64(b"x" * 40)), SaslInvalid)


def test_external_with_and_without_initial_response() -> None:
    assert exchange().start([b"EXTERNAL", b"Ym9i"], _salt) == SaslDone(AuthMethod.EXTERNAL, b"bob")
    sasl = exchange()
    assert sasl.start([b"external"], _salt) == SaslPrompt(USERNAME_CHALLENGE)
    assert sasl.respond(b"") == SaslDone(AuthMethod.EXTERNAL, b"")


@pytest.mark.parametrize(
    "args",
    [
        [b"CRAM-MD5"],
        [b"EXTERNAL"],
        [b"EXTERNAL", b"Ym9i"],
    ],
)
def test_cram_md5_and_external_need_enabling(args: list[bytes]) -> None:
    assert exchange(cram_md5=False, external=False).start(args, _salt) == SaslInvalid()


@pytest.mark.parametrize(
    "args",
    [
        [],
        [b"XOAUTH2", b"x"],
        [b"PLAIN", b"a", b"b"],
        [b"LOGIN", b"a", b"b"],
        [b"CRAM-MD5", b"x"],
        [b"EXTERNAL", b"a", b"b"],
        [b"PLAI"],
        [b"CRAM-MD55"],
    ],
)
def test_unknown_mechanisms_and_extra_arguments_are_invalid_without_log(args: list[bytes]) -> None:
    assert exchange().start(args, _salt) == SaslInvalid()


def test_respond_without_an_exchange_is_invalid() -> None:
    assert exchange().respond(b"Ym9i") == SaslInvalid()


def test_reset_abandons_the_exchange() -> None:
    sasl = exchange()
    sasl.start([b"LOGIN", b"Ym9i"], _salt)
    sasl.reset()
    assert not sasl.active
    assert sasl.respond(b"cHc=") == SaslInvalid()


def test_cram_md5_salt_is_asked_for_lazily() -> None:
    asked: list[bool] = []

    def salt() -> bytes:
        asked.append(True)
        return SALT

    sasl = SaslExchange(cram_md5=True, external=False)
    sasl.start([b"PLAIN", encode_base64(b"\0a\0b")], salt)
    assert not asked
    sasl.start([b"CRAM-MD5"], salt)
    assert asked == [True]
    # the reply is paired with the challenge's salt, without asking again
    assert sasl.respond(encode_base64(b"bob " + b"0" * 32)) == SaslDone(
        AuthMethod.CRAM_MD5, b"bob", b"0" * 32, SALT
    )
    assert asked == [True]
