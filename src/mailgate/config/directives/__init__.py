"""The directive tables' vocabulary: contexts, argument shapes, entries, and nginx's generic setters.

Each module of this package declares its directives as data, like nginx's `ngx_command_t` arrays: name,
allowed contexts, argument shape and a setter that stores the parsed value in the module's per-level
configuration object (None means "not set at this level"). The parser checks context and argument count
from the entry before the setter runs, so those errors come from the tables. Mail modules also provide a
merge function that turns the `mail {}` and `server {}` objects into the typed settings of `model`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Flag, auto
from typing import Any, Protocol, TypeVar

from mailgate.config.address import HostLookup
from mailgate.config.errors import ConfigError, ConfigWarning, conf_error
from mailgate.config.model import SourceRef
from mailgate.config.values import atoi, parse_flag, parse_size, parse_time, shown


class Context(Flag):
    """Where a directive may appear (nginx's NGX_MAIN_CONF, NGX_EVENT_CONF, NGX_MAIL_MAIN/SRV_CONF)."""

    MAIN = auto()
    EVENTS = auto()
    MAIL = auto()
    SERVER = auto()
    SKIPPED = auto()  # inside `http {}` / `stream {}`, which mailgate reads but does not interpret

    MAIL_OR_SERVER = MAIL | SERVER
    ANY = MAIN | EVENTS | MAIL | SERVER | SKIPPED


class Shape(Flag):
    """Argument shape (nginx's NGX_CONF_NOARGS ... NGX_CONF_1MORE, NGX_CONF_BLOCK)."""

    NOARGS = auto()
    TAKE1 = auto()
    TAKE2 = auto()
    TAKE3 = auto()
    TAKE4 = auto()
    TAKE5 = auto()
    TAKE6 = auto()
    TAKE7 = auto()
    FLAG = auto()
    ONE_MORE = auto()
    BLOCK = auto()

    TAKE12 = TAKE1 | TAKE2
    TAKE23 = TAKE2 | TAKE3

    def accepts(self, count: int) -> bool:
        """Whether `count` arguments (the name excluded) fit, as ngx_conf_handler decides."""
        if Shape.FLAG in self:
            return count == 1
        if Shape.ONE_MORE in self:
            return count >= 1
        fixed = (
            Shape.NOARGS,
            Shape.TAKE1,
            Shape.TAKE2,
            Shape.TAKE3,
            Shape.TAKE4,
            Shape.TAKE5,
            Shape.TAKE6,
            Shape.TAKE7,
        )
        return count < len(fixed) and fixed[count] in self


class LoadContext(Protocol):
    """What setters may ask of the loader (nginx's `cf` and `cycle`)."""

    @property
    def lookup(self) -> HostLookup: ...

    @property
    def hostname(self) -> str: ...

    def warn(self, warning: ConfigWarning) -> None: ...

    def conf_path(self, value: str) -> str:
        """A file name relative to the main configuration file's directory made absolute."""
        ...

    def prefix_path(self, value: str) -> str:
        """A file name relative to the prefix (`-p`) made absolute."""
        ...

    def parse_block(self, context: Context, level: Level) -> SourceRef:
        """Reads the block just opened into `level`'s configuration objects; returns where it closed."""
        ...

    def skip_block(self) -> None:
        """Reads the block just opened without interpreting it (`include` is still followed)."""
        ...

    def include(self, pattern: str) -> None: ...

    def shared_zone(self, name: str, size: int) -> str | None:
        """Declares a shared memory zone; returns nginx's error text when it conflicts with one declared."""
        ...

    @property
    def blocks_seen(self) -> bool:
        """Whether a block directive was already read (`load_module` must come before any)."""
        ...


@dataclass
class DirectiveCall:
    """One directive being applied: its name, arguments and location, and the loader."""

    name: str
    args: list[str]
    source: SourceRef
    loader: LoadContext

    def error(self, message: str) -> ConfigError:
        """An error located at this directive, e.g. `invalid value "x" in FILE:LINE`."""
        return conf_error(message, self.source)

    def invalid(self, reason: str) -> ConfigError:
        """nginx's `"name" directive REASON` (REASON: `is duplicate`, `invalid value`, ...)."""
        return conf_error(f'"{shown(self.name)}" directive {reason}', self.source)

    def warn(self, message: str, level: str = "warn") -> None:
        self.loader.warn(ConfigWarning(level, message, self.source))


Handler = Callable[[DirectiveCall, Any], None]


@dataclass(frozen=True)
class Directive:
    """One entry of a directive table (an `ngx_command_t`).

    `conf` is the configuration class whose per-level object the handler receives; None gives the
    handler the level itself (block directives that create levels, `include`).
    """

    name: str
    contexts: Context
    shape: Shape
    handler: Handler
    conf: type[Any] | None = None


T = TypeVar("T")


class Level:
    """One configuration level (main, events, mail, a server): a configuration object per module."""

    def __init__(
        self,
        context: Context,
        source: SourceRef,
        conf_types: Iterable[type[Any]],
        parent: Level | None = None,
    ) -> None:
        self.context = context
        self.source = source
        self.parent = parent
        self._confs: dict[type[Any], Any] = {conf_type: conf_type() for conf_type in conf_types}

    @property
    def conf_types(self) -> tuple[type[Any], ...]:
        return tuple(self._confs)

    def conf(self, conf_type: type[T]) -> T:
        conf: T = self._confs[conf_type]
        return conf


# ---------------------------------------------------------------------------------------------------------
# nginx's generic setters (ngx_conf_set_*_slot). Each stores into one attribute of the conf object.


def _check_unset(call: DirectiveCall, conf: object, attribute: str) -> None:
    if getattr(conf, attribute) is not None:
        raise call.invalid("is duplicate")


def flag_slot(attribute: str) -> Handler:
    """`on|off` (any case); `invalid value "x" in "name" directive, it must be "on" or "off"`."""

    def handler(call: DirectiveCall, conf: object) -> None:
        _check_unset(call, conf, attribute)
        value = parse_flag(call.args[0])
        if value is None:
            raise call.error(
                f'invalid value "{shown(call.args[0])}" in "{call.name}" directive, it must be "on" or "off"'
            )
        setattr(conf, attribute, value)

    return handler


def str_slot(attribute: str) -> Handler:
    def handler(call: DirectiveCall, conf: object) -> None:
        _check_unset(call, conf, attribute)
        setattr(conf, attribute, call.args[0])

    return handler


def num_slot(attribute: str) -> Handler:
    """A decimal number; `"name" directive invalid number`."""

    def handler(call: DirectiveCall, conf: object) -> None:
        _check_unset(call, conf, attribute)
        value = atoi(call.args[0])
        if value is None:
            raise call.invalid("invalid number")
        setattr(conf, attribute, value)

    return handler


def size_slot(attribute: str) -> Handler:
    """A size in bytes (`k`, `m` suffixes); `"name" directive invalid value`."""

    def handler(call: DirectiveCall, conf: object) -> None:
        _check_unset(call, conf, attribute)
        value = parse_size(call.args[0])
        if value is None:
            raise call.invalid("invalid value")
        setattr(conf, attribute, value)

    return handler


def msec_slot(attribute: str) -> Handler:
    """A time stored as seconds (float) from nginx's millisecond parser (no `y`, `M`)."""

    def handler(call: DirectiveCall, conf: object) -> None:
        _check_unset(call, conf, attribute)
        value = parse_time(call.args[0], seconds=False)
        if value is None:
            raise call.invalid("invalid value")
        setattr(conf, attribute, value / 1000)

    return handler


def sec_slot(attribute: str) -> Handler:
    """A time stored as seconds (float) from nginx's second parser (no `ms`)."""

    def handler(call: DirectiveCall, conf: object) -> None:
        _check_unset(call, conf, attribute)
        value = parse_time(call.args[0], seconds=True)
        if value is None:
            raise call.invalid("invalid value")
        setattr(conf, attribute, float(value))

    return handler


def enum_slot(attribute: str, values: Mapping[str, object]) -> Handler:
    """One of `values` (keys compared case-insensitively); `invalid value "x"`."""

    def handler(call: DirectiveCall, conf: object) -> None:
        _check_unset(call, conf, attribute)
        value = _lookup_case_insensitive(values, call.args[0])
        if value is None:
            raise call.error(f'invalid value "{shown(call.args[0])}"')
        setattr(conf, attribute, value)

    return handler


def bitmask_slot(attribute: str, values: Mapping[str, object]) -> Handler:
    """Several of `values`, OR-ed, repeatable at one level; a repeated value only warns."""

    def handler(call: DirectiveCall, conf: object) -> None:
        chosen: set[object] = getattr(conf, attribute)
        for argument in call.args:
            value = _lookup_case_insensitive(values, argument)
            if value is None:
                raise call.error(f'invalid value "{shown(argument)}"')
            if value in chosen:
                call.warn(f'duplicate value "{shown(argument)}"')
            chosen.add(value)

    return handler


def list_slot(attribute: str) -> Handler:
    """Every argument appended to a list (the `*_capabilities` directives)."""

    def handler(call: DirectiveCall, conf: object) -> None:
        getattr(conf, attribute).extend(call.args)

    return handler


def str_list_slot(attribute: str) -> Handler:
    """The one argument appended to a list (ngx_conf_set_str_array_slot)."""

    def handler(call: DirectiveCall, conf: object) -> None:
        getattr(conf, attribute).append(call.args[0])

    return handler


def keyval_slot(attribute: str) -> Handler:
    """The two arguments appended to a list as a pair (ngx_conf_set_keyval_slot)."""

    def handler(call: DirectiveCall, conf: object) -> None:
        getattr(conf, attribute).append((call.args[0], call.args[1]))

    return handler


def _lookup_case_insensitive(values: Mapping[str, object], text: str) -> object | None:
    if not text.isascii():
        return None
    lowered = text.lower()
    for name, value in values.items():
        if name.lower() == lowered:
            return value
    return None


def unsupported(call: DirectiveCall, conf: object) -> None:
    """A directive nginx has and mailgate cannot honour: refused rather than silently ignored."""
    raise call.invalid("is not supported by mailgate")


@dataclass(frozen=True)
class MergeContext:
    """What a mail module's merge needs besides the two configuration objects."""

    loader: LoadContext
    server_source: SourceRef  # the server's `{` line
    mail_end_source: SourceRef | None  # the mail block's `}` line, where nginx locates merge-time errors

    def conf_path(self, value: str) -> str:
        return self.loader.conf_path(value)


def inherit(own: T | None, inherited: T | None, default: T) -> T:
    """nginx's merge rule: the server's value, else the mail level's, else the default."""
    if own is not None:
        return own
    if inherited is not None:
        return inherited
    return default


def inherit_list(own: list[T], inherited: list[T], default: Iterable[T] = ()) -> tuple[T, ...]:
    """A list directive's merge: the server's entries replace the mail level's, which replace the default."""
    if own:
        return tuple(own)
    if inherited:
        return tuple(inherited)
    return tuple(default)
