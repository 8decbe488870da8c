"""Protocols, ciphers, curves, certificate choice and ALPN, as real clients see them."""

import socket
import ssl

import pytest

from mailgate.config.model import LogLevel, Protocol
from mailgate.tls import TlsLogLine, build_server_context
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


# --- failed handshakes, as nginx logs them and puts them on the wire --------------------------------------

BROKEN_CLIENT_HELLO = b"\x16\x03\x01\x00\x09\x01\x00\x00\x05\x03\x03abc"  # its length fields disagree


def _send_and_read_until_closed(port: int, data: bytes, timeout: float) -> bytes:
    """Send `data`, then stay silent; everything the server sends until it closes (TimeoutError if not)."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        raw.sendall(data)
        while chunk := raw.recv(4096):
            received += chunk
    return received


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", "(SSL: error:0A00009C:SSL routines::http request)"),
        (b"a LOGIN alice secret\r\n", "(SSL: error:0A00010B:SSL routines::wrong version number)"),
        (BROKEN_CLIENT_HELLO, "(SSL: error:0A00009F:SSL routines::length mismatch)"),
    ],
    ids=["http request", "imap command", "broken client hello"],
)
def test_failed_handshake_is_described_from_openssls_error_queue_at_info(
    pki: Pki, data: bytes, message: str
) -> None:
    tls = build_server_context(server_config((pair(*pki.server_ecdsa),)))
    with serving(tls) as server:
        _send_and_read_until_closed(server.port, data, timeout=10)
        failure = server.next_failure()
    assert failure == TlsLogLine(LogLevel.INFO, f"SSL_do_handshake() failed {message}")


def test_refused_alpn_is_logged_as_no_application_protocol(pki: Pki) -> None:
    tls = build_server_context(server_config((pair(*pki.server_ecdsa),), protocol=Protocol.IMAP))
    with serving(tls) as server:
        s_client(server.port, "-alpn", "h2")
        failure = server.next_failure()
    assert failure == TlsLogLine(
        LogLevel.INFO, "SSL_do_handshake() failed (SSL: error:0A0000EB:SSL routines::no application protocol)"
    )


def test_fatal_alert_from_the_client_during_the_handshake_carries_its_number(pki: Pki) -> None:
    tls = build_server_context(server_config((pair(*pki.server_ecdsa),)))
    strict = python_client_context(verify_mode=ssl.CERT_REQUIRED)
    strict.load_verify_locations(pki.other_ca_file)
    with serving(tls) as server:
        with pytest.raises(ssl.SSLCertVerificationError):
            python_connect(server.port, strict)
        failure = server.next_failure()
    assert failure == TlsLogLine(
        LogLevel.INFO,
        "SSL_do_handshake() failed"
        " (SSL: error:0A000418:SSL routines::tlsv1 alert unknown ca:SSL alert number 48)",
    )


def test_client_leaving_during_the_handshake_is_a_peer_closed_connection(pki: Pki) -> None:
    tls = build_server_context(server_config((pair(*pki.server_ecdsa),)))
    with serving(tls) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
            raw.sendall(BROKEN_CLIENT_HELLO[:6])
            raw.shutdown(socket.SHUT_WR)
            raw.recv(1024)
        failure = server.next_failure()
    assert failure == TlsLogLine(LogLevel.INFO, "peer closed connection in SSL handshake")


def test_handshake_timeout_is_not_logged(pki: Pki) -> None:
    tls = build_server_context(server_config((pair(*pki.server_ecdsa),)))
    with serving(tls, handshake_timeout=0.5) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
            assert raw.recv(1024) == b""  # the server gives up and closes
        failure = server.next_failure()
    assert failure is None


@pytest.mark.parametrize("cause", ["broken client hello", "refused alpn"])
def test_failed_handshake_sends_its_alert_and_closes_without_waiting_for_the_client(
    pki: Pki, cause: str
) -> None:
    """The client sends its flight and then waits: the server's alert and its close come at once, long before
    the handshake timeout (60 s here; the client gives up after 10)."""
    tls = build_server_context(server_config((pair(*pki.server_ecdsa),), protocol=Protocol.IMAP))
    if cause == "broken client hello":
        hello = BROKEN_CLIENT_HELLO
    else:
        client = python_client_context()
        client.set_alpn_protocols(["h2"])
        tls_client = client.wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO())
        with pytest.raises(ssl.SSLWantReadError):
            tls_client.do_handshake()
        hello = outgoing.read()
    with serving(tls, handshake_timeout=60) as server:
        answer = _send_and_read_until_closed(server.port, hello, timeout=10)
        failure = server.next_failure()
    assert answer[:1] == b"\x15" and len(answer) == 7, answer  # one fatal alert record
    assert failure is not None and failure.level is LogLevel.INFO
