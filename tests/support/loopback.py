"""Loopback networking helpers for tests: free ports, IPv6 availability, waiting for a server's greeting."""

from __future__ import annotations

import collections
import functools
import socket
import time
from collections.abc import Callable, Sequence

IPV4_LOOPBACK = "127.0.0.1"
IPV6_LOOPBACK = "::1"


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


@functools.cache
def ipv6_loopback_available() -> bool:
    """Whether ::1 can be bound here (Docker without IPv6 has no ::1)."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind((IPV6_LOOPBACK, 0))
    except OSError:
        return False
    return True


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(_family(host), socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


_handed_out: collections.deque[int] = collections.deque(maxlen=4096)


def free_port(host: str = IPV4_LOOPBACK, *, also_free_on: Sequence[str] = ()) -> int:
    """A TCP port nothing is bound to on ``host`` (and on each of ``also_free_on``) at this moment.

    Another process may take it before the caller's server binds it, so start servers in a retry loop.
    """
    for _ in range(100):
        with socket.socket(_family(host), socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
            port: int = probe.getsockname()[1]
        # The kernel may hand the same free port out twice in a row: never give one out again soon.
        if port not in _handed_out and all(_port_is_free(other, port) for other in also_free_on):
            _handed_out.append(port)
            return port
    raise RuntimeError(f"no TCP port free on {host} and {', '.join(also_free_on)}")


def read_greeting(host: str, port: int, timeout: float = 2.0) -> bytes | None:
    """The first line a server sends after accepting a connection, or None if it cannot be had."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as connection:
            received = b""
            while b"\n" not in received:
                chunk = connection.recv(4096)
                if not chunk:
                    return None
                received += chunk
            return received.split(b"\n", 1)[0] + b"\n"
    except OSError:
        return None


def wait_until(condition: Callable[[], object], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``condition`` until it returns a true value (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
