"""Listening sockets: which addresses get a socket, their options, and which server an accepted connection
belongs to (spec §6).

A wildcard `listen` (`*:143`, `[::]:143`) takes every connection to its port in its family, and specific
addresses on that port are served through it (found by the accepted socket's local address) unless they ask
for a socket of their own with `bind` or an option that implies it. Without a wildcard each address gets a
socket.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from mailgate.config.model import Listen, ServerConfig

IPPROTO_MPTCP = 262


class ListenError(Exception):
    """A socket that cannot be opened, worded as nginx's `bind() to X failed (98: ...)`."""


@dataclass(frozen=True)
class Endpoint:
    """Where an accepted connection goes: the `listen` it matched and its server."""

    listen: Listen
    server: ServerConfig


@dataclass
class ListenerPlan:
    """One socket to open, and the endpoints reached through it."""

    endpoint: Endpoint
    specific: dict[tuple[str, int], Endpoint] = field(default_factory=dict)

    @property
    def listen(self) -> Listen:
        return self.endpoint.listen

    def route(self, local_address: object) -> Endpoint:
        """The endpoint for a connection accepted on this socket, by its local address."""
        if self.specific and isinstance(local_address, tuple):
            host = _normalise_host(str(local_address[0]))
            found = self.specific.get((host, int(local_address[1])))
            if found is not None:
                return found
        return self.endpoint


def _normalise_host(host: str) -> str:
    if host.startswith("::ffff:") and "." in host:
        return host[len("::ffff:") :]
    return host


def plan_listeners(servers: Iterable[ServerConfig]) -> list[ListenerPlan]:
    """Decide which sockets to open for all servers' `listen` lines (duplicates were refused at load)."""
    endpoints = [Endpoint(listen, server) for server in servers for listen in server.listens]
    wildcards: dict[tuple[int, int], ListenerPlan] = {}
    plans: list[ListenerPlan] = []
    for endpoint in endpoints:
        listen = endpoint.listen
        if listen.wildcard and listen.family != socket.AF_UNIX:
            plan = ListenerPlan(endpoint)
            wildcards[(listen.family, listen.port)] = plan
            plans.append(plan)
    for endpoint in endpoints:
        listen = endpoint.listen
        if listen.wildcard and listen.family != socket.AF_UNIX:
            continue
        wildcard = wildcards.get((listen.family, listen.port))
        if wildcard is not None and not listen.bind:
            wildcard.specific[(listen.host, listen.port)] = endpoint
            continue
        plans.append(ListenerPlan(endpoint))
    # An IPv6 wildcard without ipv6only also receives IPv4 connections, as v4-mapped local addresses.
    for (family, port), plan in wildcards.items():
        if family == socket.AF_INET6 and not plan.listen.ipv6only:
            for endpoint in endpoints:
                listen = endpoint.listen
                if listen.family == socket.AF_INET and listen.port == port and not listen.bind:
                    plan.specific.setdefault((listen.host, listen.port), endpoint)
    # nginx opens wildcard sockets last; on Linux a wildcard and a `bind` address cannot both listen on one
    # port, and the failure then names the wildcard, as nginx's does.
    plans.sort(key=lambda plan: plan.listen.wildcard)
    return plans


def open_listener(listen: Listen) -> socket.socket:
    """Create, configure, bind and listen a non-blocking socket for one `listen` (raises ListenError)."""
    sock = _create_socket(listen)
    try:
        _apply_options(sock, listen)
        if listen.family == socket.AF_UNIX:
            _remove_stale_unix_socket(listen.host)
            sock.bind(listen.host)
        else:
            sock.bind((listen.host, listen.port))
        sock.listen(listen.backlog)
        sock.setblocking(False)
    except OSError as error:
        sock.close()
        raise ListenError(
            f"bind() to {listen.text} failed ({error.errno}: {os.strerror(error.errno or 0)})"
        ) from None
    return sock


def _create_socket(listen: Listen) -> socket.socket:
    if listen.multipath and listen.family != socket.AF_UNIX:
        try:
            return socket.socket(listen.family, socket.SOCK_STREAM, IPPROTO_MPTCP)
        except OSError as error:
            if error.errno not in (errno.EPROTONOSUPPORT, errno.EINVAL, errno.ENOPROTOOPT):
                raise ListenError(
                    f"socket() {listen.text} failed ({error.errno}: {error.strerror})"
                ) from None
            # nginx logs "multipath is not supported on this platform, ignored" and goes on with plain TCP.
    return socket.socket(listen.family, socket.SOCK_STREAM)


def _apply_options(sock: socket.socket, listen: Listen) -> None:
    if listen.family == socket.AF_UNIX:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if listen.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if listen.ipv6only else 0)
    if listen.rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, listen.rcvbuf)
    if listen.sndbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, listen.sndbuf)
    keepalive = listen.so_keepalive
    if keepalive is not None:
        # Accepted sockets inherit these from the listening socket on Linux, as nginx relies on.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1 if keepalive.enabled else 0)
        if keepalive.idle is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, int(keepalive.idle)))
        if keepalive.interval is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, int(keepalive.interval)))
        if keepalive.count is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, keepalive.count)


def _remove_stale_unix_socket(path: str) -> None:
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


ListenerKey = tuple[int, str, int]


def listener_key(listen: Listen) -> ListenerKey:
    """What identifies a listening socket across reloads: its family and address."""
    return (int(listen.family), listen.host, listen.port)


def open_listeners(
    plans: Iterable[ListenerPlan], inherited: Mapping[ListenerKey, socket.socket] | None = None
) -> list[tuple[ListenerPlan, socket.socket]]:
    """Open every planned socket, or none: on the first failure the ones opened here are closed.

    A socket in `inherited` with the same address is used again (a reload), so the port never stops
    accepting; its backlog and buffer options are set anew, which is what can change on a bound socket.
    """
    inherited = inherited or {}
    result: list[tuple[ListenerPlan, socket.socket]] = []
    opened: list[socket.socket] = []
    try:
        for plan in plans:
            reused = inherited.get(listener_key(plan.listen))
            if reused is not None:
                _reconfigure(reused, plan.listen)
                result.append((plan, reused))
            else:
                sock = open_listener(plan.listen)
                opened.append(sock)
                result.append((plan, sock))
    except ListenError:
        for sock in opened:
            sock.close()
        raise
    return result


def _reconfigure(sock: socket.socket, listen: Listen) -> None:
    # Best effort, as nginx on reload: a refused option leaves the socket serving with the old value.
    try:
        if listen.family != socket.AF_UNIX:
            for level, option, value in (
                (socket.SOL_SOCKET, socket.SO_RCVBUF, listen.rcvbuf),
                (socket.SOL_SOCKET, socket.SO_SNDBUF, listen.sndbuf),
            ):
                if value is not None:
                    sock.setsockopt(level, option, value)
        sock.listen(listen.backlog)
    except OSError:
        pass


def close_listener(sock: socket.socket, listen: Listen) -> None:
    """Close a listening socket for good; a UNIX socket's file goes too, as nginx removes it."""
    sock.close()
    if listen.family == socket.AF_UNIX:
        _remove_stale_unix_socket(listen.host)
