"""Real clients through the proxy to real backends: imaplib, poplib, smtplib and curl, Dovecot and Postfix.

The auth server routes by protocol (`harness.Directory`). Every data test runs against mailgate and, as the
control that the client script and the configuration are right, against Debian's nginx on the same file.
The login and error scripts then run through a recording `Tap` against both, and what the client received
must be the same bytes (only nginx's salt is normalised).
"""

from __future__ import annotations

import base64
import hashlib
import imaplib
import poplib
import re
import shutil
import smtplib
import socket
import subprocess
import types
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.harness import (
    ALIAS_PASSWORD,
    ALIAS_PREFIX,
    INVALID_LOGIN,
    IO_TIMEOUT,
    KINDS,
    Directory,
    LineClient,
    ProxyKind,
    RunningProxy,
    Tap,
    normalise,
    running_proxy,
)
from tests.support.authserver import AuthServer
from tests.support.dovecot import DEFAULT_USERS, Dovecot
from tests.support.mailstore import MailUser, StoredMessage, build_message
from tests.support.postfix import UNKNOWN_ADDRESS, Postfix

pytestmark = pytest.mark.nginx

BIG_MESSAGE_SIZE = 4 * 1024 * 1024
CLIENT_HELO = "client.example.org"
SENDER = "sender@example.org"

TEMPLATE = """
events {
}

mail {
    server_name mail.example.com;
    auth_http $auth_http;

    server {
        listen 127.0.0.1:$port_imap;
        protocol imap;
        imap_auth plain login cram-md5;
    }

    server {
        listen 127.0.0.1:$port_imap_pass_error;
        protocol imap;
        proxy_pass_error_message on;
    }

    server {
        listen 127.0.0.1:$port_pop3;
        protocol pop3;
        pop3_auth plain apop cram-md5;
    }

    server {
        listen 127.0.0.1:$port_pop3_pass_error;
        protocol pop3;
        proxy_pass_error_message on;
    }

    server {
        listen 127.0.0.1:$port_smtp;
        protocol smtp;
        smtp_auth login plain;
    }

    server {
        listen 127.0.0.1:$port_smtp_relay;
        protocol smtp;
        smtp_auth none;
    }

    server {
        listen 127.0.0.1:$port_smtp_backend_auth;
        protocol smtp;
        xclient off;
        proxy_smtp_auth on;
        auth_http_header X-Backend-Checks password;
    }
}
"""


@pytest.fixture(scope="module")
def proxies(
    dovecot: Dovecot, postfix: Postfix, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[ProxyKind, RunningProxy]]:
    """nginx and mailgate on TEMPLATE, both asking one auth server that routes to Dovecot and Postfix."""
    directory = tmp_path_factory.mktemp("real-backends")
    with ExitStack() as stack:
        auth = stack.enter_context(AuthServer())
        auth.set_default(Directory(dovecot, postfix))
        yield {
            kind: stack.enter_context(
                running_proxy(kind, TEMPLATE, directory / kind, auth_http=auth.url("/auth"))
            )
            for kind in KINDS
        }


def _subject_is(subject: str) -> Callable[[StoredMessage], bool]:
    return lambda message: message.header("Subject") == subject


def _body(message: bytes) -> bytes:
    """A message's body with LF line ends, as dovecot-lda stores mail that came through Postfix."""
    return message.split(b"\r\n\r\n", 1)[1].replace(b"\r\n", b"\n")


@contextmanager
def _fixed_imap_tags() -> Iterator[None]:
    """imaplib picks a random tag prefix per connection; fix it so two runs send the same commands."""
    original = imaplib.random  # type: ignore[attr-defined]
    imaplib.random = types.SimpleNamespace(randint=lambda low, high: 4660)  # type: ignore[attr-defined]
    try:
        yield
    finally:
        imaplib.random = original  # type: ignore[attr-defined]


def _imap(address: tuple[str, int]) -> imaplib.IMAP4:
    with _fixed_imap_tags():
        return imaplib.IMAP4(*address, timeout=IO_TIMEOUT)


# --- data through the proxy --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_imaplib_fetches_a_multi_megabyte_message_whose_digest_matches_the_stored_one(
    proxies: dict[ProxyKind, RunningProxy], dovecot: Dovecot, mail_user: MailUser, kind: ProxyKind
) -> None:
    stored = dovecot.maildir(mail_user).deliver(build_message("big over imap", size=BIG_MESSAGE_SIZE))
    client = _imap(proxies[kind].address("imap"))
    try:
        assert client.login(mail_user.name, mail_user.password)[0] == "OK"
        assert client.select("INBOX")[0] == "OK"
        status, found = client.search(None, "HEADER", "Subject", '"big over imap"')
        assert (status, len(found[0].split())) == ("OK", 1)
        status, data = client.fetch(found[0].decode(), "(BODY.PEEK[])")
        assert client.logout()[0] == "BYE"
    finally:
        if client.state != "LOGOUT":
            client.shutdown()
    assert status == "OK"
    fetched = data[0]
    assert isinstance(fetched, tuple)
    assert len(fetched[1]) == len(stored.data) >= BIG_MESSAGE_SIZE
    assert hashlib.sha256(fetched[1]).hexdigest() == stored.sha256


def test_a_client_that_sends_everything_and_half_closes_still_gets_the_whole_session(
    proxies: dict[ProxyKind, RunningProxy], dovecot: Dovecot, mail_user: MailUser
) -> None:
    # Beyond nginx (which closes once the client's EOF is read): mailgate relays until the backend closes,
    # so `printf ... | nc`-style clients get every reply. Dovecot drops a session as soon as it reads an
    # EOF, so the half-close reaches it only once the relay has been quiet (HALF_CLOSE_QUIET).
    stored = dovecot.maildir(mail_user).deliver(build_message("half-closed", size=BIG_MESSAGE_SIZE))
    with LineClient(proxies["mailgate"].address("imap")) as client:
        client.line()
        client.send(
            f"a1 LOGIN {mail_user.name} {mail_user.password}\r\na2 EXAMINE INBOX\r\n"
            "a3 FETCH 1 BODY.PEEK[]\r\na4 LOGOUT\r\n".encode()
        )
        client.sock.shutdown(socket.SHUT_WR)
        received = client.rest()
    literal = f"* 1 FETCH (BODY[] {{{len(stored.data)}}}\r\n".encode()
    assert literal in received
    start = received.index(literal) + len(literal)
    body = received[start : start + len(stored.data)]
    assert len(body) == len(stored.data), f"cut short after {len(received)} bytes: {received[-200:]!r}"
    assert hashlib.sha256(body).hexdigest() == stored.sha256
    assert re.search(rb"\r\na4 OK Logout completed[^\r\n]*\r\n$", received), received[-200:]


def test_a_half_closed_client_without_logout_gets_its_replies_and_then_the_close(
    proxies: dict[ProxyKind, RunningProxy], mail_user: MailUser
) -> None:
    # The half-close reaches Dovecot once it has answered, and Dovecot's close ends the session: no
    # waiting for proxy_timeout (24 hours here).
    with LineClient(proxies["mailgate"].address("imap")) as client:
        client.line()
        client.send(f"a1 LOGIN {mail_user.name} {mail_user.password}\r\na2 NOOP\r\n".encode())
        client.sock.shutdown(socket.SHUT_WR)
        received = client.rest()
    assert re.match(rb"a1 OK [^\r\n]*\r\na2 OK NOOP completed[^\r\n]*\r\n$", received), received


@pytest.mark.parametrize("kind", KINDS)
def test_imaplib_cram_md5_logs_in_with_the_password_the_auth_server_hands_over(
    proxies: dict[ProxyKind, RunningProxy], dovecot: Dovecot, mail_user: MailUser, kind: ProxyKind
) -> None:
    stored = dovecot.maildir(mail_user).deliver(build_message("cram", size=10_000))
    client = _imap(proxies[kind].address("imap"))
    try:
        assert client.login_cram_md5(mail_user.name, mail_user.password)[0] == "OK"
        assert client.select("INBOX", readonly=True) == ("OK", [b"1"])
        status, data = client.fetch("1", "(BODY.PEEK[])")
    finally:
        client.shutdown()
    fetched = data[0]
    assert isinstance(fetched, tuple)
    assert (status, fetched[1]) == ("OK", stored.data)


@pytest.mark.parametrize("kind", KINDS)
def test_imaplib_authenticate_plain_logs_in_and_the_client_tag_comes_back(
    proxies: dict[ProxyKind, RunningProxy], mail_user: MailUser, kind: ProxyKind
) -> None:
    client = _imap(proxies[kind].address("imap"))
    credentials = f"\0{mail_user.name}\0{mail_user.password}".encode()
    try:
        # imaplib raises unless the tagged OK carries the AUTHENTICATE command's own tag.
        assert client.authenticate("PLAIN", lambda challenge: credentials)[0] == "OK"
        assert client.select("INBOX", readonly=True) == ("OK", [b"0"])
    finally:
        client.shutdown()


@pytest.mark.parametrize("kind", KINDS)
def test_poplib_retr_returns_the_stored_multi_megabyte_message(
    proxies: dict[ProxyKind, RunningProxy], dovecot: Dovecot, mail_user: MailUser, kind: ProxyKind
) -> None:
    stored = dovecot.maildir(mail_user).deliver(build_message("big over pop3", size=BIG_MESSAGE_SIZE))
    client = poplib.POP3(*proxies[kind].address("pop3"), timeout=IO_TIMEOUT)
    try:
        client.user(mail_user.name)
        assert client.pass_(mail_user.password).startswith(b"+OK")
        assert client.stat() == (1, len(stored.data))
        _, lines, _ = client.retr(1)
        assert client.quit().startswith(b"+OK")
    finally:
        client.close()
    assert hashlib.sha256(b"\r\n".join(lines) + b"\r\n").hexdigest() == stored.sha256


@pytest.mark.parametrize("kind", KINDS)
def test_poplib_apop_logs_in_with_the_password_the_auth_server_hands_over(
    proxies: dict[ProxyKind, RunningProxy], dovecot: Dovecot, mail_user: MailUser, kind: ProxyKind
) -> None:
    stored = dovecot.maildir(mail_user).deliver(build_message("apop", size=10_000))
    client = poplib.POP3(*proxies[kind].address("pop3"), timeout=IO_TIMEOUT)
    try:
        assert client.apop(mail_user.name, mail_user.password).startswith(b"+OK")
        _, lines, _ = client.retr(1)
    finally:
        client.close()
    assert b"\r\n".join(lines) + b"\r\n" == stored.data


@pytest.mark.parametrize("kind", KINDS)
def test_smtplib_auth_submission_lands_in_the_dovecot_mailbox_as_an_authenticated_client(
    proxies: dict[ProxyKind, RunningProxy], postfix: Postfix, mail_user: MailUser, kind: ProxyKind
) -> None:
    subject = f"smtp auth via {kind}"
    message = build_message(subject, size=1024 * 1024, recipient=mail_user.address)
    with smtplib.SMTP(*proxies[kind].address("smtp"), local_hostname=CLIENT_HELO, timeout=IO_TIMEOUT) as smtp:
        assert smtp.login(mail_user.name, mail_user.password) == (235, b"2.0.0 OK")
        assert smtp.sendmail(SENDER, [mail_user.address], message) == {}
    delivered = postfix.wait_for_delivery(mail_user, _subject_is(subject))
    received = delivered.header("Received") or ""
    # XCLIENT told Postfix the real client, its HELO name and its login (hence ESMTPA).
    assert f"from {CLIENT_HELO} (unknown [127.0.0.1])" in received
    assert "with ESMTPA" in received
    assert _body(message) in delivered.data


@pytest.mark.parametrize("kind", KINDS)
def test_smtp_auth_login_with_an_initial_response_delivers(
    proxies: dict[ProxyKind, RunningProxy], postfix: Postfix, mail_user: MailUser, kind: ProxyKind
) -> None:
    subject = f"auth login via {kind}"
    message = build_message(subject, recipient=mail_user.address)
    with smtplib.SMTP(*proxies[kind].address("smtp"), local_hostname=CLIENT_HELO, timeout=IO_TIMEOUT) as smtp:
        smtp.ehlo()
        smtp.user, smtp.password = mail_user.name, mail_user.password
        assert smtp.auth("LOGIN", smtp.auth_login) == (235, b"2.0.0 OK")
        assert smtp.sendmail(SENDER, [mail_user.address], message) == {}
    delivered = postfix.wait_for_delivery(mail_user, _subject_is(subject))
    assert "with ESMTPA" in (delivered.header("Received") or "")


@pytest.mark.parametrize("kind", KINDS)
def test_smtp_auth_none_relays_through_xclient_into_the_dovecot_mailbox(
    proxies: dict[ProxyKind, RunningProxy], postfix: Postfix, mail_user: MailUser, kind: ProxyKind
) -> None:
    subject = f"smtp relay via {kind}"
    message = build_message(subject, size=300_000, recipient=mail_user.address)
    address = proxies[kind].address("smtp_relay")
    with smtplib.SMTP(*address, local_hostname=CLIENT_HELO, timeout=IO_TIMEOUT) as smtp:
        assert smtp.sendmail(SENDER, [mail_user.address], message) == {}
    delivered = postfix.wait_for_delivery(mail_user, _subject_is(subject))
    received = delivered.header("Received") or ""
    assert f"from {CLIENT_HELO} (unknown [127.0.0.1])" in received
    assert "with ESMTP " in received
    assert delivered.header("Return-Path") == f"<{SENDER}>"
    assert _body(message) in delivered.data


@pytest.mark.parametrize("kind", KINDS)
def test_proxy_smtp_auth_logs_in_to_postfix_with_auth_plain_and_delivers(
    proxies: dict[ProxyKind, RunningProxy], postfix: Postfix, mail_user: MailUser, kind: ProxyKind
) -> None:
    subject = f"backend auth via {kind}"
    message = build_message(subject, size=50_000, recipient=mail_user.address)
    address = proxies[kind].address("smtp_backend_auth")
    with smtplib.SMTP(*address, local_hostname=CLIENT_HELO, timeout=IO_TIMEOUT) as smtp:
        assert smtp.login(mail_user.name, mail_user.password) == (235, b"2.0.0 OK")
        assert smtp.sendmail(SENDER, [mail_user.address], message) == {}
    delivered = postfix.wait_for_delivery(mail_user, _subject_is(subject))
    received = delivered.header("Received") or ""
    # Without XCLIENT, Postfix sees the proxy itself, greeted with its server_name, authenticated by AUTH.
    assert "from mail.example.com (unknown [127.0.0.1])" in received
    assert "with ESMTPA" in received
    assert _body(message) in delivered.data


@pytest.mark.parametrize("kind", KINDS)
def test_imaplib_appends_a_multi_megabyte_message_and_fetches_it_back_intact(
    proxies: dict[ProxyKind, RunningProxy], mail_user: MailUser, kind: ProxyKind
) -> None:
    message = build_message("appended", size=BIG_MESSAGE_SIZE, seed=7)
    client = _imap(proxies[kind].address("imap"))
    try:
        client.login(mail_user.name, mail_user.password)
        status, _ = client.append("INBOX", None, None, message)
        assert status == "OK"
        assert client.select("INBOX", readonly=True) == ("OK", [b"1"])
        status, data = client.fetch("1", "(BODY.PEEK[])")
    finally:
        client.shutdown()
    fetched = data[0]
    assert isinstance(fetched, tuple)
    assert hashlib.sha256(fetched[1]).hexdigest() == hashlib.sha256(message).hexdigest()


@pytest.mark.parametrize("kind", KINDS)
def test_the_auth_server_can_log_the_client_in_as_another_backend_user(
    proxies: dict[ProxyKind, RunningProxy], dovecot: Dovecot, mail_user: MailUser, kind: ProxyKind
) -> None:
    stored = dovecot.maildir(mail_user).deliver(build_message("aliased", size=5_000))
    alias = ALIAS_PREFIX + mail_user.name
    imap = _imap(proxies[kind].address("imap"))
    try:
        assert imap.login(alias, ALIAS_PASSWORD)[0] == "OK"
        assert imap.select("INBOX", readonly=True) == ("OK", [b"1"])
    finally:
        imap.shutdown()
    pop3 = poplib.POP3(*proxies[kind].address("pop3"), timeout=IO_TIMEOUT)
    try:
        pop3.user(alias)
        assert pop3.pass_(ALIAS_PASSWORD).startswith(b"+OK")
        assert pop3.stat() == (1, len(stored.data))
    finally:
        pop3.close()


@pytest.mark.parametrize("kind", KINDS)
def test_a_password_with_quotes_spaces_and_braces_reaches_dovecot_unchanged(
    proxies: dict[ProxyKind, RunningProxy], kind: ProxyKind
) -> None:
    tricky = next(user for user in DEFAULT_USERS if user.name == "tricky")
    imap = _imap(proxies[kind].address("imap"))
    try:
        assert imap.login(tricky.name, tricky.password)[0] == "OK"  # sent as a quoted string
    finally:
        imap.shutdown()
    pop3 = poplib.POP3(*proxies[kind].address("pop3"), timeout=IO_TIMEOUT)
    try:
        pop3.user(tricky.name)
        assert pop3.pass_(tricky.password).startswith(b"+OK")
    finally:
        pop3.close()


# --- curl ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def curl() -> str:
    path = shutil.which("curl")
    if path is None:
        pytest.skip("curl is not installed")
    return path


@dataclass(frozen=True)
class CurlRun:
    """curl against one proxy, with the backends to seed and check."""

    curl: str
    proxy: RunningProxy
    dovecot: Dovecot
    postfix: Postfix

    def run(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return _run_curl(self.curl, *args)


@pytest.fixture(params=KINDS)
def curl_run(
    request: pytest.FixtureRequest,
    proxies: dict[ProxyKind, RunningProxy],
    dovecot: Dovecot,
    postfix: Postfix,
    curl: str,
) -> CurlRun:
    return CurlRun(curl, proxies[request.param], dovecot, postfix)


def _run_curl(curl: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [curl, "--silent", "--show-error", "--max-time", str(IO_TIMEOUT), *args],
        capture_output=True,
        timeout=IO_TIMEOUT * 2,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def test_curl_fetches_a_multi_megabyte_message_over_imap(
    curl_run: CurlRun, mail_user: MailUser, tmp_path: Path
) -> None:
    stored = curl_run.dovecot.maildir(mail_user).deliver(build_message("curl imap", size=BIG_MESSAGE_SIZE))
    host, port = curl_run.proxy.address("imap")
    output = tmp_path / "fetched.eml"
    user = f"{mail_user.name}:{mail_user.password}"
    done = curl_run.run("--user", user, "--output", str(output), f"imap://{host}:{port}/INBOX/;UID=1")
    assert done.returncode == 0, done.stderr
    assert hashlib.sha256(output.read_bytes()).hexdigest() == stored.sha256


def test_curl_retrieves_a_multi_megabyte_message_over_pop3(
    curl_run: CurlRun, mail_user: MailUser, tmp_path: Path
) -> None:
    stored = curl_run.dovecot.maildir(mail_user).deliver(build_message("curl pop3", size=BIG_MESSAGE_SIZE))
    host, port = curl_run.proxy.address("pop3")
    output = tmp_path / "retrieved.eml"
    user = f"{mail_user.name}:{mail_user.password}"
    done = curl_run.run("--user", user, "--output", str(output), f"pop3://{host}:{port}/1")
    assert done.returncode == 0, done.stderr
    assert hashlib.sha256(output.read_bytes()).hexdigest() == stored.sha256


@pytest.mark.parametrize("server", ["smtp", "smtp_relay"])
def test_curl_sends_mail_over_smtp_into_the_dovecot_mailbox(
    curl_run: CurlRun, mail_user: MailUser, tmp_path: Path, server: str
) -> None:
    subject = f"curl {server} via {curl_run.proxy.kind}"
    message = build_message(subject, size=500_000, recipient=mail_user.address)
    upload = tmp_path / "message.eml"
    upload.write_bytes(message)
    host, port = curl_run.proxy.address(server)
    args = ["--mail-from", SENDER, "--mail-rcpt", mail_user.address, "--upload-file", str(upload)]
    authenticated = server == "smtp"
    if authenticated:
        args += ["--user", f"{mail_user.name}:{mail_user.password}"]
    done = curl_run.run(*args, f"smtp://{host}:{port}/{CLIENT_HELO}")
    assert done.returncode == 0, done.stderr
    delivered = curl_run.postfix.wait_for_delivery(mail_user, _subject_is(subject))
    assert ("with ESMTPA" in (delivered.header("Received") or "")) is authenticated
    assert _body(message) in delivered.data


# --- the same scripts against nginx: what the client sees must be the same bytes --------------------------


def _imap_login(address: tuple[str, int], user: MailUser, curl: str) -> None:
    client = _imap(address)
    try:
        client.login(user.name, user.password)
    finally:
        client.shutdown()


def _imap_cram_md5(address: tuple[str, int], user: MailUser, curl: str) -> None:
    client = _imap(address)
    try:
        client.login_cram_md5(user.name, user.password)
    finally:
        client.shutdown()


def _imap_failed_login(login: str, password: str) -> Callable[[tuple[str, int], MailUser, str], None]:
    def script(address: tuple[str, int], user: MailUser, curl: str) -> None:
        client = _imap(address)
        try:
            with pytest.raises((imaplib.IMAP4.error, imaplib.IMAP4.abort)):
                client.login(login.format(user=user.name), password)
        finally:
            client.shutdown()

    return script


def _pop3_login(address: tuple[str, int], user: MailUser, curl: str) -> None:
    client = poplib.POP3(*address, timeout=IO_TIMEOUT)
    try:
        client.capa()
        client.user(user.name)
        client.pass_(user.password)
        client.stat()
    finally:
        client.close()


def _pop3_apop(address: tuple[str, int], user: MailUser, curl: str) -> None:
    client = poplib.POP3(*address, timeout=IO_TIMEOUT)
    try:
        client.apop(user.name, user.password)
        client.noop()
    finally:
        client.close()


def _pop3_failed_login(login: str, password: str) -> Callable[[tuple[str, int], MailUser, str], None]:
    def script(address: tuple[str, int], user: MailUser, curl: str) -> None:
        client = poplib.POP3(*address, timeout=IO_TIMEOUT)
        try:
            client.user(login.format(user=user.name))
            with pytest.raises(poplib.error_proto):
                client.pass_(password)
        finally:
            client.close()

    return script


def _smtp_login(address: tuple[str, int], user: MailUser, curl: str) -> None:
    with smtplib.SMTP(*address, local_hostname=CLIENT_HELO, timeout=IO_TIMEOUT) as smtp:
        smtp.login(user.name, user.password)
        smtp.noop()


def _smtp_failed_login(address: tuple[str, int], user: MailUser, curl: str) -> None:
    smtp = smtplib.SMTP(*address, local_hostname=CLIENT_HELO, timeout=IO_TIMEOUT)
    try:
        # smtplib tries its next mechanism after a 535, and finds the connection closed.
        with pytest.raises((smtplib.SMTPAuthenticationError, smtplib.SMTPServerDisconnected)):
            smtp.login(user.name, "not-" + user.password)
    finally:
        smtp.close()


def _smtp_backend_refuses_login(address: tuple[str, int], user: MailUser, curl: str) -> None:
    smtp = smtplib.SMTP(*address, local_hostname=CLIENT_HELO, timeout=IO_TIMEOUT)
    try:
        with pytest.raises((smtplib.SMTPException, OSError)):
            smtp.login(user.name, "not-" + user.password)
    finally:
        smtp.close()


def _smtp_relay_unknown_recipient(address: tuple[str, int], user: MailUser, curl: str) -> None:
    with (
        smtplib.SMTP(*address, local_hostname=CLIENT_HELO, timeout=IO_TIMEOUT) as smtp,
        pytest.raises(smtplib.SMTPRecipientsRefused),
    ):
        smtp.sendmail(SENDER, [UNKNOWN_ADDRESS], build_message("nobody", seed=1))


def _curl_rejected(scheme: str) -> Callable[[tuple[str, int], MailUser, str], None]:
    def script(address: tuple[str, int], user: MailUser, curl: str) -> None:
        host, port = address
        done = _run_curl(curl, "--user", "reject-me:secret", f"{scheme}://{host}:{port}/")
        assert done.returncode != 0

    return script


def _pipelined(text: str) -> Callable[[tuple[str, int], MailUser, str], None]:
    """After the greeting, send `text` (several commands at once; `{user}`, `{password}`, `{address}`,
    `{plain}` filled in) and read up to the close the last command (LOGOUT, QUIT) causes."""

    def script(address: tuple[str, int], user: MailUser, curl: str) -> None:
        plain = base64.b64encode(f"\0{user.name}\0{user.password}".encode()).decode()
        commands = text.format(user=user.name, password=user.password, address=user.address, plain=plain)
        with LineClient(address) as client:
            client.line()
            client.send(commands.encode())
            client.rest()

    return script


Script = Callable[[tuple[str, int], MailUser, str], None]
SCRIPTS: dict[str, tuple[str, Script]] = {
    "imap-login": ("imap", _imap_login),
    "imap-cram-md5": ("imap", _imap_cram_md5),
    "imap-rejected-by-auth-server": ("imap", _imap_failed_login("reject-{user}", "secret")),
    "imap-backend-refuses": ("imap", _imap_failed_login("{user}", "wrong")),
    "imap-backend-refuses-passed-on": ("imap_pass_error", _imap_failed_login("{user}", "wrong")),
    "pop3-login": ("pop3", _pop3_login),
    "pop3-apop": ("pop3", _pop3_apop),
    "pop3-rejected-by-auth-server": ("pop3", _pop3_failed_login("reject-{user}", "secret")),
    "pop3-backend-refuses": ("pop3", _pop3_failed_login("{user}", "wrong")),
    "pop3-backend-refuses-passed-on": ("pop3_pass_error", _pop3_failed_login("{user}", "wrong")),
    "smtp-login": ("smtp", _smtp_login),
    "smtp-rejected-by-auth-server": ("smtp", _smtp_failed_login),
    "smtp-backend-refuses-auth": ("smtp_backend_auth", _smtp_backend_refuses_login),
    "smtp-relay-unknown-recipient": ("smtp_relay", _smtp_relay_unknown_recipient),
    "curl-imap-rejected": ("imap", _curl_rejected("imap")),
    "curl-pop3-rejected": ("pop3", _curl_rejected("pop3")),
    "curl-smtp-rejected": ("smtp", _curl_rejected("smtp")),
    "imap-pipelined-behind-login": (
        "imap",
        _pipelined("a1 LOGIN {user} {password}\r\na2 SELECT INBOX\r\na3 LOGOUT\r\n"),
    ),
    "pop3-pipelined-behind-pass": ("pop3", _pipelined("USER {user}\r\nPASS {password}\r\nSTAT\r\nQUIT\r\n")),
    # More than the pre-auth buffers hold (POP3: 128 bytes, IMAP: imap_client_buffer 4k) behind the login.
    "pop3-more-than-its-buffer-behind-pass": (
        "pop3",
        _pipelined("USER {user}\r\nPASS {password}\r\n" + "NOOP\r\n" * 200 + "QUIT\r\n"),
    ),
    "imap-more-than-its-buffer-behind-login": (
        "imap",
        _pipelined("a1 LOGIN {user} {password}\r\n" + "n NOOP\r\n" * 2000 + "z LOGOUT\r\n"),
    ),
    "smtp-helo-then-auth-pipelined": (
        "smtp",
        _pipelined(
            "HELO client.example.org\r\nAUTH PLAIN {plain}\r\nMAIL FROM:<sender@example.org>\r\n"
            "RCPT TO:<{address}>\r\nRSET\r\nQUIT\r\n"
        ),
    ),
    "smtp-relay-pipelined": (
        "smtp_relay",
        _pipelined("EHLO client.example.org\r\nMAIL FROM:<>\r\nRCPT TO:<{address}>\r\nRSET\r\nQUIT\r\n"),
    ),
}


# Dovecot ends tagged replies with its own timings, e.g. `(0.001 + 0.000 + 0.001 secs)`: not the proxy's.
_DOVECOT_TIMING = re.compile(rb" \(\d+\.\d+(?: \+ \d+\.\d+)* secs\)")


def _tapped(proxy: RunningProxy, server: str, script: Script, user: MailUser, curl: str) -> list[bytes]:
    """What the client received, per connection, running `script` against `server` of `proxy`."""
    with Tap(proxy.address(server)) as tap:
        script(tap.address, user, curl)
        return [_DOVECOT_TIMING.sub(b" (T secs)", normalise(to_client)) for _, to_client in tap.transcripts()]


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_client_scripts_see_the_same_bytes_from_mailgate_as_from_nginx(
    proxies: dict[ProxyKind, RunningProxy], mail_user: MailUser, curl: str, name: str
) -> None:
    server, script = SCRIPTS[name]
    seen = {kind: _tapped(proxies[kind], server, script, mail_user, curl) for kind in KINDS}
    assert seen["nginx"], "the script made no connection"
    assert seen["mailgate"] == seen["nginx"]


# The last thing each failing script receives, in the spec's words (§3.5, §5.6): a rejection by the auth
# server is its Auth-Status text; a backend refusing the login is the internal error line, or with
# proxy_pass_error_message on the backend's own reply.
FAILURE_REPLIES = {
    "imap-rejected-by-auth-server": b"BCDE1 NO " + INVALID_LOGIN.encode() + b"\r\n",
    "imap-backend-refuses": b"* BAD internal server error\r\n",
    "imap-backend-refuses-passed-on": b"BCDE1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n",
    "pop3-rejected-by-auth-server": b"-ERR " + INVALID_LOGIN.encode() + b"\r\n",
    "pop3-backend-refuses": b"-ERR internal server error\r\n",
    "pop3-backend-refuses-passed-on": b"-ERR [AUTH] Authentication failed.\r\n",
    "smtp-rejected-by-auth-server": b"535 5.7.0 " + INVALID_LOGIN.encode() + b"\r\n",
    "smtp-backend-refuses-auth": b"451 4.3.2 Internal server error\r\n",
    "curl-imap-rejected": b"A002 NO " + INVALID_LOGIN.encode() + b"\r\n",
}


@pytest.mark.parametrize("name", sorted(FAILURE_REPLIES))
def test_a_failed_login_ends_with_the_line_the_spec_gives(
    proxies: dict[ProxyKind, RunningProxy], mail_user: MailUser, curl: str, name: str
) -> None:
    server, script = SCRIPTS[name]
    (received,) = _tapped(proxies["mailgate"], server, script, mail_user, curl)
    assert received.endswith(FAILURE_REPLIES[name]), received


def test_an_smtp_relay_client_gets_the_backends_own_recipient_refusal(
    proxies: dict[ProxyKind, RunningProxy], mail_user: MailUser, curl: str
) -> None:
    server, script = SCRIPTS["smtp-relay-unknown-recipient"]
    (received,) = _tapped(proxies["mailgate"], server, script, mail_user, curl)
    refusal = b"550 5.1.1 <" + UNKNOWN_ADDRESS.encode() + b">: Recipient address rejected: "
    assert refusal in received
    assert received.endswith(b"221 2.0.0 Bye\r\n")  # the session went on through the relay
