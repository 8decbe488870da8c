"""SHA-256-crypt and SHA-512-crypt (`$5$`, `$6$`), as glibc's crypt(3) computes them.

Python's `crypt` module is deprecated (PEP 594) and gone in 3.13, so the algorithm (Ulrich Drepper's public
specification) is implemented here; it is small and needs only hashlib.
"""

from __future__ import annotations

import hashlib
import hmac

_ITOA64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_DEFAULT_ROUNDS = 5000
_MIN_ROUNDS = 1000
_MAX_ROUNDS = 999_999_999
_MAX_SALT = 16

# Byte order of the final encoding: groups of three digest bytes, each written as four characters.
_SHA256_ORDER = (
    (0, 10, 20), (21, 1, 11), (12, 22, 2), (3, 13, 23), (24, 4, 14),
    (15, 25, 5), (6, 16, 26), (27, 7, 17), (18, 28, 8), (9, 19, 29),
)  # fmt: skip
_SHA512_ORDER = (
    (0, 21, 42), (22, 43, 1), (44, 2, 23), (3, 24, 45), (25, 46, 4), (47, 5, 26), (6, 27, 48),
    (28, 49, 7), (50, 8, 29), (9, 30, 51), (31, 52, 10), (53, 11, 32), (12, 33, 54), (34, 55, 13),
    (56, 14, 35), (15, 36, 57), (37, 58, 16), (59, 17, 38), (18, 39, 60), (40, 61, 19), (62, 20, 41),
)  # fmt: skip


def sha_crypt(password: bytes, setting: str) -> str:
    """crypt(3) of `password` with a `$5$[rounds=N$]salt[$...]` or `$6$...` setting (a full hash works too).

    Raises ValueError for any other setting.
    """
    order: tuple[tuple[int, int, int], ...]
    tail: tuple[int, ...]
    if setting.startswith("$5$"):
        name, order, tail = "sha256", _SHA256_ORDER, (31, 30)
    elif setting.startswith("$6$"):
        name, order, tail = "sha512", _SHA512_ORDER, (63,)
    else:
        raise ValueError("not a SHA-crypt setting")
    prefix = setting[:3]
    rest = setting[3:]
    rounds = _DEFAULT_ROUNDS
    rounds_text = ""
    if rest.startswith("rounds="):
        count, _, rest = rest[len("rounds=") :].partition("$")
        if not count.isdigit():
            raise ValueError("invalid rounds in SHA-crypt setting")
        rounds = min(max(int(count), _MIN_ROUNDS), _MAX_ROUNDS)
        rounds_text = f"rounds={rounds}$"
    salt_text = rest.split("$", 1)[0][:_MAX_SALT]
    digest = _digest(name, password, salt_text.encode(), rounds)
    return f"{prefix}{rounds_text}{salt_text}${_encode(digest, order, tail)}"


def verify_sha_crypt(password: bytes, stored: str) -> bool:
    """Whether `password` hashes to `stored` (constant-time comparison)."""
    try:
        computed = sha_crypt(password, stored)
    except ValueError:
        return False
    return hmac.compare_digest(computed.encode(), stored.encode())


def _digest(name: str, password: bytes, salt: bytes, rounds: int) -> bytes:
    size = hashlib.new(name).digest_size
    alternate = hashlib.new(name, password + salt + password).digest()
    context = hashlib.new(name, password + salt)
    context.update(_repeat(alternate, len(password)))
    length = len(password)
    while length:
        context.update(alternate if length & 1 else password)
        length >>= 1
    result = context.digest()
    password_bytes = _repeat(hashlib.new(name, password * len(password)).digest(), len(password))
    salt_bytes = _repeat(hashlib.new(name, salt * (16 + result[0])).digest(), len(salt))
    for round_number in range(rounds):
        step = hashlib.new(name, password_bytes if round_number & 1 else result)
        if round_number % 3:
            step.update(salt_bytes)
        if round_number % 7:
            step.update(password_bytes)
        step.update(result if round_number & 1 else password_bytes)
        result = step.digest()
    assert len(result) == size
    return result


def _repeat(block: bytes, length: int) -> bytes:
    return (block * (length // len(block) + 1))[:length]


def _encode(digest: bytes, order: tuple[tuple[int, int, int], ...], tail: tuple[int, ...]) -> str:
    characters: list[str] = []
    for first, second, third in order:
        characters += _b64_from_24bit(digest[first], digest[second], digest[third], 4)
    if len(tail) == 2:
        characters += _b64_from_24bit(0, digest[tail[0]], digest[tail[1]], 3)
    else:
        characters += _b64_from_24bit(0, 0, digest[tail[0]], 2)
    return "".join(characters)


def _b64_from_24bit(high: int, middle: int, low: int, count: int) -> list[str]:
    word = (high << 16) | (middle << 8) | low
    characters = []
    for _ in range(count):
        characters.append(_ITOA64[word & 0x3F])
        word >>= 6
    return characters
