"""Configuration errors, worded and located as nginx words and locates them."""

from __future__ import annotations

from mailgate.config.model import SourceRef


class ConfigError(Exception):
    """A configuration the operator must fix. `str()` gives nginx's text without the `[emerg] ` prefix.

    `mailgate: [emerg] unknown directive "x" in /etc/mailgate/mail.conf:12` is printed from
    `ConfigError('unknown directive "x"', SourceRef("/etc/mailgate/mail.conf", 12))`.
    """

    def __init__(self, message: str, source: SourceRef | None = None, level: str = "emerg") -> None:
        super().__init__(message)
        self.message = message
        self.source = source
        self.level = level

    def __str__(self) -> str:
        if self.source is None:
            return self.message
        return f"{self.message} in {self.source}"
