"""Protocols, ciphers, curves, certificate choice and ALPN, as real clients see them."""

import socket

import pytest

from mailgate.config.model import Protocol
from mailgate.tls import build_server_context
from tests.tls.support import (
    Pki,
    pair,
    python_client_context,
    python_connect,
    s_client,
    server_config,
    serving,
)


def test_rsa_or_ecdsa_certificate_is_chosen_by_what_the_client_supports(pki: Pki) -> None:
    tls = build_server_context(server_config((pair(*pki.server_rsa), pair(*pki.server_ecdsa))))
    with serving(tls) as server:
        rsa_only = s_client(server.port, "-tls1_2", "-sigalgs", "RSA-PSS+SHA256:RSA+SHA256")
        ecdsa_only = s_client(server.port, "-tls1_2", "-sigalgs", "ECDSA+SHA256")
        assert server.next_accepted().facts.server_key_algorithm == "RSA2048"
        assert server.next_accepted().facts.server_key_algorithm == "EC256"
    assert rsa_only.cipher is not None and "RSA" in rsa_only.cipher
    assert ecdsa_only.cipher is not None and "ECDSA" in ecdsa_only.cipher


@pytest.mark.parametrize("protocol", list(Protocol))
def test_alpn_selects_the_servers_protocol(pki: Pki, protocol: Protocol) -> None:
    tls = build_server_context(server_config((pair(*pki.server_ecdsa),), protocol=protocol))
    with serving(tls) as server:
        result = s_client(server.port, "-alpn", f"h2,{protocol.value}")
        assert server.next_accepted().facts.alpn == protocol.value
    assert f"ALPN protocol: {protocol.value}" in result.output


def test_alpn_list_without_the_protocol_gets_a_fatal_no_application_protocol_alert(pki: Pki) -> None:
    tls = build_server_context(server_config((pair(*pki.server_ecdsa),), protocol=Protocol.IMAP))
    with serving(tls) as server:
        rejected = s_client(server.port, "-alpn", "pop3,smtp")
        without_alpn = s_client(server.port)
        assert server.next_accepted().facts.alpn is None
    assert not rejected.handshake_done
    assert "alert no application protocol" in rejected.output
    assert without_alpn.handshake_done


def test_python_client_gets_greeting_over_tls(pki: Pki) -> None:
    tls = build_server_context(server_config((pair(*pki.server_ecdsa),)))
    with serving(tls) as server:
        greeting, _session, _resumed = python_connect(server.port, python_client_context())
        facts = server.next_accepted().facts
    assert greeting == b"* OK ready\r\n"
    assert facts.protocol == "TLSv1.3"
    assert facts.cipher.startswith("TLS_")


def test_garbage_instead_of_a_client_hello_fails_only_that_connection(pki: Pki) -> None:
    tls = build_server_context(server_config((pair(*pki.server_ecdsa),)))
    with serving(tls) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
            raw.sendall(b"GET / HTTP/1.0\r\n\r\n" * 20)
            raw.shutdown(socket.SHUT_WR)
            while raw.recv(1024):
                pass
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
            raw.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello cut short
        greeting, _session, _resumed = python_connect(server.port, python_client_context())
    assert greeting == b"* OK ready\r\n"


def test_sni_is_reported_but_selects_nothing(pki: Pki) -> None:
    tls = build_server_context(server_config((pair(*pki.server_ecdsa),)))
    with serving(tls) as server:
        result = s_client(server.port, "-servername", "imap.example.org")
        facts = server.next_accepted().facts
    assert result.handshake_done
    assert facts.server_name == "imap.example.org"
