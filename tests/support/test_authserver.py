"""Tests of the recording auth_http server used to compare nginx's and mailgate's auth requests."""

from __future__ import annotations

import socket

import pytest

from tests.support.authserver import AuthReply, AuthRequest, AuthServer
from tests.support.loopback import IPV6_LOOPBACK, ipv6_loopback_available

NGINX_LIKE_REQUEST = (
    b"GET /auth HTTP/1.0\r\n"
    b"Host: localhost\r\n"
    b"Auth-Method: plain\r\n"
    b"Auth-User: alice\r\n"
    b"Auth-Pass: p%20w\xe9\r\n"
    b"Auth-Protocol: imap\r\n"
    b"Auth-Login-Attempt: 1\r\n"
    b"Client-IP: 127.0.0.1\r\n"
    b"\r\n"
)


def _exchange(server: AuthServer, request: bytes, timeout: float = 10.0) -> bytes:
    """Send ``request`` like an auth_http client and return everything until the server closes."""
    with socket.create_connection((server.host, server.port), timeout=timeout) as connection:
        connection.sendall(request)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    return received


def _request_for(protocol: str) -> bytes:
    return NGINX_LIKE_REQUEST.replace(b"Auth-Protocol: imap", b"Auth-Protocol: " + protocol.encode())


def test_records_request_bytes_and_headers_in_order(auth_server: AuthServer) -> None:
    auth_server.route("imap", "127.0.0.1", 143)
    _exchange(auth_server, NGINX_LIKE_REQUEST)
    (request,) = auth_server.requests
    assert request.raw == NGINX_LIKE_REQUEST
    assert request.complete
    assert request.request_line == "GET /auth HTTP/1.0"
    assert [name for name, _ in request.headers] == [
        "Host",
        "Auth-Method",
        "Auth-User",
        "Auth-Pass",
        "Auth-Protocol",
        "Auth-Login-Attempt",
        "Client-IP",
    ]
    assert request.header("auth-pass") == "p%20w\xe9"  # Latin-1: one character per byte
    assert request.peer[0] == "127.0.0.1"


def test_routes_each_protocol_to_its_backend_by_default(auth_server: AuthServer) -> None:
    auth_server.route("imap", "127.0.0.1", 1143)
    auth_server.route("smtp", "127.0.0.1", 1025)
    imap_reply = _exchange(auth_server, _request_for("imap"))
    smtp_reply = _exchange(auth_server, _request_for("smtp"))
    assert (
        imap_reply
        == b"HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 127.0.0.1\r\nAuth-Port: 1143\r\n\r\n"
    )
    assert b"Auth-Port: 1025\r\n" in smtp_reply


def test_unrouted_protocol_gets_an_error_naming_it(auth_server: AuthServer) -> None:
    reply = _exchange(auth_server, _request_for("pop3"))
    assert b"Auth-Status: test auth server has no route for protocol 'pop3'\r\n" in reply


def test_queued_replies_answer_the_next_requests_in_order_then_the_default_applies(
    auth_server: AuthServer,
) -> None:
    auth_server.set_default(AuthReply.error("Invalid login or password"))
    auth_server.respond_with(
        AuthReply.error("Temporary server problem, try again later", wait=3, error_code="451 4.3.0"),
        AuthReply.retry_later(1),
    )
    first = _exchange(auth_server, NGINX_LIKE_REQUEST)
    second = _exchange(auth_server, NGINX_LIKE_REQUEST)
    third = _exchange(auth_server, NGINX_LIKE_REQUEST)
    assert first == (
        b"HTTP/1.0 200 OK\r\nAuth-Status: Temporary server problem, try again later\r\n"
        b"Auth-Wait: 3\r\nAuth-Error-Code: 451 4.3.0\r\n\r\n"
    )
    assert second == b"HTTP/1.0 200 OK\r\nAuth-Status: WAIT\r\nAuth-Wait: 1\r\n\r\n"
    assert third == b"HTTP/1.0 200 OK\r\nAuth-Status: Invalid login or password\r\n\r\n"


def test_a_responder_callable_sees_the_request_it_answers(auth_server: AuthServer) -> None:
    def by_user(request: AuthRequest) -> AuthReply:
        return AuthReply.ok(
            "127.0.0.1", 1143, user=f"backend-{request.header('Auth-User')}", password="secret"
        )

    auth_server.set_default(by_user)
    reply = _exchange(auth_server, NGINX_LIKE_REQUEST)
    assert b"Auth-User: backend-alice\r\nAuth-Pass: secret\r\n" in reply


def test_garbage_truncated_and_closed_replies_are_sent_as_scripted(auth_server: AuthServer) -> None:
    auth_server.respond_with(
        AuthReply.garbage(b"\x00not http"), AuthReply.truncated(), AuthReply.close_early()
    )
    assert _exchange(auth_server, NGINX_LIKE_REQUEST) == b"\x00not http"
    assert _exchange(auth_server, NGINX_LIKE_REQUEST) == b"HTTP/1.0 200 OK\r\nAuth-Status: OK\r\n"
    assert _exchange(auth_server, NGINX_LIKE_REQUEST) == b""
    assert len(auth_server.requests) == 3


def test_oversized_reply_exceeds_nginx_buffer_and_still_ends_with_an_empty_line(
    auth_server: AuthServer,
) -> None:
    auth_server.respond_with(AuthReply.oversized("127.0.0.1", 1143, size=1500))
    reply = _exchange(auth_server, NGINX_LIKE_REQUEST)
    assert len(reply) >= 1500
    assert reply.startswith(b"HTTP/1.0 200 OK\r\nAuth-Status: OK\r\n")
    assert reply.endswith(b"\r\n\r\n")
    assert reply.count(b"\r\n\r\n") == 1


def test_delayed_reply_keeps_the_client_waiting(auth_server: AuthServer) -> None:
    auth_server.respond_with(AuthReply.ok("127.0.0.1", 1143).delayed(60))
    with pytest.raises(TimeoutError):
        _exchange(auth_server, NGINX_LIKE_REQUEST, timeout=0.3)
    assert len(auth_server.requests) == 1


def test_stop_abandons_a_delayed_reply() -> None:
    server = AuthServer().start()
    server.respond_with(AuthReply.close_early().delayed(600))
    with socket.create_connection((server.host, server.port), timeout=10) as connection:
        connection.sendall(NGINX_LIKE_REQUEST)
        server.wait_for_requests(1)
        server.stop()
        assert connection.recv(100) == b""


def test_request_cut_short_by_the_client_is_recorded_as_incomplete(auth_server: AuthServer) -> None:
    with socket.create_connection((auth_server.host, auth_server.port), timeout=10) as connection:
        connection.sendall(b"GET /auth HTTP/1.0\r\nHost: local")
    (request,) = auth_server.wait_for_requests(1)
    assert not request.complete
    assert request.raw == b"GET /auth HTTP/1.0\r\nHost: local"
    assert request.headers == [("Host", "local")]


def test_wait_for_requests_times_out_when_too_few_arrive(auth_server: AuthServer) -> None:
    with pytest.raises(TimeoutError, match="got 0 requests, expected 1"):
        auth_server.wait_for_requests(1, timeout=0.1)


@pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback on this machine")
def test_serves_on_ipv6_loopback() -> None:
    with AuthServer(IPV6_LOOPBACK) as server:
        server.route("imap", "::1", 1143)
        assert server.address == f"[::1]:{server.port}"
        with socket.create_connection((IPV6_LOOPBACK, server.port), timeout=10) as connection:
            connection.sendall(NGINX_LIKE_REQUEST)
            reply = connection.recv(4096)
    assert b"Auth-Server: ::1\r\n" in reply
