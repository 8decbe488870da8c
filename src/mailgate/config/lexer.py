"""nginx's configuration tokenizer (ngx_conf_read_token), byte for byte.

A `TokenReader` turns one file (or the `-g` text) into statements: the words of one directive and what
ended it (`;`, `{`), or the end of a block or of the input. Quoting, escapes, comments, `${` in
variables, the `)` after a quoted word and the error texts are nginx's. nginx reads files through a
4096-byte buffer and refuses a word (or comment) that does not fit in it; the reader reproduces exactly
where that happens.
"""

from __future__ import annotations

from enum import Enum

from mailgate.config.errors import ConfigError, conf_error
from mailgate.config.model import SourceRef

CONF_BUFFER = 4096  # NGX_CONF_BUFFER

_SPACE = frozenset(b" \t\r\n")
_LF = 0x0A
_ESCAPES = {
    ord('"'): b'"',
    ord("'"): b"'",
    ord("\\"): b"\\",
    ord("t"): b"\t",
    ord("r"): b"\r",
    ord("n"): b"\n",
}


class Terminator(Enum):
    """What ended a statement (ngx_conf_read_token's return codes)."""

    SEMICOLON = ";"  # NGX_OK
    BLOCK_START = "{"  # NGX_CONF_BLOCK_START
    BLOCK_END = "}"  # NGX_CONF_BLOCK_DONE
    END_OF_INPUT = ""  # NGX_CONF_FILE_DONE


def unescape(raw: bytes) -> bytes:
    """A word's bytes after nginx's escapes: \\" \\' \\\\ \\t \\r \\n; any other backslash stays."""
    if b"\\" not in raw:
        return raw
    out = bytearray()
    index = 0
    end = len(raw)
    while index < end:
        byte = raw[index]
        if byte == 0x5C and index + 1 < end and raw[index + 1] in _ESCAPES:
            out += _ESCAPES[raw[index + 1]]
            index += 2
            continue
        out.append(byte)
        index += 1
    return bytes(out)


def _char(byte: int) -> str:
    return bytes([byte]).decode("utf-8", "backslashreplace")


class TokenReader:
    """Reads statements from one configuration file, or from the `-g` command-line text (`name` None)."""

    def __init__(self, data: bytes, name: str | None) -> None:
        self.data = data
        self.name = name
        self.line = 1 if name is not None else 0
        self._position = 0
        # End of what nginx's buffer holds; reaching it means nginx would read more of the file.
        self._buffer_end = 0 if name is not None else len(data)

    @property
    def source(self) -> SourceRef:
        """Where the reader is now, as nginx reports it (`in FILE:LINE` or `in command line`)."""
        if self.name is None:
            return SourceRef("", 0, command_line=True)
        return SourceRef(self.name, self.line)

    def error(self, message: str) -> ConfigError:
        return conf_error(message, self.source)

    def read(self) -> tuple[Terminator, list[bytes]]:
        """The next statement: its words (unescaped) and what ended it. Raises ConfigError on bad syntax."""
        data = self.data
        size = len(data)
        words: list[bytes] = []
        need_space = False
        last_space = True
        sharp_comment = False
        variable = False
        quoted = False
        s_quoted = False
        d_quoted = False
        start = self._position
        start_line = self.line

        while True:
            position = self._position
            if position >= self._buffer_end:
                if position >= size:
                    if words or not last_space:
                        if self.name is None:
                            raise self.error('unexpected end of parameter, expecting ";"')
                        raise self.error('unexpected end of file, expecting ";" or "}"')
                    return Terminator.END_OF_INPUT, words
                if position - start == CONF_BUFFER:
                    self.line = start_line
                    if d_quoted or s_quoted:
                        quote = '"' if d_quoted else "'"
                        raise self.error(
                            f'too long parameter, probably missing terminating "{quote}" character'
                        )
                    head = data[start : start + 10].decode("utf-8", "backslashreplace")
                    raise self.error(f'too long parameter "{head}..." started')
                self._buffer_end = min(start + CONF_BUFFER, size)

            byte = data[position]
            self._position = position + 1

            if byte == _LF:
                self.line += 1
                sharp_comment = False
            if sharp_comment:
                continue
            if quoted:
                quoted = False
                continue

            if need_space:
                if byte in _SPACE:
                    last_space = True
                    need_space = False
                    continue
                if byte == 0x3B:  # ;
                    return Terminator.SEMICOLON, words
                if byte == 0x7B:  # {
                    return Terminator.BLOCK_START, words
                if byte != 0x29:  # )
                    raise self.error(f'unexpected "{_char(byte)}"')
                last_space = True
                need_space = False

            if last_space:
                start = position
                start_line = self.line
                if byte in _SPACE:
                    continue
                if byte in (0x3B, 0x7B):  # ; {
                    if not words:
                        raise self.error(f'unexpected "{_char(byte)}"')
                    return (Terminator.BLOCK_START if byte == 0x7B else Terminator.SEMICOLON), words
                if byte == 0x7D:  # }
                    if words:
                        raise self.error('unexpected "}"')
                    return Terminator.BLOCK_END, words
                if byte == 0x23:  # #
                    sharp_comment = True
                    continue
                last_space = False
                if byte == 0x5C:  # backslash
                    quoted = True
                elif byte == 0x22:  # "
                    start += 1
                    d_quoted = True
                elif byte == 0x27:  # '
                    start += 1
                    s_quoted = True
                elif byte == 0x24:  # $
                    variable = True
                continue

            if byte == 0x7B and variable:
                continue
            variable = False
            if byte == 0x5C:
                quoted = True
                continue
            if byte == 0x24:
                variable = True
                continue

            found = False
            if d_quoted:
                if byte == 0x22:
                    d_quoted = False
                    need_space = True
                    found = True
            elif s_quoted:
                if byte == 0x27:
                    s_quoted = False
                    need_space = True
                    found = True
            elif byte in _SPACE or byte in (0x3B, 0x7B):
                last_space = True
                found = True

            if found:
                words.append(unescape(data[start:position]))
                if byte == 0x3B:
                    return Terminator.SEMICOLON, words
                if byte == 0x7B:
                    return Terminator.BLOCK_START, words
