"""Smoke tests of the real backends the end-to-end tests rely on: Dovecot and Postfix on loopback."""

from __future__ import annotations

import hashlib
import imaplib
import poplib
import smtplib
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.dovecot import DEFAULT_USERS, Dovecot
from tests.support.mailstore import MailUser, StoredMessage, build_message
from tests.support.postfix import UNKNOWN_ADDRESS, Postfix

BIG_MESSAGE_SIZE = 6 * 1024 * 1024


def _subject_is(subject: str) -> Callable[[StoredMessage], bool]:
    return lambda message: message.header("Subject") == subject


def _default_user(name: str) -> MailUser:
    return next(user for user in DEFAULT_USERS if user.name == name)


def test_imap_fetches_a_seeded_multi_megabyte_message_byte_for_byte(
    dovecot: Dovecot, mail_user: MailUser
) -> None:
    seeded = dovecot.maildir(mail_user).deliver(build_message("big imap", size=BIG_MESSAGE_SIZE))
    imap = imaplib.IMAP4(dovecot.host, dovecot.imap_port)
    try:
        imap.login(mail_user.name, mail_user.password)
        imap.select("INBOX", readonly=True)
        status, data = imap.fetch("1", "(BODY.PEEK[])")
    finally:
        imap.logout()
    assert status == "OK"
    fetched = data[0]
    assert isinstance(fetched, tuple)
    assert len(seeded.data) >= BIG_MESSAGE_SIZE
    assert hashlib.sha256(fetched[1]).hexdigest() == seeded.sha256


def test_pop3_retr_returns_a_seeded_multi_megabyte_message_byte_for_byte(
    dovecot: Dovecot, mail_user: MailUser
) -> None:
    seeded = dovecot.maildir(mail_user).deliver(build_message("big pop3", size=BIG_MESSAGE_SIZE))
    pop3 = poplib.POP3(dovecot.host, dovecot.pop3_port)
    try:
        pop3.user(mail_user.name)
        pop3.pass_(mail_user.password)
        _, lines, _ = pop3.retr(1)
    finally:
        pop3.quit()
    assert hashlib.sha256(b"\r\n".join(lines) + b"\r\n").hexdigest() == seeded.sha256


def test_password_with_quotes_spaces_and_braces_logs_in_over_imap_and_pop3(dovecot: Dovecot) -> None:
    tricky = _default_user("tricky")
    imap = imaplib.IMAP4(dovecot.host, dovecot.imap_port)
    try:
        status, _ = imap.login(tricky.name, tricky.password)
    finally:
        imap.logout()
    pop3 = poplib.POP3(dovecot.host, dovecot.pop3_port)
    try:
        pop3.user(tricky.name)
        reply = pop3.pass_(tricky.password)
    finally:
        pop3.quit()
    assert status == "OK"
    assert reply.startswith(b"+OK")


def test_dovecot_refuses_a_wrong_password(dovecot: Dovecot, mail_user: MailUser) -> None:
    imap = imaplib.IMAP4(dovecot.host, dovecot.imap_port)
    try:
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            imap.login(mail_user.name, "not-" + mail_user.password)
    finally:
        imap.shutdown()


def test_dovecot_trusts_loopback_so_pop3_offers_xclient(dovecot: Dovecot) -> None:
    pop3 = poplib.POP3(dovecot.host, dovecot.pop3_port)
    try:
        greeting = pop3.getwelcome()
    finally:
        pop3.quit()
    assert b"[XCLIENT]" in greeting


def test_mail_sent_to_postfix_lands_in_the_dovecot_mailbox(postfix: Postfix, mail_user: MailUser) -> None:
    message = build_message("via postfix", size=200_000, recipient=mail_user.address)
    with smtplib.SMTP(postfix.host, postfix.smtp_port) as smtp:
        refused = smtp.sendmail("sender@example.org", [mail_user.address], message)
    assert refused == {}
    delivered = postfix.wait_for_delivery(mail_user, _subject_is("via postfix"))
    assert delivered.header("Delivered-To") == mail_user.address
    assert message.split(b"\r\n\r\n", 1)[1].replace(b"\r\n", b"\n") in delivered.data


def test_postfix_accepts_xclient_from_loopback_and_uses_the_forwarded_client(
    postfix: Postfix, mail_user: MailUser
) -> None:
    with smtplib.SMTP(postfix.host, postfix.smtp_port) as smtp:
        smtp.ehlo("proxy.example")
        assert "xclient" in smtp.esmtp_features
        code, _ = smtp.docmd("XCLIENT", "ADDR=192.0.2.7 NAME=client.example LOGIN=alice")
        assert code == 220  # Postfix restarts the session with a new greeting
        smtp.ehlo("client.example")
        smtp.sendmail("sender@example.org", [mail_user.address], build_message("xclient"))
    delivered = postfix.wait_for_delivery(mail_user, _subject_is("xclient"))
    received = delivered.header("Received") or ""
    assert "from client.example (client.example [192.0.2.7])" in received
    assert "ESMTPA" in received  # XCLIENT LOGIN= made it an authenticated session


def test_postfix_rejects_unknown_recipient_and_relaying_after_xclient(postfix: Postfix) -> None:
    with smtplib.SMTP(postfix.host, postfix.smtp_port) as smtp:
        smtp.ehlo("proxy.example")
        smtp.mail("sender@example.org")
        unknown_code, _ = smtp.rcpt(UNKNOWN_ADDRESS)
        smtp.rset()
        smtp.docmd("XCLIENT", "ADDR=192.0.2.7 NAME=client.example")
        smtp.ehlo("client.example")
        smtp.mail("sender@example.org")
        relay_code, relay_text = smtp.rcpt("someone@elsewhere.example")
    assert unknown_code == 550
    assert relay_code == 554
    assert b"Relay access denied" in relay_text


def test_postfix_authenticates_smtp_auth_plain_against_dovecot_users(postfix: Postfix) -> None:
    alice = _default_user("alice")
    with smtplib.SMTP(postfix.host, postfix.smtp_port) as smtp:
        smtp.ehlo("client.example")
        code, _ = smtp.login(alice.name, alice.password)
    assert code == 235


def test_second_instances_run_beside_the_session_ones_and_stop_without_leftovers(
    postfix: Postfix,
) -> None:
    extra_dovecot = Dovecot.start()
    try:
        extra_postfix = Postfix.start(extra_dovecot)
        try:
            assert {extra_dovecot.imap_port, extra_postfix.smtp_port}.isdisjoint(
                {postfix.dovecot.imap_port, postfix.smtp_port}
            )
            user = extra_dovecot.add_user()
            with smtplib.SMTP(extra_postfix.host, extra_postfix.smtp_port) as smtp:
                smtp.sendmail("sender@example.org", [user.address], build_message("second"))
            extra_postfix.wait_for_delivery(user, _subject_is("second"))
            pids = extra_dovecot.processes() + extra_postfix.processes()
        finally:
            extra_postfix.stop()
    finally:
        extra_dovecot.stop()
    assert pids
    assert [pid for pid in pids if Path(f"/proc/{pid}").exists()] == []
    assert not extra_dovecot.root.exists()
    assert not extra_postfix.root.exists()
    assert postfix.running
    assert postfix.dovecot.running
