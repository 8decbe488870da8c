"""SASL as nginx's mail modules speak it before authentication: PLAIN, LOGIN, CRAM-MD5 and EXTERNAL.

Shared by the three engines: `SaslExchange` runs one `AUTHENTICATE`/`AUTH` exchange and tells the engine
what to answer (`SaslPrompt`: the text after `+ ` or `334 `), when credentials are complete (`SaslDone`),
or that the exchange failed (`SaslInvalid`: the protocol's invalid-command reply, not counted toward
`max_errors`). Base64 follows nginx's decoder, which is laxer than RFC 4648 in some ways and stricter in
others (see `decode_base64`).
"""

from __future__ import annotations

import binascii
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from mailgate.protocol.credentials import AuthMethod

USERNAME_CHALLENGE = b"VXNlcm5hbWU6"  # base64 of "Username:"
PASSWORD_CHALLENGE = b"UGFzc3dvcmQ6"  # base64 of "Password:"
CRAM_MD5_DIGEST_LENGTH = 32

_BASE64_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def make_salt(server_name: str) -> bytes:
    """A fresh `<R.T@server_name>` (R random below 2**31 like C `random()`, T Unix time), without CRLF."""
    return f"<{secrets.randbelow(2**31)}.{int(time.time())}@{server_name}>".encode()


def decode_base64(data: bytes) -> bytes | None:
    """nginx's base64 decoding, or None where nginx reports invalid encoding.

    Standard alphabet only; everything from the first `=` on is ignored; any other character outside the
    alphabet before it is invalid, as is a length of 1 modulo 4; padding is optional and stray low bits
    of the last character are dropped.
    """
    end = data.find(b"=")
    encoded = data if end < 0 else data[:end]
    if not _BASE64_ALPHABET.issuperset(encoded) or len(encoded) % 4 == 1:
        return None
    return binascii.a2b_base64(encoded + b"=" * (-len(encoded) % 4))


def encode_base64(data: bytes) -> bytes:
    """Standard base64 with padding, as nginx encodes challenges."""
    return binascii.b2a_base64(data, newline=False)


class _Step(Enum):
    """Where an exchange stands: which client line it waits for."""

    IDLE = "idle"
    LOGIN_USERNAME = "login username"
    LOGIN_PASSWORD = "login password"
    PLAIN = "plain"
    CRAM_MD5 = "cram-md5"
    EXTERNAL = "external"


@dataclass(frozen=True)
class SaslPrompt:
    """Send a continuation: the protocol's prefix, then `challenge`, then CRLF."""

    challenge: bytes


@dataclass(frozen=True)
class SaslDone:
    """The client's credentials are complete."""

    method: AuthMethod
    login: bytes
    password: bytes = field(default=b"", repr=False)
    salt: bytes | None = None


@dataclass(frozen=True)
class SaslInvalid:
    """The exchange failed; answer with the invalid-command reply (semantic: not counted).

    `log` is nginx's info message for the failure, or None when nginx logs nothing.
    """

    log: bytes | None = None


SaslStep = SaslPrompt | SaslDone | SaslInvalid


class SaslExchange:
    """One client's SASL state across `AUTH`/`AUTHENTICATE` commands and their continuation lines.

    `start`'s `salt` is called only when CRAM-MD5 needs the session's salt; it returns
    `<R.T@server_name>` without CRLF. It is given per call, not kept: an engine passing its own bound
    method would otherwise be in a reference cycle that only the cyclic collector frees. PLAIN and LOGIN
    are always accepted; CRAM-MD5 and EXTERNAL only when enabled.
    """

    __slots__ = ("_challenge_salt", "_cram_md5_enabled", "_external_enabled", "_login", "_step")

    def __init__(self, *, cram_md5: bool, external: bool) -> None:
        self._cram_md5_enabled = cram_md5
        self._external_enabled = external
        self._step = _Step.IDLE
        self._login = b""
        self._challenge_salt = b""

    @property
    def active(self) -> bool:
        """True while the client owes a continuation line."""
        return self._step is not _Step.IDLE

    def reset(self) -> None:
        """Abandon any exchange in progress (after an invalid command or a rejected attempt)."""
        self._step = _Step.IDLE
        self._login = b""

    def start(self, args: Sequence[bytes], salt: Callable[[], bytes]) -> SaslStep:
        """The arguments of `AUTH`/`AUTHENTICATE`: mechanism name, then an optional initial response."""
        if not args:
            return SaslInvalid()
        mechanism = args[0].upper()
        if mechanism == b"LOGIN" and len(args) <= 2:
            if len(args) == 1:
                return self._prompt(_Step.LOGIN_USERNAME, USERNAME_CHALLENGE)
            return self._login_username(args[1])
        if mechanism == b"PLAIN" and len(args) <= 2:
            if len(args) == 1:
                return self._prompt(_Step.PLAIN, b"")
            return self._finish(_decode_plain(args[1]))
        if mechanism == b"CRAM-MD5" and len(args) == 1 and self._cram_md5_enabled:
            self._challenge_salt = salt()
            return self._prompt(_Step.CRAM_MD5, encode_base64(self._challenge_salt))
        if mechanism == b"EXTERNAL" and len(args) <= 2 and self._external_enabled:
            if len(args) == 1:
                return self._prompt(_Step.EXTERNAL, USERNAME_CHALLENGE)
            return self._finish(_decode_external(args[1]))
        return SaslInvalid()

    def respond(self, line: bytes) -> SaslStep:
        """The first token of a continuation line (nginx ignores the rest of the line)."""
        step = self._step
        if step is _Step.LOGIN_USERNAME:
            return self._login_username(line)
        if step is _Step.LOGIN_PASSWORD:
            password = decode_base64(line)
            if password is None:
                return self._finish(SaslInvalid(_bad_base64("LOGIN")))
            return self._finish(SaslDone(AuthMethod.PLAIN, self._login, password))
        if step is _Step.PLAIN:
            return self._finish(_decode_plain(line))
        if step is _Step.CRAM_MD5:
            return self._finish(_decode_cram_md5(line, self._challenge_salt))
        if step is _Step.EXTERNAL:
            return self._finish(_decode_external(line))
        return SaslInvalid()

    def _prompt(self, step: _Step, challenge: bytes) -> SaslPrompt:
        self._step = step
        return SaslPrompt(challenge)

    def _login_username(self, encoded: bytes) -> SaslStep:
        login = decode_base64(encoded)
        if login is None:
            return self._finish(SaslInvalid(_bad_base64("LOGIN")))
        self._login = login
        return self._prompt(_Step.LOGIN_PASSWORD, PASSWORD_CHALLENGE)

    def _finish(self, step: SaslDone | SaslInvalid) -> SaslDone | SaslInvalid:
        self.reset()
        return step


def _bad_base64(mechanism: str) -> bytes:
    return f"client sent invalid base64 encoding in AUTH {mechanism} command".encode()


def _decode_plain(encoded: bytes) -> SaslDone | SaslInvalid:
    """`[authzid] NUL authcid NUL passwd`; the authzid is ignored, the password may hold NULs."""
    plain = decode_base64(encoded)
    if plain is None:
        return SaslInvalid(_bad_base64("PLAIN"))
    first = plain.find(b"\0")
    if first < 0 or first == len(plain) - 1:
        return SaslInvalid(b"client sent invalid login in AUTH PLAIN command")
    second = plain.find(b"\0", first + 1)
    if second < 0:
        return SaslInvalid(b"client sent invalid password in AUTH PLAIN command")
    return SaslDone(AuthMethod.PLAIN, plain[first + 1 : second], plain[second + 1 :])


def _decode_cram_md5(encoded: bytes, salt: bytes) -> SaslDone | SaslInvalid:
    """`user SP digest`, split at the first space; the digest must be 32 characters (hex is not checked)."""
    response = decode_base64(encoded)
    if response is None:
        return SaslInvalid(_bad_base64("CRAM-MD5"))
    login, space, digest = response.partition(b" ")
    if not space or len(digest) != CRAM_MD5_DIGEST_LENGTH:
        return SaslInvalid(b"client sent invalid CRAM-MD5 hash in AUTH CRAM-MD5 command")
    return SaslDone(AuthMethod.CRAM_MD5, login, digest, salt)


def _decode_external(encoded: bytes) -> SaslDone | SaslInvalid:
    login = decode_base64(encoded)
    if login is None:
        return SaslInvalid(_bad_base64("EXTERNAL"))
    return SaslDone(AuthMethod.EXTERNAL, login)
