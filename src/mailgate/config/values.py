"""nginx's scalar value syntax: numbers, sizes, times and on/off, with nginx's exact acceptance rules.

Each parser returns None where nginx's C function returns NGX_ERROR; the caller words the error.
"""

from __future__ import annotations

MAX_INT = 2**63 - 1  # NGX_MAX_INT_T_VALUE on 64-bit Linux
MAX_C_INT = 2**31 - 1
PAGE_SIZE = 4096

_DIGITS = frozenset("0123456789")


def atoi(text: str) -> int | None:
    """ngx_atoi: ASCII digits only, no sign, not empty, at most 2**63 - 1."""
    if not text or not _DIGITS.issuperset(text):
        return None
    value = int(text)
    return value if value <= MAX_INT else None


def parse_size(text: str) -> int | None:
    """ngx_parse_size: a byte count with an optional `k`/`K` or `m`/`M` suffix (no `g`: nginx has none)."""
    scale = {"k": 1024, "K": 1024, "m": 1024 * 1024, "M": 1024 * 1024}.get(text[-1:], 1)
    digits = text[:-1] if scale > 1 else text
    value = atoi(digits)
    if value is None or value > MAX_INT // scale:
        return None
    return value * scale


# Unit letter -> (step order, seconds). A unit may only follow a larger one, as in ngx_parse_time.
_TIME_UNITS = {
    "y": (1, 60 * 60 * 24 * 365),
    "M": (2, 60 * 60 * 24 * 30),
    "w": (3, 60 * 60 * 24 * 7),
    "d": (4, 60 * 60 * 24),
    "h": (5, 60 * 60),
    "m": (6, 60),
    "s": (7, 1),
}
_STEP_MSEC = 8
_STEP_LAST = 9


def parse_time(text: str, *, seconds: bool) -> int | None:
    """ngx_parse_time: `1h 30m`, `10s`, `500ms`, a bare number. Returns seconds or milliseconds.

    Millisecond values (`seconds=False`) accept neither `y` nor `M`, and second values accept no `ms`;
    a bare number counts in seconds either way.
    """
    step = 0 if seconds else 2
    total = 0
    value = 0
    valid = False
    position = 0
    length = len(text)
    while position < length:
        char = text[position]
        position += 1
        if char in _DIGITS:
            value = value * 10 + int(char)
            if value > MAX_INT:
                return None
            valid = True
            continue
        if char == "m" and position < length and text[position] == "s":
            if seconds or step >= _STEP_MSEC:
                return None
            position += 1
            step, scale = _STEP_MSEC, 1
        elif char == " ":
            if step >= _TIME_UNITS["s"][0]:
                return None
            step, scale = _STEP_LAST, 1
        elif char in _TIME_UNITS:
            order, scale = _TIME_UNITS[char]
            if step >= order:
                return None
            step = order
        else:
            return None
        limit = MAX_INT // scale
        if step != _STEP_MSEC and not seconds:
            scale *= 1000
            limit //= 1000
        if value > limit:
            return None
        value *= scale
        if total > MAX_INT - value:
            return None
        total += value
        value = 0
        while position < length and text[position] == " ":
            position += 1
    if not valid:
        return None
    if not seconds:
        if value > MAX_INT // 1000:
            return None
        value *= 1000
    if total > MAX_INT - value:
        return None
    return total + value


def parse_flag(text: str) -> bool | None:
    """`on` or `off`, compared case-insensitively as ngx_conf_set_flag_slot does."""
    lowered = text.lower() if text.isascii() else text
    if lowered == "on":
        return True
    if lowered == "off":
        return False
    return None


def c_string(text: str) -> str:
    """What C code sees of a value: everything before the first NUL byte."""
    end = text.find("\0")
    return text if end < 0 else text[:end]


def shown(text: str) -> str:
    """A value as nginx prints it with `%s`, made safe to write: cut at NUL, raw bytes as `\\xNN`."""
    return c_string(text).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
