"""Sessions of a quiet mailgate (error_log above info, no session log) to real backends.

Quiet, a session's front runs in C before the session exists, and where the backend's last login reply is
accepted by its first bytes the connection starts the relay itself (`Relay.run_after_login`) without
waking the session: what clients and backends see must be what they see at `info`, where the session
logs each step.
"""

from __future__ import annotations

import hashlib
import imaplib
import poplib
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from tests.e2e.harness import IO_TIMEOUT, Directory, LineClient, RunningProxy, running_proxy
from tests.e2e.test_real_backends import TEMPLATE  # the same servers as at info there, here quiet
from tests.support.authserver import AuthServer
from tests.support.dovecot import Dovecot
from tests.support.mailstore import MailUser, build_message
from tests.support.postfix import Postfix

MESSAGE_SIZE = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def quiet(
    dovecot: Dovecot, postfix: Postfix, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningProxy]:
    directory = tmp_path_factory.mktemp("quiet")
    with ExitStack() as stack:
        auth = stack.enter_context(AuthServer())
        auth.set_default(Directory(dovecot, postfix))
        yield stack.enter_context(
            running_proxy("mailgate", TEMPLATE, directory, log_level="notice", auth_http=auth.url("/auth"))
        )


@pytest.mark.parametrize("method", ["LOGIN", "AUTHENTICATE PLAIN"])
def test_imap_sessions_log_in_pipeline_and_fetch_intact(
    quiet: RunningProxy, dovecot: Dovecot, mail_user: MailUser, method: str
) -> None:
    stored = dovecot.maildir(mail_user).deliver(build_message("quiet imap", size=MESSAGE_SIZE))
    client = imaplib.IMAP4(*quiet.address("imap"), timeout=IO_TIMEOUT)
    try:
        if method == "LOGIN":
            assert client.login(mail_user.name, mail_user.password)[0] == "OK"
        else:
            credentials = f"\0{mail_user.name}\0{mail_user.password}".encode()
            assert client.authenticate("PLAIN", lambda _: credentials)[0] == "OK"
        assert client.select("INBOX")[0] == "OK"
        status, data = client.fetch("1", "(BODY.PEEK[])")
        assert client.logout()[0] == "BYE"
    finally:
        if client.state != "LOGOUT":
            client.shutdown()
    assert status == "OK"
    fetched = data[0]
    assert isinstance(fetched, tuple)
    assert hashlib.sha256(fetched[1]).hexdigest() == stored.sha256


def test_an_imap_command_pipelined_behind_login_reaches_dovecot_after_it(
    quiet: RunningProxy, mail_user: MailUser
) -> None:
    with LineClient(quiet.address("imap")) as client:
        assert client.line().startswith(b"* OK")
        name, password = mail_user.name.encode(), mail_user.password.encode()
        client.send(b"a LOGIN " + name + b" " + password + b"\r\nb SELECT INBOX\r\nc LOGOUT\r\n")
        replies = client.rest()
    lines = replies.split(b"\r\n")
    tagged = [line.split(b" ", 2)[:2] for line in lines if line[:2] in (b"a ", b"b ", b"c ")]
    assert tagged == [[b"a", b"OK"], [b"b", b"OK"], [b"c", b"OK"]]


def test_pop3_sessions_log_in_and_retrieve_intact(
    quiet: RunningProxy, dovecot: Dovecot, mail_user: MailUser
) -> None:
    stored = dovecot.maildir(mail_user).deliver(build_message("quiet pop3", size=MESSAGE_SIZE))
    client = poplib.POP3(*quiet.address("pop3"), timeout=IO_TIMEOUT)
    try:
        client.user(mail_user.name)
        assert client.pass_(mail_user.password).startswith(b"+OK")
        _, lines, _ = client.retr(1)
        assert client.quit().startswith(b"+OK")
    finally:
        client.close()
    assert hashlib.sha256(b"\r\n".join(lines) + b"\r\n").hexdigest() == stored.sha256


def test_a_login_the_backend_refuses_gets_the_internal_error_line_and_logs_at_error_only(
    quiet: RunningProxy, mail_user: MailUser
) -> None:
    mark = quiet.log_mark()
    with LineClient(quiet.address("imap")) as client:
        assert client.line().startswith(b"* OK")
        client.send(b"a LOGIN " + mail_user.name.encode() + b" wrong\r\n")
        assert client.rest() == b"* BAD internal server error\r\n"  # the backend's NO is not passed on
    log = quiet.wait_for_log(mark, "upstream sent invalid response")
    assert "[error]" in log
    assert "[info]" not in quiet.log_text()
