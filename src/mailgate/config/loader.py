"""Reading a configuration: files, `include`, `-g`, blocks, and the directive tables (ngx_conf_parse).

The loader walks the statements the lexer yields and hands each to the first table entry whose context
matches, after nginx's checks (context, `;` versus `{`, argument count). Blocks are read recursively
on the same file; included files are read where the `include` stands, in the current context.
"""

from __future__ import annotations

import glob
import os
import socket
from dataclasses import dataclass, field
from enum import Enum

from mailgate.config.address import HostLookup
from mailgate.config.directives import Context, Directive, DirectiveCall, Level, Shape
from mailgate.config.directives import core as core_directives
from mailgate.config.directives import mail as mail_directives
from mailgate.config.directives.foreign import HTTP_DIRECTIVES
from mailgate.config.errors import ConfigError, ConfigWarning, conf_error
from mailgate.config.lexer import Terminator, TokenReader
from mailgate.config.model import SourceRef
from mailgate.config.values import c_string, shown


class _Input(Enum):
    """What ngx_conf_parse is reading: a whole file, a block of it, or the `-g` text."""

    FILE = "file"
    BLOCK = "block"
    PARAMETER = "parameter"


@dataclass(frozen=True)
class SourceFile:
    """A file read while loading, with its bytes as read (for `-T`)."""

    name: str
    content: bytes


def _include(call: DirectiveCall, level: Level) -> None:
    call.loader.include(call.args[0])


_INCLUDE = Directive("include", Context.ANY, Shape.TAKE1, _include)


def _directive_index() -> dict[str, list[Directive]]:
    index: dict[str, list[Directive]] = {}
    tables = [core_directives.DIRECTIVES, mail_directives.DIRECTIVES, (_INCLUDE,)]
    tables += [module.directives for module in mail_directives.MAIL_MODULES]
    for table in tables:
        for directive in table:
            index.setdefault(directive.name, []).append(directive)
    return index


DIRECTIVE_INDEX = _directive_index()


@dataclass
class Loader:
    """One load of a configuration (nginx's `cf` and `cycle` during ngx_init_cycle)."""

    conf_prefix: str  # directory of the main file, ending in "/"
    prefix: str  # the -p prefix, ending in "/"
    lookup: HostLookup
    hostname: str
    warnings: list[ConfigWarning] = field(default_factory=list)
    files: list[SourceFile] = field(default_factory=list)
    main: Level = field(init=False)
    _reader: TokenReader | None = None
    _context: Context = Context.MAIN
    _level: Level = field(init=False)
    _open_files: list[str] = field(default_factory=list)
    _zones: dict[str, int] = field(default_factory=dict)
    _blocks_seen: bool = False

    def __post_init__(self) -> None:
        self.main = Level(Context.MAIN, SourceRef("", 0), [core_directives.CoreConf])
        self._level = self.main

    # -- LoadContext ------------------------------------------------------------------------------------

    @property
    def blocks_seen(self) -> bool:
        return self._blocks_seen

    def warn(self, warning: ConfigWarning) -> None:
        self.warnings.append(warning)

    def conf_path(self, value: str) -> str:
        return value if value.startswith("/") else self.conf_prefix + value

    def prefix_path(self, value: str) -> str:
        return value if value.startswith("/") else self.prefix + value

    def shared_zone(self, name: str, size: int) -> str | None:
        declared = self._zones.setdefault(name, size)
        if declared != size:
            return (
                f'the size {size} of shared memory zone "{shown(name)}" conflicts with already declared size '
                f"{declared}"
            )
        return None

    def parse_block(self, context: Context, level: Level) -> SourceRef:
        self._blocks_seen = True
        saved = self._context, self._level
        self._context, self._level = context, level
        try:
            return self._parse(_Input.BLOCK)
        finally:
            self._context, self._level = saved

    def skip_block(self) -> None:
        """Reads to the end of the block without interpreting it; nested blocks are counted, not recursed."""
        self._blocks_seen = True
        reader = self._reader
        assert reader is not None
        saved = self._context
        self._context = Context.SKIPPED
        try:
            depth = 1
            while depth:
                terminator, words = reader.read()
                if terminator is Terminator.BLOCK_END:
                    depth -= 1
                elif terminator is Terminator.END_OF_INPUT:
                    raise reader.error('unexpected end of file, expecting "}"')
                elif words[0] == b"include":
                    self._apply(
                        terminator, [word.decode("utf-8", "surrogateescape") for word in words], reader
                    )
                elif terminator is Terminator.BLOCK_START:
                    depth += 1
        finally:
            self._context = saved

    def include(self, pattern: str) -> None:
        """ngx_conf_include: a file, or every match of a glob (none is fine), in sorted order."""
        name = self.conf_path(pattern)
        if not any(char in name for char in "*?["):
            self.read_file(name)
            return
        for match in sorted(glob.glob(c_string(name)), key=os.fsencode):
            self.read_file(match)

    # -- Reading ----------------------------------------------------------------------------------------

    def read_parameters(self, text: str) -> None:
        """The `-g` directives, read before the file as nginx does."""
        self._reader = TokenReader(text.encode("utf-8", "surrogateescape"), None)
        self._parse(_Input.PARAMETER)
        self._reader = None

    def read_file(self, name: str) -> None:
        """Reads and applies one file; messages name it `name` (nginx does not normalise paths)."""
        where = self._reader.source if self._reader is not None else None
        if name in self._open_files:
            raise conf_error(f'include loop: "{shown(name)}" is already being read', where)
        content = _read(name, where)
        self.read_text(name, content)

    def read_text(self, name: str, content: bytes) -> None:
        """Applies `content` as the file `name` (the main file, an included one, or embedded text)."""
        if all(source.name != name for source in self.files):
            self.files.append(SourceFile(name, content))
        saved = self._reader
        self._reader = TokenReader(content, name)
        self._open_files.append(name)
        try:
            self._parse(_Input.FILE)
        finally:
            self._open_files.pop()
            self._reader = saved

    def _parse(self, kind: _Input) -> SourceRef:
        reader = self._reader
        assert reader is not None
        while True:
            terminator, words = reader.read()
            if terminator is Terminator.BLOCK_END:
                if kind is not _Input.BLOCK:
                    raise reader.error('unexpected "}"')
                return reader.source
            if terminator is Terminator.END_OF_INPUT:
                if kind is _Input.BLOCK:
                    raise reader.error('unexpected end of file, expecting "}"')
                return reader.source
            if terminator is Terminator.BLOCK_START and kind is _Input.PARAMETER:
                raise reader.error("block directives are not supported in -g option")
            self._apply(terminator, _decoded(words), reader)

    def _apply(self, terminator: Terminator, words: list[str], reader: TokenReader) -> None:
        """ngx_conf_handler: find the directive's entry for this context, check the statement, run it."""
        name, args = words[0], words[1:]
        entries = DIRECTIVE_INDEX.get(name)
        if self._context is Context.SKIPPED and name != "include":
            # Inside an included file of a skipped block.
            if terminator is Terminator.BLOCK_START:
                self.skip_block()
            return
        if entries is None:
            if name in HTTP_DIRECTIVES:
                raise reader.error(f'"{shown(name)}" directive is not allowed here')
            raise reader.error(f'unknown directive "{shown(name)}"')
        for entry in entries:
            if not entry.contexts & self._context:
                continue
            block = Shape.BLOCK in entry.shape
            if not block and terminator is not Terminator.SEMICOLON:
                raise reader.error(f'directive "{shown(name)}" is not terminated by ";"')
            if block and terminator is not Terminator.BLOCK_START:
                raise reader.error(f'directive "{shown(name)}" has no opening "{{"')
            if not entry.shape.accepts(len(args)):
                raise reader.error(f'invalid number of arguments in "{shown(name)}" directive')
            conf = self._level.conf(entry.conf) if entry.conf is not None else self._level
            entry.handler(DirectiveCall(name, args, reader.source, self), conf)
            return
        raise reader.error(f'"{shown(name)}" directive is not allowed here')


def _decoded(words: list[bytes]) -> list[str]:
    """Words as text; bytes that are not UTF-8 survive as surrogate escapes."""
    return [word.decode("utf-8", "surrogateescape") for word in words]


def _read(name: str, where: SourceRef | None) -> bytes:
    """The file's bytes as nginx reads them: open(), fstat() for the size, pread() that many."""
    try:
        descriptor = os.open(c_string(name), os.O_RDONLY)
    except OSError as error:
        raise conf_error(f'open() "{shown(name)}" failed ({error.errno}: {error.strerror})', where) from None
    try:
        size = os.fstat(descriptor).st_size
        chunks: list[bytes] = []
        offset = 0
        while offset < size:
            try:
                chunk = os.pread(descriptor, size - offset, offset)
            except OSError as error:
                raise ConfigError(
                    f'pread() "{shown(name)}" failed ({error.errno}: {error.strerror})', level="crit"
                ) from None
            if not chunk:
                raise ConfigError(f"pread() returned only {offset} bytes instead of {size}", where)
            chunks.append(chunk)
            offset += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(descriptor)


def machine_hostname() -> str:
    """The default `server_name`: gethostname(), lower-cased as nginx stores it."""
    return socket.gethostname().lower()
