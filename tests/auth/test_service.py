"""mailgate-auth end to end: real HTTP over loopback, asked by mailgate's own auth_http client."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import argon2
import bcrypt
import pytest

from mailgate.auth.client import query_auth_http
from mailgate.auth.directory import Routes, WatchedFile, parse_certificate_map, parse_routes, parse_users
from mailgate.auth.passwords import apop_digest, cram_md5_digest
from mailgate.auth.request import AuthAttempt
from mailgate.auth.response import AuthDecision, Backend, Reject
from mailgate.auth.service import AuthService, ServiceSettings
from mailgate.config.model import Protocol, VerifyClient
from mailgate.protocol.credentials import AuthMethod, Credentials
from mailgate.tls.facts import ClientCertificate, TlsFacts
from tests.auth.servers import auth_url, server_config

SALT = b"<1896434728.1700000000@mail.example.com>"
FINGERPRINT = "0123456789abcdef0123456789abcdef01234567"
SHA512_CRYPT = (
    "$6$abcdefgh$ltjgWl6579NluT/Vi1nwEvcil.G5Nbc4NiXZaNGStk8PSwGfQv72N2CKPPrVACtLtip/cZ/1GM/O6IND4WQhG."
)
ROUTES = """\
backend store1 imap=10.0.0.5:143 pop3=10.0.0.5:110 smtp=10.0.0.5:25
backend store2 imap=[2001:db8::5]:143 pop3=[2001:db8::5]:110
domain example.com store1
domain example.org store2
"""


def users_text() -> str:
    fast_argon2 = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    return "\n".join(
        [
            "# test users",
            "alice@example.com:{BLF-CRYPT}" + bcrypt.hashpw(b"alicepass", bcrypt.gensalt(4)).decode(),
            "bob@example.com:{PLAIN}bobpass:store2",
            "carol@example.org:{SHA512-CRYPT}" + SHA512_CRYPT,
            "dave@example.com:{ARGON2ID}" + fast_argon2.hash(b"davepass"),
            "erin@example.com:{SSHA256}"
            + base64.b64encode(hashlib.sha256(b"secretNaCl").digest() + b"NaCl").decode(),
            "frank@nowhere.test:{PLAIN}frankpass",
            "gina@example.com:{PLAIN}ginapass:1000:1000::/home/gina::",
        ]
    )


class Running:
    """A service on a loopback port, and the mail server configurations that ask it."""

    def __init__(self, tmp_path: Path, settings: ServiceSettings | None = None) -> None:
        self.users_path = tmp_path / "users"
        self.users_path.write_text(users_text())
        routes_path = tmp_path / "routes"
        routes_path.write_text(ROUTES)
        certificates_path = tmp_path / "certificates"
        certificates_path.write_text(
            f"bob@example.com fingerprint {FINGERPRINT}\nalice@example.com subject CN=alice,O=Example\n"
        )
        self.service = AuthService(
            WatchedFile(self.users_path, parse_users),
            WatchedFile(routes_path, lambda text, path: parse_routes(text, path, Routes())),
            WatchedFile(certificates_path, parse_certificate_map),
            settings,
        )

    def ask(
        self,
        credentials: Credentials,
        attempt: int = 1,
        tls: TlsFacts | None = None,
        client: str = "192.0.2.42",
    ) -> AuthDecision:
        async def run() -> AuthDecision:
            tcp = await asyncio.start_server(self.service.handle_connection, "127.0.0.1", 0)
            port = tcp.sockets[0].getsockname()[1]
            verify = VerifyClient.ON if tls is not None else VerifyClient.OFF
            server = server_config(credentials.protocol, url=auth_url(port=port), verify_client=verify)
            async with tcp:
                return await query_auth_http(server, AuthAttempt(credentials, attempt, client, tls=tls))

        return asyncio.run(run())


@pytest.fixture
def running(tmp_path: Path) -> Running:
    return Running(tmp_path)


def plain(login: str, password: str, protocol: Protocol = Protocol.IMAP) -> Credentials:
    return Credentials(protocol, AuthMethod.PLAIN, login.encode(), password.encode(), imap_tag=b"a1")


@pytest.mark.parametrize(
    ("login", "password", "address", "port"),
    [
        ("alice@example.com", "alicepass", "10.0.0.5", 143),
        ("bob@example.com", "bobpass", "2001:db8::5", 143),
        ("carol@example.org", "secret", "2001:db8::5", 143),
        ("dave@example.com", "davepass", "10.0.0.5", 143),
        ("erin@example.com", "secret", "10.0.0.5", 143),
        ("gina@example.com", "ginapass", "10.0.0.5", 143),
    ],
)
def test_each_hash_scheme_logs_in_and_routes(
    running: Running, login: str, password: str, address: str, port: int
) -> None:
    decision = running.ask(plain(login, password))
    assert isinstance(decision, Backend)
    assert (decision.address, decision.port, decision.login, decision.password) == (
        address,
        port,
        login.encode(),
        password.encode(),
    )


def test_protocol_picks_the_backend_port(running: Running) -> None:
    decision = running.ask(plain("alice@example.com", "alicepass", Protocol.POP3))
    assert isinstance(decision, Backend)
    assert decision.port == 110


def test_login_without_a_route_is_a_temporary_failure(running: Running) -> None:
    assert running.ask(plain("frank@nowhere.test", "frankpass")) == Reject(
        b"Temporary server problem, try again later"
    )
    smtp = running.ask(plain("bob@example.com", "bobpass", Protocol.SMTP))
    assert isinstance(smtp, Reject)
    assert smtp.client_line(Protocol.SMTP) == b"451 4.3.0 Temporary server problem, try again later\r\n"


def test_failures_slow_down_per_client_and_user(running: Running) -> None:
    waits = []
    for _ in range(4):
        decision = running.ask(plain("alice@example.com", "wrong"))
        assert isinstance(decision, Reject)
        assert decision.text == b"Invalid login or password"
        waits.append(decision.wait)
    assert waits == [1, 2, 4, 8]
    other_client_same_user = running.ask(plain("alice@example.com", "wrong"), client="198.51.100.1")
    assert isinstance(other_client_same_user, Reject)
    assert other_client_same_user.wait == 16
    assert isinstance(running.ask(plain("alice@example.com", "alicepass")), Backend)
    fresh = running.ask(plain("alice@example.com", "wrong"), client="203.0.113.9")
    assert isinstance(fresh, Reject)
    assert fresh.wait == 1


def test_wait_is_capped_and_dropped_after_the_attempt_limit(tmp_path: Path) -> None:
    running = Running(tmp_path, ServiceSettings(max_wait_attempts=3, max_wait=2))
    waits = [running.ask(plain("nobody", "x"), attempt=attempt) for attempt in (1, 2, 3, 4)]
    assert [decision.wait for decision in waits if isinstance(decision, Reject)] == [1, 2, 0, 0]


def test_smtp_failures_carry_an_smtp_code(running: Running) -> None:
    decision = running.ask(plain("alice@example.com", "wrong", Protocol.SMTP))
    assert isinstance(decision, Reject)
    assert decision.client_line(Protocol.SMTP) == b"535 5.7.8 Invalid login or password\r\n"


def test_apop_and_cram_md5_work_for_plain_users_and_return_the_password(running: Running) -> None:
    apop = Credentials(
        Protocol.POP3, AuthMethod.APOP, b"bob@example.com", apop_digest(SALT, b"bobpass").encode(), salt=SALT
    )
    decision = running.ask(apop)
    assert isinstance(decision, Backend)
    assert decision.password == b"bobpass"
    cram = Credentials(
        Protocol.IMAP,
        AuthMethod.CRAM_MD5,
        b"bob@example.com",
        cram_md5_digest(SALT, b"bobpass").encode(),
        salt=SALT,
    )
    assert isinstance(running.ask(cram), Backend)
    wrong = Credentials(Protocol.POP3, AuthMethod.APOP, b"bob@example.com", b"0" * 32, salt=SALT)
    assert isinstance(running.ask(wrong), Reject)


def test_apop_for_a_hashed_user_is_refused_with_a_log_line(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    apop = Credentials(Protocol.POP3, AuthMethod.APOP, b"alice@example.com", b"0" * 32, salt=SALT)
    with caplog.at_level(logging.INFO, "mailgate.auth.service"):
        assert isinstance(running.ask(apop), Reject)
    assert "APOP needs a {PLAIN} password in the users file" in caplog.text


def certificate_tls(
    verify: str = "SUCCESS", fingerprint: str = FINGERPRINT, subject: str = "CN=bob"
) -> TlsFacts:
    certificate = ClientCertificate(subject, "CN=Test CA", "01", fingerprint, b"")
    return TlsFacts("TLSv1.3", "TLS_AES_256_GCM_SHA384", verify=verify, certificate=certificate)


def test_verified_certificate_maps_to_its_user(running: Running) -> None:
    external = Credentials(Protocol.IMAP, AuthMethod.EXTERNAL, b"")
    decision = running.ask(external, tls=certificate_tls())
    assert isinstance(decision, Backend)
    assert (decision.login, decision.password, decision.address) == (
        b"bob@example.com",
        b"bobpass",
        "2001:db8::5",
    )


def test_certificate_subject_maps_too_and_smtp_needs_no_password(running: Running) -> None:
    external = Credentials(Protocol.SMTP, AuthMethod.EXTERNAL, b"alice@example.com")
    decision = running.ask(external, tls=certificate_tls(fingerprint="f" * 40, subject="CN=alice,O=Example"))
    assert decision == Backend("10.0.0.5", socket.AF_INET, 25, b"alice@example.com", None, "10.0.0.5:25")


@pytest.mark.parametrize(
    ("login", "tls"),
    [
        (b"", certificate_tls(verify="FAILED:self-signed certificate")),
        (b"", certificate_tls(verify="NONE")),
        (b"", certificate_tls(fingerprint="e" * 40)),
        (b"alice@example.com", certificate_tls()),
    ],
)
def test_unverified_unmapped_or_foreign_certificates_are_refused(
    running: Running, login: bytes, tls: TlsFacts
) -> None:
    decision = running.ask(Credentials(Protocol.IMAP, AuthMethod.EXTERNAL, login), tls=tls)
    assert isinstance(decision, Reject)


def test_relay_without_auth_goes_only_to_routed_domains(running: Running) -> None:
    def relay(recipient: bytes) -> AuthDecision:
        return running.ask(
            Credentials(
                Protocol.SMTP,
                AuthMethod.NONE,
                smtp_helo=b"h",
                smtp_from=b"MAIL FROM:<x@y>",
                smtp_to=recipient,
            )
        )

    assert relay(b"RCPT TO:<someone@Example.COM>") == Backend(
        "10.0.0.5", socket.AF_INET, 25, b"", None, "10.0.0.5:25"
    )
    denied = relay(b"RCPT TO:<someone@elsewhere.net>")
    assert isinstance(denied, Reject)
    assert denied.client_line(Protocol.SMTP) == b"554 5.7.1 Relay access denied\r\n"


def test_users_file_is_reloaded_when_it_changes(running: Running, caplog: pytest.LogCaptureFixture) -> None:
    assert isinstance(running.ask(plain("bob@example.com", "bobpass")), Backend)
    running.users_path.write_text("bob@example.com:{PLAIN}newpass:store2\n")
    os.utime(running.users_path, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert isinstance(running.ask(plain("bob@example.com", "bobpass")), Reject)
    assert isinstance(running.ask(plain("bob@example.com", "newpass")), Backend)
    running.users_path.write_text("broken line without password\n")
    with caplog.at_level(logging.ERROR, "mailgate.auth.service"):
        assert isinstance(running.ask(plain("bob@example.com", "newpass")), Backend)
    assert "keeping the previous" in caplog.text


def test_passwords_never_reach_the_log(running: Running, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        running.ask(plain("alice@example.com", "alicepass"))
        running.ask(plain("alice@example.com", "WrongSecret123"))
        running.ask(
            Credentials(
                Protocol.POP3,
                AuthMethod.APOP,
                b"bob@example.com",
                apop_digest(SALT, b"bobpass").encode(),
                salt=SALT,
            )
        )
    assert "alice@example.com" in caplog.text
    for secret in ("alicepass", "WrongSecret123", "bobpass", apop_digest(SALT, b"bobpass")):
        assert secret not in caplog.text


def test_auth_key_is_required_when_configured(tmp_path: Path) -> None:
    running = Running(tmp_path, ServiceSettings(auth_key="k3y"))
    assert isinstance(running.ask(plain("alice@example.com", "alicepass")), Reject)

    async def run() -> AuthDecision:
        tcp = await asyncio.start_server(running.service.handle_connection, "127.0.0.1", 0)
        server = server_config(
            url=auth_url(port=tcp.sockets[0].getsockname()[1]), headers=(("X-Auth-Key", "k3y"),)
        )
        async with tcp:
            return await query_auth_http(
                server, AuthAttempt(plain("alice@example.com", "alicepass"), 1, "192.0.2.1")
            )

    assert isinstance(asyncio.run(run()), Backend)


def test_non_auth_http_request_gets_a_400(running: Running) -> None:
    async def run() -> bytes:
        tcp = await asyncio.start_server(running.service.handle_connection, "127.0.0.1", 0)
        async with tcp:
            reader, writer = await asyncio.open_connection("127.0.0.1", tcp.sockets[0].getsockname()[1])
            writer.write(b"POST / HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = await reader.read()
            writer.close()
            return reply

    assert asyncio.run(run()) == b"HTTP/1.0 400 Bad Request\r\nAuth-Status: Invalid auth request\r\n\r\n"


COMMAND = [sys.executable, "-c", "import sys; from mailgate.auth.service import main; sys.exit(main())"]


def test_command_help_describes_usage() -> None:
    result = subprocess.run([*COMMAND, "--help"], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0
    assert "--users" in result.stdout and "--backend" in result.stdout and "--cert-map" in result.stdout


def test_command_reports_a_bad_users_file_without_traceback(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("alice:{MD5}abc\n")
    result = subprocess.run(
        [*COMMAND, "--users", str(users)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 1
    assert result.stderr.strip() == f'mailgate-auth: {users}:1: unknown password scheme "{{MD5}}"'


@pytest.fixture
def command_server(tmp_path: Path) -> Iterator[str]:
    users = tmp_path / "users"
    users.write_text("alice@example.com:{PLAIN}alicepass\n")
    path = str(tmp_path / "auth.sock")
    process = subprocess.Popen(
        [*COMMAND, "--users", str(users), "--backend", "imap=127.0.0.1:1143", "--listen", f"unix:{path}"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(path):
            assert process.poll() is None and time.monotonic() < deadline, "mailgate-auth did not start"
            time.sleep(0.05)
        yield path
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_command_serves_over_a_unix_socket_with_curl(command_server: str) -> None:
    result = subprocess.run(
        ["curl", "-s", "-i", "--unix-socket", command_server, "http://localhost/",
         "-H", "Auth-Method: plain", "-H", "Auth-User: alice@example.com", "-H", "Auth-Pass: alicepass",
         "-H", "Auth-Protocol: imap", "-H", "Auth-Login-Attempt: 1", "-H", "Client-IP: 127.0.0.1"],
        capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    assert (
        result.stdout
        == b"HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 127.0.0.1\r\nAuth-Port: 1143\r\n\r\n"
    )
