"""Configuration errors, worded and located as nginx words and locates them."""

from __future__ import annotations

from dataclasses import dataclass

from mailgate.config.model import SourceRef


@dataclass(frozen=True)
class ConfigWarning:
    """A message nginx logs below `emerg` while loading (`warn`, `notice`); loading goes on.

    `str()` gives nginx's text without the `[warn] ` prefix, located like ConfigError.
    """

    level: str
    message: str
    source: SourceRef | None = None

    def __str__(self) -> str:
        if self.source is None:
            return self.message
        return f"{self.message} in {self.source}"


MAX_CONF_ERRSTR = 1024  # NGX_MAX_CONF_ERRSTR


def conf_error(message: str, source: SourceRef | None) -> ConfigError:
    """ngx_conf_log_error's error: the text is cut at 1024 bytes before `in FILE:LINE` is added."""
    encoded = message.encode("utf-8", "surrogateescape")
    if len(encoded) > MAX_CONF_ERRSTR:
        message = encoded[:MAX_CONF_ERRSTR].decode("utf-8", "ignore")
    return ConfigError(message, source)


class ConfigError(Exception):
    """A configuration the operator must fix. `str()` gives nginx's text without the `[emerg] ` prefix.

    `mailgate: [emerg] unknown directive "x" in /etc/mailgate/mail.conf:12` is printed from
    `ConfigError('unknown directive "x"', SourceRef("/etc/mailgate/mail.conf", 12))`.
    `warnings` holds what loading reported before the error (nginx prints those first). `syntax_ok` is
    True for errors nginx finds after reading the whole file, once it has printed `syntax is ok`.
    """

    def __init__(
        self, message: str, source: SourceRef | None = None, level: str = "emerg", *, syntax_ok: bool = False
    ) -> None:
        super().__init__(message)
        self.message = message
        self.source = source
        self.level = level
        self.syntax_ok = syntax_ok
        self.warnings: list[ConfigWarning] = []

    def __str__(self) -> str:
        if self.source is None:
            return self.message
        return f"{self.message} in {self.source}"
