"""The backend login engines against real Dovecot (IMAP, POP3) and Postfix (SMTP with XCLIENT) on loopback."""

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from mailgate.config.model import LogLevel, Protocol
from mailgate.protocol.credentials import AuthMethod, Credentials
from mailgate.proxy.backend_login import BackendLogin, Done, Failed, Send, backend_login_for
from tests.proxy.servers import server_config
from tests.support.dovecot import DEFAULT_USERS, Dovecot
from tests.support.mailstore import MailUser, build_message
from tests.support.postfix import UNKNOWN_ADDRESS, Postfix

TIMEOUT = 20.0


def _engine(
    protocol: Protocol,
    credentials: Credentials,
    login: str,
    password: str | None,
    *,
    client_address: str = "192.0.2.42",
    **proxy: Any,
) -> BackendLogin:
    return backend_login_for(
        server_config(protocol, **proxy),
        credentials,
        login=login.encode(),
        password=None if password is None else password.encode(),
        client_address=client_address,
        client_host="client.example.org",
    )


@contextlib.contextmanager
def _logged_in(engine: BackendLogin, host: str, port: int) -> Iterator[tuple[Done | Failed, socket.socket]]:
    """Drive `engine` over a real connection until it finishes; yields its last event and the socket."""
    with socket.create_connection((host, port), timeout=TIMEOUT) as backend:
        while True:
            for event in engine.receive_data(backend.recv(4096)):
                if isinstance(event, Send):
                    backend.sendall(event.data)
                else:
                    yield event, backend
                    return


def _read_until(backend: socket.socket, ending: bytes) -> bytes:
    data = b""
    while not data.endswith(ending):
        chunk = backend.recv(4096)
        assert chunk, f"backend closed; got {data!r}"
        data += chunk
    return data


def test_imap_login_to_dovecot_hands_the_tagged_ok_to_the_client(
    dovecot: Dovecot, mail_user: MailUser
) -> None:
    credentials = Credentials(Protocol.IMAP, AuthMethod.PLAIN, imap_tag=b"a1")
    engine = _engine(Protocol.IMAP, credentials, mail_user.name, mail_user.password)
    with _logged_in(engine, dovecot.host, dovecot.imap_port) as (event, backend):
        assert isinstance(event, Done)
        assert event.client_bytes.startswith(b"a1 OK ")
        assert event.client_bytes.endswith(b"Logged in\r\n")
        backend.sendall(b"a2 LOGOUT\r\n")
        assert b"\r\na2 OK Logout completed" in _read_until(backend, b"secs).\r\n")


def test_imap_login_sends_any_password_bytes_through_literals(dovecot: Dovecot) -> None:
    tricky = next(user for user in DEFAULT_USERS if user.name == "tricky")
    credentials = Credentials(Protocol.IMAP, AuthMethod.PLAIN, imap_tag=b"A0001")
    engine = _engine(Protocol.IMAP, credentials, tricky.name, tricky.password)
    with _logged_in(engine, dovecot.host, dovecot.imap_port) as (event, _):
        assert isinstance(event, Done)
        assert event.client_bytes.startswith(b"A0001 OK ")


@pytest.mark.parametrize(("pass_error_message", "level"), [(False, LogLevel.ERROR), (True, LogLevel.INFO)])
def test_imap_wrong_password_at_dovecot_fails_with_its_reply(
    dovecot: Dovecot, mail_user: MailUser, pass_error_message: bool, level: LogLevel
) -> None:
    credentials = Credentials(Protocol.IMAP, AuthMethod.PLAIN, imap_tag=b"a1")
    engine = _engine(
        Protocol.IMAP, credentials, mail_user.name, "wrong", pass_error_message=pass_error_message
    )
    with _logged_in(engine, dovecot.host, dovecot.imap_port) as (event, _):
        message = 'upstream sent invalid response: "NO [AUTHENTICATIONFAILED] Authentication failed."'
        reply = b"a1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
        client_bytes = reply if pass_error_message else b"* BAD internal server error\r\n"
        assert event == Failed(level, message, client_bytes)


def test_pop3_login_to_dovecot_hands_the_reply_to_pass_to_the_client(
    dovecot: Dovecot, mail_user: MailUser
) -> None:
    engine = _engine(
        Protocol.POP3, Credentials(Protocol.POP3, AuthMethod.PLAIN), mail_user.name, mail_user.password
    )
    with _logged_in(engine, dovecot.host, dovecot.pop3_port) as (event, backend):
        assert event == Done(b"+OK Logged in.\r\n")
        backend.sendall(b"STAT\r\n")
        assert _read_until(backend, b"\r\n") == b"+OK 0 0\r\n"


def test_pop3_wrong_password_at_dovecot_is_an_invalid_response(dovecot: Dovecot, mail_user: MailUser) -> None:
    engine = _engine(Protocol.POP3, Credentials(Protocol.POP3, AuthMethod.PLAIN), mail_user.name, "wrong")
    with _logged_in(engine, dovecot.host, dovecot.pop3_port) as (event, _):
        message = 'upstream sent invalid response: "-ERR [AUTH] Authentication failed."'
        assert event == Failed(LogLevel.ERROR, message, b"-ERR internal server error\r\n")


def _smtp_credentials(method: AuthMethod = AuthMethod.PLAIN, **fields: Any) -> Credentials:
    return Credentials(Protocol.SMTP, method, smtp_helo=b"client.example.org", smtp_esmtp=True, **fields)


def _send_message(backend: socket.socket, recipient: str, subject: str) -> None:
    backend.sendall(f"MAIL FROM:<sender@example.org>\r\nRCPT TO:<{recipient}>\r\nDATA\r\n".encode())
    replies = _read_until(backend, b"354 End data with <CR><LF>.<CR><LF>\r\n")
    assert replies.startswith(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"), replies
    backend.sendall(build_message(subject, recipient=recipient) + b".\r\n")
    assert _read_until(backend, b"\r\n").startswith(b"250 2.0.0 Ok: queued")


@pytest.mark.parametrize(
    ("client_address", "received_address"),
    [("192.0.2.42", "192.0.2.42"), ("2001:db8::42", "IPv6:2001:db8::42")],
)
def test_smtp_xclient_login_to_postfix_delivers_as_the_forwarded_authenticated_client(
    postfix: Postfix, mail_user: MailUser, client_address: str, received_address: str
) -> None:
    alice = next(user for user in DEFAULT_USERS if user.name == "alice")
    engine = _engine(
        Protocol.SMTP, _smtp_credentials(), alice.name, alice.password, client_address=client_address
    )
    subject = f"xclient login {client_address}"
    with _logged_in(engine, postfix.host, postfix.smtp_port) as (event, backend):
        assert event == Done(b"235 2.0.0 OK\r\n")
        _send_message(backend, mail_user.address, subject)
    delivered = postfix.wait_for_delivery(mail_user, lambda message: message.header("Subject") == subject)
    received = delivered.header("Received") or ""
    assert f"from client.example.org (client.example.org [{received_address}])" in received
    assert "ESMTPA" in received


def test_smtp_proxy_smtp_auth_logs_in_to_postfix_with_auth_plain(postfix: Postfix) -> None:
    alice = next(user for user in DEFAULT_USERS if user.name == "alice")
    engine = _engine(Protocol.SMTP, _smtp_credentials(), alice.name, alice.password, smtp_auth=True)
    with _logged_in(engine, postfix.host, postfix.smtp_port) as (event, _):
        assert event == Done(b"235 2.0.0 OK\r\n")


def test_smtp_proxy_smtp_auth_with_a_wrong_password_is_an_invalid_response(postfix: Postfix) -> None:
    engine = _engine(Protocol.SMTP, _smtp_credentials(), "alice", "wrong", smtp_auth=True, xclient=False)
    with _logged_in(engine, postfix.host, postfix.smtp_port) as (event, _):
        message = 'upstream sent invalid response: "535 5.7.8 Error: authentication failed: '
        assert isinstance(event, Failed)
        assert event.log_message is not None and event.log_message.startswith(message)


@pytest.mark.parametrize(("recipient_is_known", "expected_code"), [(True, b"250 "), (False, b"550 ")])
def test_smtp_none_replays_mail_and_rcpt_to_postfix_and_relays_its_rcpt_reply(
    postfix: Postfix, mail_user: MailUser, recipient_is_known: bool, expected_code: bytes
) -> None:
    recipient = mail_user.address if recipient_is_known else UNKNOWN_ADDRESS
    credentials = _smtp_credentials(
        AuthMethod.NONE,
        smtp_from=b"MAIL FROM:<sender@example.org>",
        smtp_to=f"RCPT TO:<{recipient}>".encode(),
    )
    engine = _engine(Protocol.SMTP, credentials, "", None, xclient=False)
    with _logged_in(engine, postfix.host, postfix.smtp_port) as (event, _):
        assert isinstance(event, Done)
        assert event.client_bytes.startswith(expected_code)
