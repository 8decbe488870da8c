"""`listen`: address forms, parameters, host names and ranges, protocol by port, duplicates."""

from __future__ import annotations

import socket

import pytest

from mailgate.config.model import KeepAlive, Listen, Protocol, ServerConfig
from tests.config.conftest import EVENTS, MAIL_HEAD, ConfDir

CERT = "ssl_certificate c; ssl_certificate_key k;"


def servers(conf: ConfDir, body: str) -> tuple[ServerConfig, ...]:
    mail = conf.load(EVENTS + MAIL_HEAD + body + "}\n").config.mail
    assert mail is not None
    return mail.servers


def listens(conf: ConfDir, arguments: str) -> tuple[Listen, ...]:
    return servers(conf, f"server {{ protocol imap; listen {arguments}; }}\n")[0].listens


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("1143", (socket.AF_INET, "0.0.0.0", 1143, "0.0.0.0:1143", True)),
        ("*:1143", (socket.AF_INET, "0.0.0.0", 1143, "0.0.0.0:1143", True)),
        ("0.0.0.0:1143", (socket.AF_INET, "0.0.0.0", 1143, "0.0.0.0:1143", True)),
        ("127.0.0.1:1143", (socket.AF_INET, "127.0.0.1", 1143, "127.0.0.1:1143", False)),
        ("[::1]:1143", (socket.AF_INET6, "::1", 1143, "[::1]:1143", False)),
        ("[::]:1143", (socket.AF_INET6, "::", 1143, "[::]:1143", True)),
        (
            "[::ffff:127.0.0.1]:1143",
            (socket.AF_INET6, "::ffff:127.0.0.1", 1143, "[::ffff:127.0.0.1]:1143", False),
        ),
        ("unix:/run/imap.sock", (socket.AF_UNIX, "/run/imap.sock", 0, "unix:/run/imap.sock", False)),
        ("UNIX:/run/imap.sock", (socket.AF_UNIX, "/run/imap.sock", 0, "unix:/run/imap.sock", False)),
        ("127.0.0.1", (socket.AF_INET, "127.0.0.1", 0, "127.0.0.1:0", False)),
    ],
)
def test_address_forms(conf: ConfDir, address: str, expected: tuple[object, ...]) -> None:
    (listen,) = listens(conf, address)
    assert (listen.family, listen.host, listen.port, listen.text, listen.wildcard) == expected


def test_host_name_gives_one_socket_per_address_ipv4_first(conf: ConfDir) -> None:
    assert [listen.text for listen in listens(conf, "dual.test:1143")] == ["127.0.0.2:1143", "[::1]:1143"]


def test_host_name_resolving_twice_to_one_address_binds_it_once(conf: ConfDir) -> None:
    assert [listen.text for listen in listens(conf, "twice.test:1143")] == ["127.0.0.3:1143"]


def test_port_range_gives_one_socket_per_port(conf: ConfDir) -> None:
    assert [listen.text for listen in listens(conf, "127.0.0.1:1143-1145")] == [
        "127.0.0.1:1143",
        "127.0.0.1:1144",
        "127.0.0.1:1145",
    ]


def test_defaults_of_a_plain_listen(conf: ConfDir) -> None:
    (listen,) = listens(conf, "127.0.0.1:1143")
    assert (listen.ssl, listen.proxy_protocol, listen.bind, listen.backlog) == (False, False, False, 511)
    assert (listen.rcvbuf, listen.sndbuf, listen.ipv6only, listen.multipath, listen.so_keepalive) == (
        None,
        None,
        True,
        False,
        None,
    )
    assert listen.source is not None
    assert listen.source.line == 4


def test_every_parameter(conf: ConfDir) -> None:
    (listen,) = listens(
        conf,
        "[::]:1143 proxy_protocol backlog=64 rcvbuf=64k sndbuf=1m ipv6only=off multipath"
        " so_keepalive=30m::10",
    )
    assert listen.proxy_protocol
    assert (listen.backlog, listen.rcvbuf, listen.sndbuf, listen.ipv6only, listen.multipath) == (
        64,
        65536,
        1048576,
        False,
        True,
    )
    assert listen.so_keepalive == KeepAlive(enabled=True, idle=1800.0, interval=None, count=10)
    assert listen.bind


@pytest.mark.parametrize(
    ("parameter", "bind"),
    [
        ("bind", True),
        ("ssl", False),
        ("proxy_protocol", False),
        ("backlog=10", True),
        ("rcvbuf=1k", True),
        ("sndbuf=1k", True),
        ("ipv6only=on", True),
        ("multipath", True),
        ("so_keepalive=off", True),
    ],
)
def test_parameters_that_imply_bind(conf: ConfDir, parameter: str, bind: bool) -> None:
    body = f"server {{ protocol imap; listen 127.0.0.1:1143 {parameter}; {CERT} }}\n"
    assert servers(conf, body)[0].listens[0].bind is bind


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("on", KeepAlive(enabled=True)),
        ("off", KeepAlive(enabled=False)),
        ("1h:5m:3", KeepAlive(enabled=True, idle=3600.0, interval=300.0, count=3)),
        (":10:", KeepAlive(enabled=True, interval=10.0)),
    ],
)
def test_so_keepalive_values(conf: ConfDir, value: str, expected: KeepAlive) -> None:
    assert listens(conf, f"127.0.0.1:1143 so_keepalive={value}")[0].so_keepalive == expected


def test_huge_backlog_and_buffers_are_capped_at_a_c_int(conf: ConfDir) -> None:
    (listen,) = listens(conf, "127.0.0.1:1143 backlog=99999999999 rcvbuf=8191m")
    assert (listen.backlog, listen.rcvbuf) == (2**31 - 1, 2**31 - 1)


@pytest.mark.parametrize(
    ("port", "protocol"),
    [(143, "imap"), (993, "imap"), (110, "pop3"), (995, "pop3"), (25, "smtp"), (465, "smtp"), (587, "smtp")],
)
def test_protocol_follows_the_port_while_none_is_set(conf: ConfDir, port: int, protocol: str) -> None:
    body = f"server {{ listen 127.0.0.1:{port}; {CERT} }}\n"
    assert servers(conf, body)[0].protocol.value == protocol


def test_first_listen_with_a_known_port_decides(conf: ConfDir) -> None:
    body = "server { listen 127.0.0.1:1000; listen 127.0.0.1:110; listen 127.0.0.1:143; }\n"
    assert servers(conf, body)[0].protocol is Protocol.POP3


def test_protocol_directive_wins_over_the_port_wherever_it_stands(conf: ConfDir) -> None:
    assert servers(conf, "server { listen 127.0.0.1:143; protocol smtp; }\n")[0].protocol is Protocol.SMTP
    assert servers(conf, "server { protocol pop3; listen 127.0.0.1:143; }\n")[0].protocol is Protocol.POP3


def test_a_later_protocol_directive_replaces_an_earlier_one(conf: ConfDir) -> None:
    assert (
        servers(conf, "server { listen 127.0.0.1:1; protocol imap; protocol smtp; }\n")[0].protocol.value
        == "smtp"
    )


def test_duplicate_address_across_servers(conf: ConfDir) -> None:
    body = "server { listen 127.0.0.1:143; }\nserver {\n listen 127.0.0.1:143; }\n"
    error = conf.error(EVENTS + MAIL_HEAD + body + "}\n")
    assert str(error) == f'duplicate "127.0.0.1:143" address and port pair in {conf.where(6)}'


def test_parameters_are_checked_before_duplicates(conf: ConfDir) -> None:
    body = "server { listen 127.0.0.1:143; listen 127.0.0.1:143 bogus; }\n"
    assert str(conf.error(EVENTS + MAIL_HEAD + body + "}\n")).startswith('the invalid "bogus" parameter')


def test_wildcard_and_specific_address_on_one_port_are_both_kept(conf: ConfDir) -> None:
    body = "server { listen 143; }\nserver { listen 127.0.0.1:143; }\n"
    assert [server.listens[0].text for server in servers(conf, body)] == ["0.0.0.0:143", "127.0.0.1:143"]


def test_ipv4_and_ipv6_wildcards_on_one_port_are_distinct(conf: ConfDir) -> None:
    assert [listen.text for listen in listens(conf, "1143; listen [::]:1143")] == [
        "0.0.0.0:1143",
        "[::]:1143",
    ]


def test_ssl_marks_the_listen_and_the_server(conf: ConfDir) -> None:
    body = f"server {{ listen 127.0.0.1:993 ssl; listen 127.0.0.1:143; {CERT} }}\n"
    (server,) = servers(conf, body)
    assert [listen.ssl for listen in server.listens] == [True, False]
    assert server.needs_tls
