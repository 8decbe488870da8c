"""The SMTP client host: nginx's reverse-then-forward lookup of the client address (spec §2.4.1).

Make one `ClientHostResolver` per server (per worker) and reuse it: its answer cache is what the `resolver`
directive's `valid=` governs. `await resolver.lookup(address)` gives the value for `Client-Host` and
`XCLIENT NAME=`: the PTR name when its forward lookup leads back to the client, `[UNAVAILABLE]` when the
name does not exist or does not match, `[TEMPUNAVAIL]` for any other failure. A PTR name with anything but
letters, digits, `-` and `.` is refused (`[TEMPUNAVAIL]`, nginx 1.29.7, CVE-2026-28753), so resolver data can
never inject into the auth request or XCLIENT. Each lookup step is bounded by `resolver_timeout`.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import time
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rcode
import dns.rdatatype
import dns.resolver

from mailgate.auth.request import TEMPUNAVAIL, UNAVAILABLE
from mailgate.config.model import CoreSettings, LogLevel

_HOST_NAME_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.")
_NXDOMAIN = 3
_NGINX_RESOLVER_ERRORS = {
    1: "Format error",
    2: "Server failure",
    3: "Host not found",
    4: "Unimplemented",
    5: "Operation refused",
    errno.ETIMEDOUT: "Operation timed out",
}
_RESEND_TIMEOUT = 5.0  # nginx's resolver resends a query to the next server after this long

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class LookupMessage:
    """A log line of the lookup; `action` is the `while ...` context nginx logs it with."""

    level: LogLevel
    text: str
    action: str


@dataclass(frozen=True)
class ClientHost:
    """The SMTP client host value, and what to log about finding it."""

    name: str
    messages: tuple[LookupMessage, ...] = ()


class _FixedLifetimeCache(dns.resolver.Cache):
    """An answer cache whose entries live `valid` seconds whatever their TTL (the resolver's `valid=`)."""

    def __init__(self, valid: float) -> None:
        super().__init__()
        self._valid = valid

    def put(self, key: dns.resolver.CacheKey, value: dns.resolver.Answer) -> None:
        value.expiration = time.time() + self._valid
        super().put(key, value)


class _LookupFailedError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code

    @property
    def description(self) -> str:
        return f"{self.code}: {_NGINX_RESOLVER_ERRORS.get(self.code, 'Unknown error')}"


class ClientHostResolver:
    """The `resolver` / `resolver_timeout` settings of one server, with their answer cache."""

    def __init__(self, core: CoreSettings) -> None:
        self._settings = core.resolver
        self._timeout = core.resolver_timeout
        self._dns: dns.asyncresolver.Resolver | None = None
        if self._settings is None:
            return
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [
            dns.nameserver.Do53Nameserver(address, port) for address, port in self._settings.servers
        ]
        resolver.timeout = min(self._timeout, _RESEND_TIMEOUT)
        resolver.lifetime = self._timeout
        resolver.retry_servfail = False
        valid = self._settings.valid
        resolver.cache = _FixedLifetimeCache(valid) if valid is not None else dns.resolver.Cache()
        self._dns = resolver

    async def lookup(self, client_address: str | None) -> ClientHost:
        """The host value for a client at `client_address` (None: a UNIX-socket client)."""
        if self._dns is None or self._settings is None:
            return ClientHost(UNAVAILABLE)
        if client_address is None:
            return ClientHost(TEMPUNAVAIL)
        try:
            address = ipaddress.ip_address(client_address)
        except ValueError:
            return ClientHost(TEMPUNAVAIL)
        try:
            name_bytes = await self._reverse(address)
        except _LookupFailedError as failed:
            message = LookupMessage(
                LogLevel.ERROR,
                f"{client_address} could not be resolved ({failed.description})",
                "in resolving client address",
            )
            return ClientHost(UNAVAILABLE if failed.code == _NXDOMAIN else TEMPUNAVAIL, (message,))
        if not name_bytes or any(byte not in _HOST_NAME_BYTES for byte in name_bytes):
            shown = name_bytes.decode("ascii", "backslashreplace").encode("unicode_escape").decode("ascii")
            message = LookupMessage(
                LogLevel.ERROR,
                f'{client_address} resolved to invalid host name "{shown}"',
                "in resolving client address",
            )
            return ClientHost(TEMPUNAVAIL, (message,))
        name = name_bytes.decode("ascii")
        try:
            addresses = await self._forward(name)
        except _LookupFailedError as failed:
            message = LookupMessage(
                LogLevel.ERROR,
                f"{name} could not be resolved ({failed.description})",
                "in resolving client hostname",
            )
            return ClientHost(UNAVAILABLE if failed.code == _NXDOMAIN else TEMPUNAVAIL, (message,))
        return ClientHost(name if address in addresses else UNAVAILABLE)

    async def _reverse(self, address: IPAddress) -> bytes:
        assert self._dns is not None
        try:
            answer = await self._dns.resolve_address(str(address))
        except dns.exception.DNSException as error:
            raise _LookupFailedError(_failure_code(error)) from error
        target: dns.name.Name = answer[0].target
        return b".".join(label for label in target.labels if label)

    async def _forward(self, name: str) -> set[IPAddress]:
        assert self._dns is not None and self._settings is not None
        settings = self._settings
        choices = ((dns.rdatatype.A, settings.ipv4), (dns.rdatatype.AAAA, settings.ipv6))
        record_types = [rdtype for rdtype, wanted in choices if wanted]
        outcomes = await asyncio.gather(
            *(self._dns.resolve(dns.name.from_text(name), rdtype) for rdtype in record_types),
            return_exceptions=True,
        )
        addresses: set[IPAddress] = set()
        codes: list[int] = []
        for outcome in outcomes:
            if isinstance(outcome, dns.resolver.Answer):
                addresses.update(ipaddress.ip_address(record.address) for record in outcome)
            elif isinstance(outcome, dns.exception.DNSException):
                codes.append(_failure_code(outcome))
            elif isinstance(outcome, BaseException):
                raise outcome
        if addresses or not codes:
            return addresses
        raise _LookupFailedError(next((code for code in codes if code != _NXDOMAIN), _NXDOMAIN))


def _failure_code(error: dns.exception.DNSException) -> int:
    """nginx's resolver state for a failed lookup: the DNS rcode, or ETIMEDOUT."""
    if isinstance(error, dns.resolver.NXDOMAIN | dns.resolver.NoAnswer):
        return _NXDOMAIN
    if isinstance(error, dns.exception.Timeout):
        return errno.ETIMEDOUT
    if isinstance(error, dns.resolver.NoNameservers):
        for *_, reason, _response in reversed(error.kwargs.get("errors", [])):
            if isinstance(reason, str):
                try:
                    return int(dns.rcode.from_text(reason))
                except dns.rcode.UnknownRcode:
                    continue
            if isinstance(reason, dns.exception.FormError):
                return 1
    return 2
