"""An IPv6 client (`listen [::1]`) reaches the real backends, its address told as nginx tells it.

The auth server gets `Client-IP: ::1` and Postfix gets `XCLIENT ADDR=IPV6:::1`, so the delivered mail's
Received: line names the IPv6 client. Runs against nginx on the same file too.
"""

from __future__ import annotations

import imaplib
import smtplib
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import pytest

from tests.e2e.harness import IO_TIMEOUT, KINDS, Directory, ProxyKind, RunningProxy, running_proxy
from tests.support.authserver import AuthServer
from tests.support.dovecot import Dovecot
from tests.support.mailstore import MailUser, build_message
from tests.support.postfix import Postfix

pytestmark = pytest.mark.nginx

TEMPLATE = """
events {
}

mail {
    server_name mail.example.com;
    auth_http $auth_http;

    server {
        listen [::1]:$port6_imap;
        protocol imap;
    }

    server {
        listen [::1]:$port6_smtp;
        protocol smtp;
        smtp_auth none;
    }
}
"""


@dataclass
class Setup:
    auth: AuthServer
    proxies: dict[ProxyKind, RunningProxy]


@pytest.fixture(scope="module")
def setup(dovecot: Dovecot, postfix: Postfix, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    directory = tmp_path_factory.mktemp("ipv6")
    with ExitStack() as stack:
        auth = stack.enter_context(AuthServer())
        auth.set_default(Directory(dovecot, postfix))
        proxies = {
            kind: stack.enter_context(running_proxy(kind, TEMPLATE, directory / kind, auth_http=auth.url()))
            for kind in KINDS
        }
        yield Setup(auth, proxies)


@pytest.mark.parametrize("kind", KINDS)
def test_an_ipv6_client_logs_in_to_dovecot_and_is_reported_as_such(
    setup: Setup, mail_user: MailUser, kind: ProxyKind
) -> None:
    before = len(setup.auth.requests)
    client = imaplib.IMAP4(*setup.proxies[kind].address("imap"), timeout=IO_TIMEOUT)
    try:
        assert client.login(mail_user.name, mail_user.password)[0] == "OK"
    finally:
        client.shutdown()
    (request,) = setup.auth.requests[before:]
    assert request.header("Client-IP") == "::1"


@pytest.mark.parametrize("kind", KINDS)
def test_xclient_tells_postfix_the_ipv6_client(
    setup: Setup, postfix: Postfix, mail_user: MailUser, kind: ProxyKind
) -> None:
    subject = f"ipv6 via {kind}"
    message = build_message(subject, recipient=mail_user.address)
    address = setup.proxies[kind].address("smtp")
    with smtplib.SMTP(*address, local_hostname="client.example.org", timeout=IO_TIMEOUT) as smtp:
        assert smtp.sendmail("sender@example.org", [mail_user.address], message) == {}
    delivered = postfix.wait_for_delivery(mail_user, lambda stored: stored.header("Subject") == subject)
    assert "from client.example.org (unknown [IPv6:::1])" in (delivered.header("Received") or "")
