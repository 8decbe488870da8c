"""IMAP, POP3 and SMTP over implicit TLS and over STARTTLS, through mailgate to the real Dovecot and Postfix.

Clients nobody here wrote do whole sessions: imaplib and curl fetch a message, poplib and curl retrieve one,
smtplib and curl submit one that Postfix delivers into Dovecot. curl checks the server certificate against
the test CA (`--cacert`), so the chain mailgate sends is verified too.
"""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from tests.e2e_tls.support import Proxy, client_context, mail_config, running
from tests.support.authserver import AuthReply, AuthRequest
from tests.support.dovecot import Dovecot
from tests.support.loopback import IPV4_LOOPBACK
from tests.support.mailstore import MailUser, build_message
from tests.support.postfix import Postfix
from tests.tls.support import Pki

TEMPLATE = mail_config(
    """
    server { listen 127.0.0.1:$imap_ssl ssl; protocol imap; }
    server { listen 127.0.0.1:$imap_on; protocol imap; starttls on; }
    server { listen 127.0.0.1:$pop3_ssl ssl; protocol pop3; }
    server { listen 127.0.0.1:$pop3_only; protocol pop3; starttls only; }
    server { listen 127.0.0.1:$smtp_ssl ssl; protocol smtp; }
    server { listen 127.0.0.1:$smtp_on; protocol smtp; starttls on; }
"""
)
TIMEOUT = 20.0
HOST = "localhost"  # the name in the server certificate; curl connects to 127.0.0.1 through --resolve


@pytest.fixture(scope="module")
def mailgate(
    pki: Pki, dovecot: Dovecot, postfix: Postfix, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    backends = {"imap": dovecot.imap_port, "pop3": dovecot.pop3_port, "smtp": postfix.smtp_port}

    def route(request: AuthRequest) -> AuthReply:
        return AuthReply.ok(IPV4_LOOPBACK, backends[request.header("Auth-Protocol") or ""])

    directory = tmp_path_factory.mktemp("backends")
    with running("mailgate", TEMPLATE, pki.directory, directory, reply=route) as proxy:
        yield proxy


def curl(
    pki: Pki, port: int, url: str, user: MailUser, *arguments: str, upload: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """curl as `user`, trusting only the test CA; `upload` is sent as the file (SMTP)."""
    command = ["curl", "--silent", "--show-error", "--max-time", str(TIMEOUT), "--cacert", str(pki.ca_file)]
    command += ["--resolve", f"{HOST}:{port}:{IPV4_LOOPBACK}", "--user", f"{user.name}:{user.password}"]
    command += [*arguments, *(["--upload-file", "-"] if upload is not None else []), url]
    return subprocess.run(command, input=upload, capture_output=True, timeout=TIMEOUT * 2, check=False)


def last_request(proxy: Proxy) -> AuthRequest:
    return proxy.auth.requests[-1]


def seeded(dovecot: Dovecot, user: MailUser) -> bytes:
    message = build_message(f"tls fetch {uuid.uuid4().hex}", size=20_000, recipient=user.address)
    dovecot.maildir(user).deliver(message)
    return message


# --- IMAP ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["implicit", "starttls"])
def test_imaplib_fetches_a_message_over_tls(
    mailgate: Proxy, dovecot: Dovecot, mail_user: MailUser, mode: str
) -> None:
    message = seeded(dovecot, mail_user)
    if mode == "implicit":
        client: imaplib.IMAP4 = imaplib.IMAP4_SSL(
            IPV4_LOOPBACK, mailgate.port("imap_ssl"), ssl_context=client_context(), timeout=TIMEOUT
        )
    else:
        client = imaplib.IMAP4(IPV4_LOOPBACK, mailgate.port("imap_on"), timeout=TIMEOUT)
        client.starttls(client_context())
    try:
        client.login(mail_user.name, mail_user.password)
        client.select("INBOX")
        status, data = client.fetch("1", "(BODY.PEEK[])")
    finally:
        client.logout()
    assert status == "OK"
    fetched = data[0]
    assert isinstance(fetched, tuple)
    assert fetched[1] == message
    request = last_request(mailgate)
    assert (request.header("Auth-SSL"), request.header("Auth-User")) == ("on", mail_user.name)


def test_curl_fetches_a_message_over_imaps_checking_the_certificate(
    pki: Pki, mailgate: Proxy, dovecot: Dovecot, mail_user: MailUser
) -> None:
    message = seeded(dovecot, mail_user)
    port = mailgate.port("imap_ssl")
    result = curl(pki, port, f"imaps://{HOST}:{port}/INBOX/;UID=1", mail_user)
    assert result.returncode == 0, result.stderr
    assert result.stdout == message


def test_curl_fetches_a_message_over_imap_starttls(
    pki: Pki, mailgate: Proxy, dovecot: Dovecot, mail_user: MailUser
) -> None:
    message = seeded(dovecot, mail_user)
    port = mailgate.port("imap_on")
    result = curl(pki, port, f"imap://{HOST}:{port}/INBOX/;UID=1", mail_user, "--ssl-reqd")
    assert result.returncode == 0, result.stderr
    assert result.stdout == message
    assert last_request(mailgate).header("Auth-SSL") == "on"


# --- POP3 ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["implicit", "starttls"])
def test_poplib_retrieves_a_message_over_tls(
    mailgate: Proxy, dovecot: Dovecot, mail_user: MailUser, mode: str
) -> None:
    message = seeded(dovecot, mail_user)
    if mode == "implicit":
        client: poplib.POP3 = poplib.POP3_SSL(
            IPV4_LOOPBACK, mailgate.port("pop3_ssl"), context=client_context(), timeout=TIMEOUT
        )
    else:
        client = poplib.POP3(IPV4_LOOPBACK, mailgate.port("pop3_only"), timeout=TIMEOUT)
        client.stls(client_context())
    try:
        client.user(mail_user.name)
        client.pass_(mail_user.password)
        _, lines, _ = client.retr(1)
        client.quit()
    finally:
        client.close()
    assert b"\r\n".join(lines) + b"\r\n" == message
    request = last_request(mailgate)
    assert (request.header("Auth-SSL"), request.header("Auth-Protocol")) == ("on", "pop3")


def test_curl_retrieves_a_message_over_pop3s(
    pki: Pki, mailgate: Proxy, dovecot: Dovecot, mail_user: MailUser
) -> None:
    message = seeded(dovecot, mail_user)
    port = mailgate.port("pop3_ssl")
    result = curl(pki, port, f"pop3s://{HOST}:{port}/1", mail_user)
    assert result.returncode == 0, result.stderr
    assert result.stdout == message


# --- SMTP ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["implicit", "starttls"])
def test_smtplib_submits_a_message_that_postfix_delivers(
    mailgate: Proxy, postfix: Postfix, mail_user: MailUser, mode: str
) -> None:
    subject = f"tls submit {uuid.uuid4().hex}"
    message = build_message(subject, recipient=mail_user.address, sender=mail_user.address)
    if mode == "implicit":
        client: smtplib.SMTP = smtplib.SMTP_SSL(
            IPV4_LOOPBACK,
            mailgate.port("smtp_ssl"),
            context=client_context(),
            timeout=TIMEOUT,
            local_hostname="client.example.org",
        )
    else:
        client = smtplib.SMTP(
            IPV4_LOOPBACK, mailgate.port("smtp_on"), timeout=TIMEOUT, local_hostname="client.example.org"
        )
        client.starttls(context=client_context())
    try:
        client.login(mail_user.name, mail_user.password)
        refused = client.sendmail(mail_user.address, [mail_user.address], message)
        client.quit()
    finally:
        client.close()
    assert refused == {}
    delivered = postfix.wait_for_delivery(mail_user, lambda stored: stored.header("Subject") == subject)
    assert message.replace(b"\r\n", b"\n").split(b"\n\n", 1)[1] in delivered.data
    request = last_request(mailgate)
    assert (request.header("Auth-SSL"), request.header("Auth-User")) == ("on", mail_user.name)


def test_curl_submits_a_message_over_smtp_starttls(
    pki: Pki, mailgate: Proxy, postfix: Postfix, mail_user: MailUser
) -> None:
    subject = f"tls curl {uuid.uuid4().hex}"
    message = build_message(subject, recipient=mail_user.address, sender=mail_user.address)
    port = mailgate.port("smtp_on")
    rcpt = ["--mail-from", mail_user.address, "--mail-rcpt", mail_user.address]
    url = f"smtp://{HOST}:{port}/client.example.org"
    result = curl(pki, port, url, mail_user, "--ssl-reqd", *rcpt, upload=message)
    assert result.returncode == 0, result.stderr
    delivered = postfix.wait_for_delivery(mail_user, lambda stored: stored.header("Subject") == subject)
    assert delivered.header("Subject") == subject
