"""The auth service's data files: users, backend routes and client-certificate mappings.

Users file, one user per line (`#` starts a comment line), compatible with Dovecot's passwd-file:

    alice@example.com:{BLF-CRYPT}$2y$05$...
    bob@example.com:{PLAIN}secret:store2

The first field is the login, the second the password (see `mailgate.auth.passwords`; it cannot contain
`:`). A third field, on a line of exactly three fields, names the backend the user lives on. A line with more
fields is a Dovecot passwd-file line (uid, gid, ...): those fields are ignored and the routes decide.

Routes file:

    backend store1 imap=10.0.0.5:143 pop3=10.0.0.5:110 smtp=10.0.0.5:25
    backend store2 imap=[2001:db8::5]:143
    domain example.com store1
    user carol@example.org store2
    default store1

A login goes to its users-file backend, else its `user` route, else the route of the domain after its last
`@`, else `default`. Backend addresses are IP literals (nginx refuses host names in `Auth-Server`).

Certificate map: `LOGIN fingerprint SHA1-HEX` or `LOGIN subject RFC2253-DN`, one per line.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from mailgate.auth.passwords import StoredPassword, parse_stored_password
from mailgate.config.model import Protocol

T = TypeVar("T")


class DirectoryError(ValueError):
    """A data file the operator must fix; `str()` is `FILE:LINE: problem`."""


@dataclass(frozen=True)
class User:
    login: str
    password: StoredPassword
    backend: str | None = None


@dataclass(frozen=True)
class Endpoint:
    """One protocol's backend: `address` is a canonical IP literal (no brackets)."""

    address: str
    port: int


@dataclass(frozen=True)
class Routes:
    backends: dict[str, dict[Protocol, Endpoint]] = field(default_factory=dict)
    users: dict[str, str] = field(default_factory=dict)
    domains: dict[str, str] = field(default_factory=dict)
    default: str | None = None

    def backend_name(self, login: str, user: User | None = None) -> str | None:
        """The backend name a login lives on, by the precedence in the module documentation."""
        if user is not None and user.backend:
            return user.backend
        if login in self.users:
            return self.users[login]
        domain = login.rpartition("@")[2].lower() if "@" in login else ""
        return self.domains.get(domain, self.default)

    def endpoint(self, backend: str | None, protocol: Protocol) -> Endpoint | None:
        if backend is None:
            return None
        return self.backends.get(backend, {}).get(protocol)


@dataclass(frozen=True)
class CertificateMap:
    by_fingerprint: dict[str, str] = field(default_factory=dict)
    by_subject: dict[str, str] = field(default_factory=dict)

    def login_for(self, fingerprint: str, subject: str) -> str | None:
        return self.by_fingerprint.get(fingerprint.lower()) or self.by_subject.get(subject)


def _lines(text: str, path: Path) -> list[tuple[str, str]]:
    """(FILE:LINE, content) for every line that is not blank or a comment."""
    return [
        (f"{path}:{number}", line.strip())
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]


def parse_users(text: str, path: Path) -> dict[str, User]:
    users: dict[str, User] = {}
    for where, line in _lines(text, path):
        fields = line.split(":")
        if len(fields) < 2 or not fields[0]:
            raise DirectoryError(f'{where}: expected "login:{{SCHEME}}password[:backend]"')
        try:
            password = parse_stored_password(fields[1])
        except ValueError as error:
            raise DirectoryError(f"{where}: {error}") from None
        backend = (fields[2] or None) if len(fields) == 3 else None
        if fields[0] in users:
            raise DirectoryError(f'{where}: duplicate user "{fields[0]}"')
        users[fields[0]] = User(fields[0], password, backend)
    return users


def parse_endpoint(text: str) -> tuple[Protocol, Endpoint]:
    """`imap=10.0.0.5:143` or `smtp=[2001:db8::5]:25`. Raises ValueError with the reason."""
    protocol_name, separator, address_port = text.partition("=")
    if not separator or protocol_name not in {protocol.value for protocol in Protocol}:
        raise ValueError(f'expected "imap|pop3|smtp=ADDRESS:PORT", got "{text}"')
    host, _, port_text = address_port.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f'backend address must be an IP literal, got "{address_port}"') from None
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f'invalid backend port in "{address_port}"')
    return Protocol(protocol_name), Endpoint(str(address), int(port_text))


def parse_routes(text: str, path: Path, base: Routes | None = None) -> Routes:
    """Routes from a file; `base` holds command-line backends that the file may extend or override."""
    backends = {name: dict(endpoints) for name, endpoints in (base.backends if base else {}).items()}
    users: dict[str, str] = {}
    domains: dict[str, str] = {}
    default = base.default if base else None
    for where, line in _lines(text, path):
        words = line.split()
        keyword = words[0]
        try:
            if keyword == "backend" and len(words) >= 3:
                backends[words[1]] = dict(parse_endpoint(word) for word in words[2:])
            elif keyword == "domain" and len(words) == 3:
                domains[words[1].lower()] = words[2]
            elif keyword == "user" and len(words) == 3:
                users[words[1]] = words[2]
            elif keyword == "default" and len(words) == 2:
                default = words[1]
            else:
                raise ValueError(f'unknown or malformed route "{line}"')
        except ValueError as error:
            raise DirectoryError(f"{where}: {error}") from None
    for name in [*users.values(), *domains.values(), *([default] if default else [])]:
        if name not in backends:
            raise DirectoryError(f'{path}: route to undefined backend "{name}"')
    return Routes(backends, users, domains, default)


def parse_certificate_map(text: str, path: Path) -> CertificateMap:
    by_fingerprint: dict[str, str] = {}
    by_subject: dict[str, str] = {}
    for where, line in _lines(text, path):
        words = line.split(maxsplit=2)
        if len(words) != 3 or words[1] not in ("fingerprint", "subject"):
            raise DirectoryError(f'{where}: expected "LOGIN fingerprint SHA1-HEX" or "LOGIN subject DN"')
        login, kind, value = words
        if kind == "fingerprint":
            fingerprint = value.replace(":", "").lower()
            if len(fingerprint) != 40 or not set(fingerprint) <= set("0123456789abcdef"):
                raise DirectoryError(f'{where}: fingerprint must be 40 hex digits, got "{value}"')
            by_fingerprint[fingerprint] = login
        else:
            by_subject[value] = login
    return CertificateMap(by_fingerprint, by_subject)


class WatchedFile(Generic[T]):
    """A parsed file that is read again whenever it changes on disk.

    A change that fails to parse keeps the previous contents; `error` then says why (once per change).
    """

    def __init__(self, path: Path, parse: Callable[[str, Path], T]) -> None:
        self.path = path
        self._parse = parse
        self._stamp = self._current_stamp()
        self.value = parse(path.read_text(), path)
        self.error: str | None = None

    def _current_stamp(self) -> tuple[int, int, int, int]:
        stat = os.stat(self.path)
        return (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)

    def refresh(self) -> bool:
        """Re-read the file if it changed. True when new contents were loaded."""
        self.error = None
        try:
            stamp = self._current_stamp()
            if stamp == self._stamp:
                return False
            self._stamp = stamp
            self.value = self._parse(self.path.read_text(), self.path)
        except (OSError, UnicodeDecodeError, DirectoryError) as error:
            self.error = str(error)
            return False
        return True
