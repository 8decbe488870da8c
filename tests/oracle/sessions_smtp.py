"""SMTP sessions (conf/smtp.conf): what a client receives per spec §2.1, §2.4, §2.5, §3.5, §4.2, §4.4."""

from __future__ import annotations

from tests.oracle.script import (
    SALT_B64,
    Session,
    b64,
    cram_response,
    crlf,
    greeting,
    plain_response,
    say,
    starttls,
)
from tests.oracle.targets import INVALID_LOGIN, TEMPORARY_FAILURE
from tests.oracle.transcript import Closed, Lines, Read, Send, StartTls, Step

GREETING = b"220 mail.example.com ESMTP ready\r\n"
NAME = b"250-mail.example.com"
# EHLO replies per server (spec §4.4).
EHLO = {
    "smtp_plain": crlf(NAME, b"250 AUTH PLAIN LOGIN"),
    "smtp_off": crlf(
        NAME,
        b"250-PIPELINING",
        b"250-SIZE 10485760",
        b"250-8BITMIME",
        b"250 AUTH PLAIN LOGIN CRAM-MD5 EXTERNAL",
    ),
    "smtp_on": crlf(
        NAME, b"250-PIPELINING", b"250-8BITMIME", b"250-AUTH PLAIN LOGIN CRAM-MD5 EXTERNAL", b"250 STARTTLS"
    ),
    "smtp_only": crlf(NAME, b"250-PIPELINING", b"250-8BITMIME", b"250 STARTTLS"),
    "smtp_ssl": crlf(NAME, b"250-PIPELINING", b"250 AUTH PLAIN LOGIN CRAM-MD5"),
    "smtp_none": b"250 mail.example.com\r\n",
}
EHLO_ON_AFTER_TLS = crlf(NAME, b"250-PIPELINING", b"250-8BITMIME", b"250 AUTH PLAIN LOGIN CRAM-MD5 EXTERNAL")
EHLO_ONLY_AFTER_TLS = crlf(NAME, b"250-PIPELINING", b"250-8BITMIME", b"250 AUTH PLAIN LOGIN")
HELO = b"250 mail.example.com\r\n"
OK = b"250 2.0.0 OK\r\n"
BYE = b"221 2.0.0 Bye\r\n"
INVALID = b"500 5.5.1 Invalid command\r\n"
BAD_ARGUMENT = b"501 5.5.4 Invalid argument\r\n"
AUTH_REQUIRED = b"530 5.7.1 Authentication required\r\n"
BAD_SEQUENCE = b"503 5.5.1 Bad sequence of commands\r\n"
START_TLS = b"220 2.0.0 Start TLS\r\n"
EARLY_TALKER = b"503 5.5.0 Improper use of SMTP command pipelining\r\n"
AUTHENTICATED = b"235 2.0.0 OK\r\n"  # sent by the proxy once the backend session is ready
RCPT_RELAYED = b"250 2.1.5 backend recipient ok\r\n"  # the backend's reply to RCPT, relayed (smtp_auth none)
REJECTED = b"535 5.7.0 " + INVALID_LOGIN.encode() + b"\r\n"
TEMPORARY = b"451 4.3.0 " + TEMPORARY_FAILURE.encode() + b"\r\n"
INTERNAL_ERROR = b"451 4.3.2 Internal server error\r\n"
USERNAME = b"334 VXNlcm5hbWU6\r\n"
PASSWORD = b"334 UGFzc3dvcmQ6\r\n"
AUTH_PLAIN_OK = b"AUTH PLAIN " + plain_response(b"ok", b"secret") + b"\r\n"


def smtp(id: str, server: str, *steps: list[Step]) -> Session:
    """A session on ``server`` that starts by reading the greeting (over TLS for smtp_ssl)."""
    script = greeting(GREETING)
    for part in steps:
        script += part
    return Session(f"smtp-{id}", "smtp", server, script)


def _basics() -> list[Session]:
    sessions = []
    for server, ehlo in EHLO.items():
        name = server.removeprefix("smtp_")
        sessions += [
            smtp(f"ehlo-{name}", server, say(b"EHLO client.example.org\r\n", ehlo)),
            smtp(f"helo-{name}", server, say(b"HELO client.example.org\r\n", HELO)),
            smtp(f"noop-{name}", server, say(b"NOOP\r\n", OK)),
            smtp(f"rset-{name}", server, say(b"RSET\r\n", OK)),
            smtp(f"quit-{name}", server, say(b"QUIT\r\n", BYE, closes=True)),
        ]
    return sessions


BASICS = _basics()

COMMANDS = [
    smtp("ehlo-lowercase", "smtp_plain", say(b"ehlo client\r\n", EHLO["smtp_plain"])),
    smtp("ehlo-without-argument", "smtp_plain", say(b"EHLO\r\n", BAD_ARGUMENT)),
    smtp("ehlo-two-arguments", "smtp_plain", say(b"EHLO a b\r\n", BAD_ARGUMENT)),
    smtp("helo-without-argument", "smtp_plain", say(b"HELO\r\n", BAD_ARGUMENT)),
    smtp("ehlo-bare-lf", "smtp_plain", say(b"EHLO client\n", EHLO["smtp_plain"])),
    smtp("ehlo-split-across-segments", "smtp_plain", say((b"EH", b"LO cli", b"ent\r\n"), EHLO["smtp_plain"])),
    smtp(
        "ehlo-twice",
        "smtp_plain",
        say(b"EHLO a\r\n", EHLO["smtp_plain"]),
        say(b"EHLO b\r\n", EHLO["smtp_plain"]),
    ),
    smtp("vrfy-refused", "smtp_plain", say(b"VRFY postmaster\r\n", INVALID)),
    smtp("expn-refused", "smtp_plain", say(b"EXPN staff\r\n", INVALID)),
    smtp("help-refused", "smtp_plain", say(b"HELP\r\n", INVALID)),
    smtp("data-unknown", "smtp_plain", say(b"DATA\r\n", INVALID)),
    smtp("bdat-unknown", "smtp_plain", say(b"BDAT 10 LAST\r\n", INVALID)),
    smtp("xclient-unknown", "smtp_plain", say(b"XCLIENT ADDR=1.2.3.4\r\n", INVALID)),
    smtp("unknown-command", "smtp_plain", say(b"FOO\r\n", INVALID)),
    smtp("empty-line", "smtp_plain", say(b"\r\n", INVALID), say(b"NOOP\r\n", OK)),
    smtp("bare-lf-empty-line", "smtp_plain", say(b"\n", INVALID)),
    smtp("cr-not-followed-by-lf", "smtp_plain", say(b"NOOP\rx\r\n", INVALID), say(b"NOOP\r\n", OK)),
    smtp("eleven-arguments", "smtp_plain", say(b"NOOP 1 2 3 4 5 6 7 8 9 10 11\r\n", OK)),
    smtp("twelve-arguments", "smtp_plain", say(b"NOOP 1 2 3 4 5 6 7 8 9 10 11 12\r\n", INVALID)),
    smtp(
        "fifth-syntax-error-closes",
        "smtp_plain",
        say(b"DATA\r\nDATA\r\nDATA\r\nDATA\r\n", INVALID * 4),
        say(b"DATA\r\n", INVALID, closes=True),
    ),
    smtp(
        "semantic-errors-do-not-count",
        "smtp_plain",
        say(b"VRFY x\r\nEXPN x\r\nHELP\r\nVRFY x\r\nHELP\r\nEHLO\r\n", INVALID * 5 + BAD_ARGUMENT),
        say(b"NOOP\r\n", OK),
    ),
    smtp(
        "max-errors-2-closes-on-second",
        "smtp_none",
        say(b"DATA\r\n", INVALID),
        say(b"DATA\r\n", INVALID, closes=True),
    ),
    smtp(
        "too-long-command-closes", "smtp_plain", say(b"NOOP " + b"x" * 5000 + b"\r\n", INVALID, closes=True)
    ),
    smtp(
        "pipelined-commands-answered-in-order",
        "smtp_plain",
        say(b"EHLO a\r\nNOOP\r\nRSET\r\nHELO b\r\n", EHLO["smtp_plain"] + OK + OK + HELO),
    ),
    smtp("pipelined-quit-stops", "smtp_plain", say(b"QUIT\r\nNOOP\r\n", BYE, closes=True)),
]

AUTH = [
    smtp("auth-without-argument", "smtp_plain", say(b"AUTH\r\n", BAD_ARGUMENT)),
    smtp(
        "auth-plain-initial-response",
        "smtp_plain",
        say(b"EHLO client\r\n", EHLO["smtp_plain"]),
        say(AUTH_PLAIN_OK, AUTHENTICATED),
    ),
    smtp("auth-plain-without-ehlo", "smtp_plain", say(AUTH_PLAIN_OK, AUTHENTICATED)),
    smtp(
        "auth-plain-after-helo",
        "smtp_plain",
        say(b"HELO client\r\n", HELO),
        say(AUTH_PLAIN_OK, AUTHENTICATED),
    ),
    smtp(
        "auth-plain-prompted",
        "smtp_plain",
        say(b"AUTH PLAIN\r\n", b"334 \r\n"),
        say(plain_response(b"ok", b"pw") + b"\r\n", AUTHENTICATED),
    ),
    smtp(
        "auth-plain-lowercase",
        "smtp_plain",
        say(b"auth plain " + plain_response(b"ok", b"pw") + b"\r\n", AUTHENTICATED),
    ),
    smtp("auth-plain-bad-base64", "smtp_plain", say(b"AUTH PLAIN @@@@\r\n", INVALID), say(b"NOOP\r\n", OK)),
    smtp("auth-plain-no-nul", "smtp_plain", say(b"AUTH PLAIN " + b64(b"okpw") + b"\r\n", INVALID)),
    smtp("auth-plain-cancelled", "smtp_plain", say(b"AUTH PLAIN\r\n", b"334 \r\n"), say(b"*\r\n", INVALID)),
    smtp(
        "auth-login",
        "smtp_plain",
        say(b"AUTH LOGIN\r\n", USERNAME),
        say(b64(b"ok") + b"\r\n", PASSWORD),
        say(b64(b"pw") + b"\r\n", AUTHENTICATED),
    ),
    smtp(
        "auth-login-initial-response",
        "smtp_plain",
        say(b"AUTH LOGIN " + b64(b"ok") + b"\r\n", PASSWORD),
        say(b64(b"pw") + b"\r\n", AUTHENTICATED),
    ),
    smtp(
        "auth-cram-md5",
        "smtp_off",
        say(b"EHLO client\r\n", EHLO["smtp_off"]),
        say(b"AUTH CRAM-MD5\r\n", b"334 " + SALT_B64 + b"\r\n"),
        say(cram_response(b"ok") + b"\r\n", AUTHENTICATED),
    ),
    smtp("auth-cram-md5-not-enabled", "smtp_plain", say(b"AUTH CRAM-MD5\r\n", INVALID)),
    smtp(
        "auth-cram-md5-with-initial-response",
        "smtp_off",
        say(b"AUTH CRAM-MD5 " + cram_response(b"ok") + b"\r\n", INVALID),
    ),
    smtp(
        "auth-external",
        "smtp_off",
        say(b"AUTH EXTERNAL\r\n", USERNAME),
        say(b64(b"ok") + b"\r\n", AUTHENTICATED),
    ),
    smtp(
        "auth-external-initial-response",
        "smtp_off",
        say(b"AUTH EXTERNAL " + b64(b"ok") + b"\r\n", AUTHENTICATED),
    ),
    smtp("auth-external-not-enabled", "smtp_plain", say(b"AUTH EXTERNAL\r\n", INVALID)),
    smtp(
        "auth-external-initial-response-not-enabled",
        "smtp_plain",
        say(b"AUTH EXTERNAL " + b64(b"ok") + b"\r\n", INVALID),
    ),
    smtp("auth-unknown-mechanism", "smtp_plain", say(b"AUTH XOAUTH2 abc\r\n", INVALID)),
    smtp(
        "auth-rejected-closes",
        "smtp_plain",
        say(b"AUTH PLAIN " + plain_response(b"reject", b"pw") + b"\r\n", REJECTED, closes=True),
    ),
    smtp(
        "auth-rejected-with-error-code",
        "smtp_plain",
        say(b"AUTH PLAIN " + plain_response(b"tempfail", b"pw") + b"\r\n", TEMPORARY, closes=True),
    ),
    smtp(
        "auth-rejected-with-wait-continues",
        "smtp_plain",
        say(b"EHLO client\r\n", EHLO["smtp_plain"]),
        say(b"AUTH PLAIN " + plain_response(b"retry", b"pw") + b"\r\n", REJECTED),
        say(AUTH_PLAIN_OK, AUTHENTICATED),
    ),
    smtp(
        "auth-login-rejected-with-wait-then-prompts-again",
        "smtp_plain",
        say(b"AUTH LOGIN " + b64(b"retry") + b"\r\n", PASSWORD),
        say(b64(b"pw") + b"\r\n", REJECTED),
        say(b"AUTH LOGIN\r\n", USERNAME),
    ),
    smtp(
        "auth-server-malformed-reply",
        "smtp_plain",
        say(b"AUTH PLAIN " + plain_response(b"broken", b"pw") + b"\r\n", INTERNAL_ERROR, closes=True),
    ),
    smtp(
        "bytes-after-auth-go-to-backend",
        "smtp_plain",
        say(
            AUTH_PLAIN_OK + b"MAIL FROM:<a@example.org>\r\n",
            AUTHENTICATED + b"250 2.1.0 backend sender ok\r\n",
        ),
    ),
    smtp(
        "pipelined-ehlo-and-auth",
        "smtp_plain",
        say(b"EHLO client\r\nNOOP\r\n" + AUTH_PLAIN_OK, EHLO["smtp_plain"] + OK + AUTHENTICATED),
    ),
    smtp(
        "xclient-login-is-xtext",
        "smtp_plain",
        say(b"AUTH PLAIN " + plain_response("ok+x=y\u00e9".encode(), b"pw") + b"\r\n", AUTHENTICATED),
    ),
    smtp("mail-without-auth-refused", "smtp_plain", say(b"MAIL FROM:<a@example.org>\r\n", AUTH_REQUIRED)),
    smtp("rcpt-without-mail-refused", "smtp_plain", say(b"RCPT TO:<b@example.net>\r\n", BAD_SEQUENCE)),
]

MAIL_RCPT_NONE = [
    smtp(
        "none-mail-rcpt-relayed",
        "smtp_none",
        say(b"HELO client.example.org\r\n", HELO),
        say(b"MAIL FROM:<a@example.org>\r\n", OK),
        say(b"RCPT TO:<b@example.net>\r\n", RCPT_RELAYED),
    ),
    smtp(
        "none-mail-rcpt-without-helo",
        "smtp_none",
        say(b"MAIL FROM:<a@example.org> SIZE=100\r\n", OK),
        say(b"RCPT TO:<b@example.net>\r\n", RCPT_RELAYED),
    ),
    smtp(
        "none-mail-rcpt-after-ehlo",
        "smtp_none",
        say(b"EHLO client\r\n", EHLO["smtp_none"]),
        say(b"mail  from:<a@example.org>\r\n", OK),
        say(b"rcpt to:<b@example.net>\r\n", RCPT_RELAYED),
    ),
    smtp(
        "none-mail-twice",
        "smtp_none",
        say(b"MAIL FROM:<a@x>\r\n", OK),
        say(b"MAIL FROM:<a@x>\r\n", BAD_SEQUENCE),
    ),
    smtp("none-mail-without-argument", "smtp_none", say(b"MAIL\r\n", BAD_ARGUMENT)),
    smtp(
        "none-rcpt-without-argument",
        "smtp_none",
        say(b"MAIL FROM:<a@x>\r\n", OK),
        say(b"RCPT\r\n", BAD_ARGUMENT),
    ),
    smtp("none-rcpt-without-mail", "smtp_none", say(b"RCPT TO:<b@x>\r\n", BAD_SEQUENCE)),
    smtp(
        "none-rset-forgets-mail",
        "smtp_none",
        say(b"MAIL FROM:<a@x>\r\n", OK),
        say(b"RSET\r\n", OK),
        say(b"RCPT TO:<b@x>\r\n", BAD_SEQUENCE),
    ),
    smtp(
        "none-helo-forgets-mail",
        "smtp_none",
        say(b"MAIL FROM:<a@x>\r\n", OK),
        say(b"HELO c\r\n", HELO),
        say(b"RCPT TO:<b@x>\r\n", BAD_SEQUENCE),
    ),
    smtp(
        "none-rejected-closes",
        "smtp_none",
        say(b"MAIL FROM:<reject@example.org>\r\n", OK),
        say(b"RCPT TO:<b@x>\r\n", REJECTED, closes=True),
    ),
    smtp(
        "none-rejected-with-wait-continues",
        "smtp_none",
        say(b"MAIL FROM:<retry@example.org>\r\nRCPT TO:<b@x>\r\n", OK + REJECTED),
        say(b"RSET\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@x>\r\n", OK + OK + RCPT_RELAYED),
    ),
    smtp(
        "none-rejection-with-wait-keeps-mail",
        "smtp_none",
        say(b"MAIL FROM:<retry@example.org>\r\nRCPT TO:<b@x>\r\n", OK + REJECTED),
        say(b"MAIL FROM:<a@example.org>\r\n", BAD_SEQUENCE),
    ),
    smtp(
        "none-pipelined-transaction",
        "smtp_none",
        say(
            b"HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n", HELO + OK + RCPT_RELAYED + b"DATA\r\n"
        ),
    ),
    smtp("none-auth-plain-still-accepted", "smtp_none", say(AUTH_PLAIN_OK, AUTHENTICATED)),
    smtp(
        "none-mail-after-rejected-auth-with-wait",
        "smtp_none",
        say(b"AUTH PLAIN " + plain_response(b"retry", b"pw") + b"\r\n", REJECTED),
        say(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\n", OK + RCPT_RELAYED),
    ),
]

STARTTLS_ON = [
    smtp(
        "starttls-on-ehlo-before-and-after",
        "smtp_on",
        say(b"EHLO client\r\n", EHLO["smtp_on"]),
        say(b"STARTTLS\r\n", START_TLS),
        starttls(),
        say(b"EHLO client\r\n", EHLO_ON_AFTER_TLS),
    ),
    smtp(
        "starttls-on-auth-after-tls",
        "smtp_on",
        say(b"EHLO client\r\n", EHLO["smtp_on"]),
        say(b"STARTTLS\r\n", START_TLS),
        starttls(),
        say(b"EHLO client\r\n", EHLO_ON_AFTER_TLS),
        say(AUTH_PLAIN_OK, AUTHENTICATED),
    ),
    smtp(
        "starttls-on-auth-after-tls-without-ehlo",
        "smtp_on",
        say(b"EHLO client\r\n", EHLO["smtp_on"]),
        say(b"STARTTLS\r\n", START_TLS),
        starttls(),
        say(AUTH_PLAIN_OK, AUTHENTICATED),
    ),
    smtp("starttls-on-auth-before-tls", "smtp_on", say(AUTH_PLAIN_OK, AUTHENTICATED)),
    smtp(
        "starttls-on-without-ehlo",
        "smtp_on",
        say(b"STARTTLS\r\n", START_TLS),
        starttls(),
        say(b"NOOP\r\n", OK),
    ),
    smtp(
        "starttls-on-injected-auth-discarded",
        "smtp_on",
        say(b"STARTTLS\r\n" + AUTH_PLAIN_OK, START_TLS),
        starttls(),
        say(b"NOOP\r\n", OK),
    ),
    smtp(
        "starttls-on-injected-ehlo-discarded",
        "smtp_on",
        say(b"EHLO a\r\n", EHLO["smtp_on"]),
        say(b"STARTTLS\r\nEHLO evil\r\n", START_TLS),
        starttls(),
        say(b"HELO b\r\n", HELO),
    ),
    smtp(
        "starttls-on-second-starttls-refused",
        "smtp_on",
        say(b"STARTTLS\r\n", START_TLS),
        starttls(),
        say(b"STARTTLS\r\n", INVALID),
    ),
    smtp(
        "starttls-on-cram-md5-after-tls",
        "smtp_on",
        say(b"starttls\r\n", START_TLS),
        starttls(),
        say(b"AUTH CRAM-MD5\r\n", b"334 " + SALT_B64 + b"\r\n"),
        say(cram_response(b"ok") + b"\r\n", AUTHENTICATED),
    ),
    smtp("starttls-off-refused", "smtp_off", say(b"STARTTLS\r\n", INVALID), say(b"NOOP\r\n", OK)),
    smtp("starttls-implicit-tls-refused", "smtp_ssl", say(b"STARTTLS\r\n", INVALID)),
]

STARTTLS_ONLY = [
    smtp(
        "starttls-only-auth-refused",
        "smtp_only",
        say(b"EHLO client\r\n", EHLO["smtp_only"]),
        say(AUTH_PLAIN_OK, INVALID),
    ),
    smtp("starttls-only-auth-login-refused", "smtp_only", say(b"AUTH LOGIN\r\n", INVALID)),
    smtp(
        "starttls-only-refusals-do-not-count",
        "smtp_only",
        say(AUTH_PLAIN_OK * 6, INVALID * 6),
        say(b"NOOP\r\n", OK),
    ),
    smtp(
        "starttls-only-ehlo-before-and-after",
        "smtp_only",
        say(b"EHLO client\r\n", EHLO["smtp_only"]),
        say(b"STARTTLS\r\n", START_TLS),
        starttls(),
        say(b"EHLO client\r\n", EHLO_ONLY_AFTER_TLS),
    ),
    smtp(
        "starttls-only-auth-after-tls",
        "smtp_only",
        say(b"STARTTLS\r\n", START_TLS),
        starttls(),
        say(b"EHLO client\r\n", EHLO_ONLY_AFTER_TLS),
        say(b"AUTH LOGIN " + b64(b"ok") + b"\r\n", PASSWORD),
        say(b64(b"pw") + b"\r\n", AUTHENTICATED),
    ),
    smtp(
        "starttls-only-mail-rcpt-allowed-with-none",
        "smtp_only",
        say(b"EHLO client\r\n", EHLO["smtp_only"]),
        say(b"MAIL FROM:<a@x>\r\n", OK),
        say(b"RCPT TO:<b@x>\r\n", RCPT_RELAYED),
    ),
    smtp(
        "starttls-only-injected-mail-discarded",
        "smtp_only",
        say(b"STARTTLS\r\nMAIL FROM:<a@x>\r\n", START_TLS),
        starttls(),
        say(b"RCPT TO:<b@x>\r\n", BAD_SEQUENCE),
    ),
    smtp(
        "starttls-only-starttls-forgets-mail",
        "smtp_only",
        say(b"MAIL FROM:<a@x>\r\n", OK),
        say(b"STARTTLS\r\n", START_TLS),
        starttls(),
        say(b"RCPT TO:<b@x>\r\n", BAD_SEQUENCE),
    ),
    smtp(
        "starttls-only-rejection-over-tls",
        "smtp_only",
        say(b"STARTTLS\r\n", START_TLS),
        starttls(),
        say(b"AUTH PLAIN " + plain_response(b"reject", b"pw") + b"\r\n", REJECTED, closes=True),
    ),
]

IMPLICIT_TLS = [
    smtp(
        "implicit-tls-auth",
        "smtp_ssl",
        say(b"EHLO client\r\n", EHLO["smtp_ssl"]),
        say(AUTH_PLAIN_OK, AUTHENTICATED),
    ),
    smtp(
        "implicit-tls-cram-md5",
        "smtp_ssl",
        say(b"AUTH CRAM-MD5\r\n", b"334 " + SALT_B64 + b"\r\n"),
        say(cram_response(b"ok") + b"\r\n", AUTHENTICATED),
    ),
    smtp(
        "implicit-tls-rejection",
        "smtp_ssl",
        say(b"AUTH PLAIN " + plain_response(b"reject", b"pw") + b"\r\n", REJECTED, closes=True),
    ),
]

# Failures inside the proxy: the auth server or the backend cannot be reached, Auth-Wait: 0.
FAILURES = [
    smtp("auth-server-unreachable", "smtp_deadauth", say(AUTH_PLAIN_OK, INTERNAL_ERROR, closes=True)),
    smtp("ehlo-with-auth-server-unreachable", "smtp_deadauth", say(b"EHLO client\r\n", EHLO["smtp_plain"])),
    smtp(
        "backend-unreachable",
        "smtp_plain",
        say(b"AUTH PLAIN " + plain_response(b"deadbackend", b"pw") + b"\r\n", INTERNAL_ERROR, closes=True),
    ),
    smtp(
        "rejected-with-zero-wait-closes",
        "smtp_plain",
        say(b"AUTH PLAIN " + plain_response(b"waitzero", b"pw") + b"\r\n", REJECTED, closes=True),
    ),
    smtp(
        "none-rejected-with-error-code",
        "smtp_none",
        say(b"MAIL FROM:<tempfail@example.org>\r\nRCPT TO:<b@x>\r\n", OK + TEMPORARY, closes=True),
    ),
    smtp(
        "none-backend-unreachable",
        "smtp_none",
        say(b"MAIL FROM:<deadbackend@example.org>\r\nRCPT TO:<b@x>\r\n", OK + INTERNAL_ERROR, closes=True),
    ),
]

# Several TLS records in one segment, and a first command riding with the client's last handshake flight.
TLS_RECORDS = [
    smtp(
        "implicit-tls-commands-in-separate-records",
        "smtp_ssl",
        [
            Send(b"EHLO client\r\n", b"NOOP\r\n", AUTH_PLAIN_OK, together=True),
            Read(Lines(5), EHLO["smtp_ssl"] + OK + AUTHENTICATED),
        ],
    ),
    smtp(
        "starttls-on-command-with-client-finished",
        "smtp_on",
        say(b"STARTTLS\r\n", START_TLS),
        [StartTls(hold_finished=True)],
        say(b"EHLO client\r\n", EHLO_ON_AFTER_TLS),
    ),
    smtp(
        "starttls-only-auth-in-separate-records",
        "smtp_only",
        say(b"STARTTLS\r\n", START_TLS),
        starttls(),
        [
            Send(b"AUTH LOGIN\r\n", b64(b"ok") + b"\r\n", b64(b"pw") + b"\r\n", together=True),
            Read(Lines(3), USERNAME + PASSWORD + AUTHENTICATED),
        ],
    ),
]

GREETING_DELAY = [
    smtp("greeting-delay-patient-client", "smtp_delay", say(b"EHLO client\r\n", EHLO["smtp_plain"])),
    Session(
        "smtp-greeting-delay-early-talker-rejected",
        "smtp",
        "smtp_delay",
        [Send(b"EHLO client\r\n"), Read(Closed(), EARLY_TALKER)],
    ),
    Session(
        "smtp-greeting-delay-early-pipeliner-rejected",
        "smtp",
        "smtp_delay",
        [Send(b"EHLO client\r\n" + AUTH_PLAIN_OK), Read(Closed(), EARLY_TALKER)],
    ),
]

# nginx quirks mailgate does not copy (docs/quirks.md): the spec's or the sane bytes are expected.
QUIRKS = [
    smtp(
        "refused-mail-keeps-pipelined-commands-intact",
        "smtp_plain",
        [Send(b"MAIL FROM:<a@example.org>\r\nNOOP\r\n"), Read(Lines(1), AUTH_REQUIRED)],
        say(b"NOOP\r\n", OK),
    ),
]

SESSIONS: list[Session] = [
    *BASICS,
    *COMMANDS,
    *AUTH,
    *MAIL_RCPT_NONE,
    *FAILURES,
    *STARTTLS_ON,
    *STARTTLS_ONLY,
    *IMPLICIT_TLS,
    *TLS_RECORDS,
    *QUIRKS,
    *GREETING_DELAY,
]
