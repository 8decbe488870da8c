"""Helpers for the configuration tests: write files in a temp dir, load them with a fixed host table."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from mailgate.config import ConfigError, LoadedConfig, load

HOSTS: dict[str, list[tuple[socket.AddressFamily, str]]] = {
    "localhost": [(socket.AF_INET, "127.0.0.1")],
    "auth.test": [(socket.AF_INET, "192.0.2.10"), (socket.AF_INET6, "2001:db8::10")],
    "dual.test": [(socket.AF_INET, "127.0.0.2"), (socket.AF_INET6, "::1")],
    "twice.test": [(socket.AF_INET, "127.0.0.3"), (socket.AF_INET, "127.0.0.3")],
    "v6.test": [(socket.AF_INET6, "2001:db8::53")],
}


def fixed_lookup(host: str) -> list[tuple[socket.AddressFamily, bytes]]:
    """Resolves only the names of HOSTS, so that no test depends on DNS."""
    if host not in HOSTS:
        raise LookupError(host)
    return [(family, socket.inet_pton(family, address)) for family, address in HOSTS[host]]


# The smallest configuration that loads; tests add to it.
EVENTS = "events {}\n"
MAIL_HEAD = "mail {\n    auth_http 127.0.0.1:9000/auth;\n"


class ConfDir:
    """A temporary configuration directory: `main.conf` plus whatever files a test writes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.main = path / "main.conf"

    def write(self, name: str, content: str | bytes) -> Path:
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            content = content.encode("utf-8", "surrogateescape")
        target.write_bytes(content)
        return target

    def load(self, text: str | bytes, extra: str | None = None) -> LoadedConfig:
        self.write("main.conf", text)
        return load(self.main, self.path, extra, lookup=fixed_lookup)

    def error(self, text: str | bytes, extra: str | None = None) -> ConfigError:
        """The ConfigError loading `text` raises (the test fails if it loads)."""
        with pytest.raises(ConfigError) as caught:
            self.load(text, extra)
        return caught.value

    def where(self, line: int, name: str = "main.conf") -> str:
        return f"{self.path / name}:{line}"


@pytest.fixture
def conf(tmp_path: Path) -> ConfDir:
    return ConfDir(tmp_path)
