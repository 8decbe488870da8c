"""The auth service's users, routes and certificate-map files: formats, errors and reloading."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from mailgate.auth.directory import (
    DirectoryError,
    Endpoint,
    Routes,
    WatchedFile,
    parse_certificate_map,
    parse_endpoint,
    parse_routes,
    parse_users,
)
from mailgate.config.model import Protocol

PATH = Path("/etc/mailgate/users")


def test_users_file_reads_logins_passwords_and_backends() -> None:
    users = parse_users(
        "# comment\n\nalice:{PLAIN}a:store1\nbob:{PLAIN}b\ncarol:{PLAIN}c:1000:1000::/home/carol::\n", PATH
    )
    assert [(user.login, user.backend) for user in users.values()] == [
        ("alice", "store1"),
        ("bob", None),
        ("carol", None),
    ]
    assert users["carol"].password.plaintext == b"c"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alice\n", '/etc/mailgate/users:1: expected "login:{SCHEME}password[:backend]"'),
        ("a:{PLAIN}x\n:{PLAIN}y\n", '/etc/mailgate/users:2: expected "login:{SCHEME}password[:backend]"'),
        ("a:{MD4}x\n", '/etc/mailgate/users:1: unknown password scheme "{MD4}"'),
        ("a:{PLAIN}x\na:{PLAIN}y\n", '/etc/mailgate/users:2: duplicate user "a"'),
    ],
)
def test_users_file_errors_name_file_and_line(text: str, message: str) -> None:
    with pytest.raises(DirectoryError) as raised:
        parse_users(text, PATH)
    assert str(raised.value) == message


def test_routes_pick_user_then_domain_then_default() -> None:
    routes = parse_routes(
        "backend a imap=10.0.0.1:143\nbackend b imap=[2001:db8::1]:993 smtp=10.0.0.2:25\n"
        "domain Example.COM a\nuser vip@example.com b\ndefault b\n",
        Path("routes"),
    )
    assert routes.backend_name("vip@example.com") == "b"
    assert routes.backend_name("x@example.com") == "a"
    assert routes.backend_name("x@other.net") == "b"
    assert routes.endpoint("b", Protocol.IMAP) == Endpoint("2001:db8::1", 993)
    assert routes.endpoint("a", Protocol.SMTP) is None


def test_routes_extend_command_line_backends() -> None:
    base = Routes({"default": {Protocol.IMAP: Endpoint("127.0.0.1", 1143)}}, default="default")
    routes = parse_routes("backend x pop3=10.0.0.9:110\ndomain example.com x\n", Path("routes"), base)
    assert routes.endpoint(routes.backend_name("a@example.com"), Protocol.POP3) == Endpoint("10.0.0.9", 110)
    assert routes.endpoint(routes.backend_name("a@else.net"), Protocol.IMAP) == Endpoint("127.0.0.1", 1143)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "backend a imap=mail.example.com:143\n",
            'routes:1: backend address must be an IP literal, got "mail.example.com:143"',
        ),
        ("backend a imap=10.0.0.1:0\n", 'routes:1: invalid backend port in "10.0.0.1:0"'),
        (
            "backend a http=10.0.0.1:80\n",
            'routes:1: expected "imap|pop3|smtp=ADDRESS:PORT", got "http=10.0.0.1:80"',
        ),
        ("domain example.com nowhere\n", 'routes: route to undefined backend "nowhere"'),
        ("route everything\n", 'routes:1: unknown or malformed route "route everything"'),
    ],
)
def test_route_errors_are_explained(text: str, message: str) -> None:
    with pytest.raises(DirectoryError) as raised:
        parse_routes(text, Path("routes"))
    assert str(raised.value) == message


def test_endpoint_accepts_bracketed_ipv6() -> None:
    assert parse_endpoint("smtp=[::1]:25") == (Protocol.SMTP, Endpoint("::1", 25))


def test_certificate_map_by_fingerprint_and_subject() -> None:
    certificates = parse_certificate_map(
        "alice fingerprint 01:23:45:67:89:AB:CD:EF:01:23:45:67:89:ab:cd:ef:01:23:45:67\n"
        "bob subject CN=bob,O=Example\\, Inc.\n",
        Path("certs"),
    )
    assert certificates.login_for("0123456789abcdef0123456789abcdef01234567", "") == "alice"
    assert certificates.login_for("f" * 40, "CN=bob,O=Example\\, Inc.") == "bob"
    assert certificates.login_for("f" * 40, "CN=carol") is None
    with pytest.raises(DirectoryError, match="fingerprint must be 40 hex digits"):
        parse_certificate_map("alice fingerprint 0123\n", Path("certs"))


def test_watched_file_reloads_on_change_and_keeps_the_last_good_contents(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("a:{PLAIN}x\n")
    watched = WatchedFile(path, parse_users)
    assert not watched.refresh()
    path.write_text("a:{PLAIN}y\nb:{PLAIN}z\n")
    assert watched.refresh()
    assert set(watched.value) == {"a", "b"}
    path.write_text("broken\n")
    future = time.time_ns() + 10**9
    os.utime(path, ns=(future, future))
    assert not watched.refresh()
    assert watched.error is not None and "expected" in watched.error
    assert set(watched.value) == {"a", "b"}
