"""Stored password hashes in Dovecot's `{SCHEME}value` notation, and checking a password against them.

Schemes: `{PLAIN}` (also `{CLEAR}`, `{CLEARTEXT}`); `{SHA256}`, `{SSHA256}`, `{SHA512}`, `{SSHA512}`
(base64, or hex with a `.HEX` suffix); `{SHA256-CRYPT}`, `{SHA512-CRYPT}`, `{BLF-CRYPT}`, `{ARGON2ID}`,
`{ARGON2I}`. A value without `{SCHEME}` is recognised by its crypt prefix: `$2a$`/`$2b$`/`$2y$`,
`$argon2id$`/`$argon2i$`, `$5$`, `$6$`. Only `{PLAIN}` gives the plaintext back, which APOP, CRAM-MD5 and
backend logins without the client's password need.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass, field

import argon2
import bcrypt

from mailgate.auth.sha_crypt import verify_sha_crypt

_BCRYPT_MAX_PASSWORD = 72  # bcrypt only ever used the first 72 bytes; bcrypt>=5 refuses longer input
_DIGESTS = {"SHA256": "sha256", "SSHA256": "sha256", "SHA512": "sha512", "SSHA512": "sha512"}
_PLAIN_NAMES = {"PLAIN", "CLEAR", "CLEARTEXT"}
_CRYPT_PREFIXES = {
    "$2a$": "BLF-CRYPT",
    "$2b$": "BLF-CRYPT",
    "$2y$": "BLF-CRYPT",
    "$argon2id$": "ARGON2ID",
    "$argon2i$": "ARGON2I",
    "$5$": "SHA256-CRYPT",
    "$6$": "SHA512-CRYPT",
}
SCHEMES = frozenset({"PLAIN", *_DIGESTS, *set(_CRYPT_PREFIXES.values())})


@dataclass(frozen=True)
class StoredPassword:
    """One stored password: its canonical scheme name and the value after `{SCHEME}`."""

    scheme: str
    value: str = field(repr=False)
    hex_encoded: bool = False

    @property
    def plaintext(self) -> bytes | None:
        """The password itself for `{PLAIN}`, else None."""
        return self.value.encode() if self.scheme == "PLAIN" else None

    def verify(self, password: bytes) -> bool:
        """Whether `password` matches. Slow for bcrypt and argon2: call it off the event loop."""
        if self.scheme == "PLAIN":
            return hmac.compare_digest(self.value.encode(), password)
        if self.scheme in _DIGESTS:
            return self._verify_digest(password)
        if self.scheme == "BLF-CRYPT":
            try:
                return bcrypt.checkpw(password[:_BCRYPT_MAX_PASSWORD], self.value.encode())
            except ValueError:
                return False
        if self.scheme in ("ARGON2ID", "ARGON2I"):
            try:
                return argon2.PasswordHasher().verify(self.value, password)
            except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
                return False
        return verify_sha_crypt(password, self.value)

    def _verify_digest(self, password: bytes) -> bool:
        algorithm = _DIGESTS[self.scheme]
        try:
            if self.hex_encoded:
                raw = bytes.fromhex(self.value)
            else:
                raw = base64.b64decode(self.value, validate=True)
        except (ValueError, binascii.Error):
            return False
        size = hashlib.new(algorithm).digest_size
        digest, salt = raw[:size], raw[size:]
        salted = self.scheme.startswith("SSHA")
        if len(digest) != size or salted != bool(salt):
            return False
        return hmac.compare_digest(hashlib.new(algorithm, password + salt).digest(), digest)


def parse_stored_password(text: str) -> StoredPassword:
    """Read `{SCHEME}value` or a bare crypt hash. Raises ValueError naming an unknown or malformed scheme."""
    if text.startswith("{"):
        closing = text.find("}")
        if closing < 0:
            raise ValueError(f'unterminated password scheme "{text[:20]}"')
        name, value = text[1:closing].upper(), text[closing + 1 :]
        hex_encoded = False
        base, _, encoding = name.partition(".")
        if encoding and base in _DIGESTS and encoding in ("HEX", "B64", "BASE64"):
            name, hex_encoded = base, encoding == "HEX"
        if name in _PLAIN_NAMES:
            return StoredPassword("PLAIN", value)
        if name not in SCHEMES:
            raise ValueError(f'unknown password scheme "{{{text[1:closing]}}}"')
        if name in _CRYPT_PREFIXES.values() and _crypt_scheme(value) != name:
            raise ValueError(f'password of scheme "{{{name}}}" is not a valid hash')
        return StoredPassword(name, value, hex_encoded)
    scheme = _crypt_scheme(text)
    if scheme is None:
        raise ValueError("password has no {SCHEME} prefix and is no known crypt hash")
    return StoredPassword(scheme, text)


def _crypt_scheme(value: str) -> str | None:
    for prefix, scheme in _CRYPT_PREFIXES.items():
        if value.startswith(prefix):
            return scheme
    return None


def apop_digest(salt: bytes, password: bytes) -> str:
    """RFC 1939 APOP digest: hex MD5 of the greeting's timestamp and the password."""
    return hashlib.md5(salt + password, usedforsecurity=False).hexdigest()


def cram_md5_digest(salt: bytes, password: bytes) -> str:
    """RFC 2195 CRAM-MD5 response digest: hex HMAC-MD5 of the challenge, keyed with the password."""
    return hmac.new(password, salt, "md5").hexdigest()
