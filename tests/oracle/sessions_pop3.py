"""POP3 sessions (conf/pop3.conf): what a client receives per spec §2.1, §2.3, §2.5, §3.5, §4.2, §4.4."""

from __future__ import annotations

from tests.oracle.script import (
    DIGEST,
    SALT,
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
from tests.oracle.transcript import Lines, Read, Send, StartTls, Step

GREETING = b"+OK POP3 ready\r\n"
SALTED_GREETING = b"+OK POP3 ready " + SALT + b"\r\n"
# pop3_auth with apop or cram-md5 salts the greeting (spec §2.3).
GREETINGS = {
    "pop3_plain": GREETING,
    "pop3_off": SALTED_GREETING,
    "pop3_on": SALTED_GREETING,
    "pop3_only": SALTED_GREETING,
    "pop3_ssl": SALTED_GREETING,
    "pop3_custom": SALTED_GREETING,
    "pop3_deadauth": GREETING,
}
CAPA_HEAD = b"+OK Capability list follows"
CAPA_ALL = crlf(CAPA_HEAD, b"TOP", b"USER", b"UIDL", b"SASL PLAIN LOGIN CRAM-MD5 EXTERNAL", b".")
# CAPA replies per server (spec §4.4).
CAPA = {
    "pop3_plain": crlf(CAPA_HEAD, b"TOP", b"USER", b"UIDL", b"SASL PLAIN LOGIN", b"."),
    "pop3_off": CAPA_ALL,
    "pop3_on": crlf(
        CAPA_HEAD, b"TOP", b"USER", b"UIDL", b"SASL PLAIN LOGIN CRAM-MD5 EXTERNAL", b"STLS", b"."
    ),
    "pop3_only": crlf(CAPA_HEAD, b"TOP", b"UIDL", b"STLS", b"."),
    "pop3_ssl": crlf(CAPA_HEAD, b"TOP", b"USER", b"UIDL", b"SASL PLAIN LOGIN CRAM-MD5", b"."),
    "pop3_custom": crlf(CAPA_HEAD, b"TOP", b"RESP-CODES", b"user", b"SASL", b"."),
}
METHODS_HEAD = b"+OK methods supported:"
ERR = b"-ERR invalid command\r\n"
OK = b"+OK\r\n"
LOGGED_IN = b"+OK backend logged in\r\n"  # the backend's reply to the proxy's PASS, relayed
USERNAME = b"+ VXNlcm5hbWU6\r\n"
PASSWORD = b"+ UGFzc3dvcmQ6\r\n"
INTERNAL_ERROR = b"-ERR internal server error\r\n"


def err(text: str = INVALID_LOGIN) -> bytes:
    return b"-ERR " + text.encode() + b"\r\n"


def pop3(id: str, server: str, *steps: list[Step]) -> Session:
    """A session on ``server`` that starts by reading the greeting (over TLS for pop3_ssl)."""
    script = greeting(GREETINGS[server])
    for part in steps:
        script += part
    return Session(f"pop3-{id}", "pop3", server, script)


def _basics() -> list[Session]:
    sessions = []
    for server, capa in CAPA.items():
        name = server.removeprefix("pop3_")
        sessions += [
            pop3(f"capa-{name}", server, say(b"CAPA\r\n", capa)),
            pop3(f"noop-{name}", server, say(b"NOOP\r\n", OK)),
            pop3(f"quit-{name}", server, say(b"QUIT\r\n", OK, closes=True)),
        ]
    return sessions


BASICS = _basics()

USER_PASS = [
    pop3("user-pass", "pop3_plain", say(b"USER ok\r\n", OK), say(b"PASS secret\r\n", LOGGED_IN)),
    pop3("user-pass-lowercase", "pop3_plain", say(b"user ok\r\n", OK), say(b"pass secret\r\n", LOGGED_IN)),
    pop3("user-pass-bare-lf", "pop3_plain", say(b"USER ok\n", OK), say(b"PASS secret\n", LOGGED_IN)),
    pop3(
        "user-keeps-spaces",
        "pop3_plain",
        say(b"USER  ok user \r\n", OK),
        say(b"PASS se cret \r\n", LOGGED_IN),
    ),
    pop3("pass-empty-argument", "pop3_plain", say(b"USER ok\r\n", OK), say(b"PASS\r\n", ERR)),
    pop3("pass-without-user", "pop3_plain", say(b"PASS secret\r\n", ERR), say(b"NOOP\r\n", OK)),
    pop3("user-without-argument", "pop3_plain", say(b"USER\r\n", ERR)),
    pop3(
        "user-twice-resets",
        "pop3_plain",
        say(b"USER ok\r\n", OK),
        say(b"USER ok\r\n", ERR),
        say(b"PASS x\r\n", ERR),
    ),
    pop3(
        "noop-after-user-keeps-state",
        "pop3_plain",
        say(b"USER ok\r\n", OK),
        say(b"NOOP\r\n", OK),
        say(b"PASS secret\r\n", LOGGED_IN),
    ),
    pop3("capa-after-user-is-plain-list", "pop3_on", say(b"USER ok\r\n", OK), say(b"CAPA\r\n", CAPA_ALL)),
    pop3(
        "stls-after-user-refused",
        "pop3_on",
        say(b"USER ok\r\n", OK),
        say(b"STLS\r\n", ERR),
        say(b"PASS x\r\n", ERR),
    ),
    pop3(
        "apop-after-user-refused",
        "pop3_off",
        say(b"USER ok\r\n", OK),
        say(b"APOP ok " + DIGEST + b"\r\n", ERR),
    ),
    pop3("auth-after-user-refused", "pop3_off", say(b"USER ok\r\n", OK), say(b"AUTH\r\n", ERR)),
    pop3("quit-after-user", "pop3_plain", say(b"USER ok\r\n", OK), say(b"QUIT\r\n", OK, closes=True)),
    pop3(
        "user-pass-split-across-segments",
        "pop3_plain",
        say((b"US", b"ER ok\r", b"\n"), OK),
        say((b"PASS sec", b"ret\r\n"), LOGGED_IN),
    ),
]

APOP = [
    pop3("apop", "pop3_off", say(b"APOP ok " + DIGEST + b"\r\n", LOGGED_IN)),
    pop3("apop-on-apop-only-server", "pop3_custom", say(b"APOP ok " + DIGEST + b"\r\n", LOGGED_IN)),
    pop3("apop-not-enabled", "pop3_plain", say(b"APOP ok " + DIGEST + b"\r\n", ERR)),
    pop3("apop-one-argument", "pop3_off", say(b"APOP ok\r\n", ERR)),
    pop3("apop-three-arguments", "pop3_off", say(b"APOP ok " + DIGEST + b" x\r\n", ERR)),
    pop3("apop-rejected", "pop3_off", say(b"APOP reject " + DIGEST + b"\r\n", err(), closes=True)),
    pop3(
        "apop-reply-without-password",
        "pop3_off",
        say(b"APOP nopass " + DIGEST + b"\r\n", INTERNAL_ERROR, closes=True),
    ),
]

AUTH = [
    pop3("auth-list-plain", "pop3_plain", say(b"AUTH\r\n", crlf(METHODS_HEAD, b"PLAIN", b"LOGIN", b"."))),
    pop3(
        "auth-list-all",
        "pop3_off",
        say(b"AUTH\r\n", crlf(METHODS_HEAD, b"PLAIN", b"LOGIN", b"CRAM-MD5", b"EXTERNAL", b".")),
    ),
    pop3("auth-list-apop-only", "pop3_custom", say(b"AUTH\r\n", crlf(METHODS_HEAD, b"."))),
    pop3(
        "auth-plain-initial-response",
        "pop3_plain",
        say(b"AUTH PLAIN " + plain_response(b"ok", b"secret") + b"\r\n", LOGGED_IN),
    ),
    pop3(
        "auth-plain-prompted",
        "pop3_plain",
        say(b"AUTH PLAIN\r\n", b"+ \r\n"),
        say(plain_response(b"ok", b"secret") + b"\r\n", LOGGED_IN),
    ),
    pop3(
        "auth-plain-lowercase",
        "pop3_plain",
        say(b"auth plain " + plain_response(b"ok", b"secret") + b"\r\n", LOGGED_IN),
    ),
    pop3("auth-plain-bad-base64", "pop3_plain", say(b"AUTH PLAIN ****\r\n", ERR), say(b"NOOP\r\n", OK)),
    pop3("auth-plain-no-nul", "pop3_plain", say(b"AUTH PLAIN " + b64(b"okpw") + b"\r\n", ERR)),
    pop3("auth-plain-cancelled", "pop3_plain", say(b"AUTH PLAIN\r\n", b"+ \r\n"), say(b"*\r\n", ERR)),
    pop3(
        "auth-login",
        "pop3_plain",
        say(b"AUTH LOGIN\r\n", USERNAME),
        say(b64(b"ok") + b"\r\n", PASSWORD),
        say(b64(b"pw") + b"\r\n", LOGGED_IN),
    ),
    pop3(
        "auth-login-initial-response",
        "pop3_plain",
        say(b"AUTH LOGIN " + b64(b"ok") + b"\r\n", PASSWORD),
        say(b64(b"pw") + b"\r\n", LOGGED_IN),
    ),
    pop3("auth-login-on-apop-only-server", "pop3_custom", say(b"AUTH LOGIN\r\n", USERNAME)),
    pop3(
        "auth-cram-md5",
        "pop3_off",
        say(b"AUTH CRAM-MD5\r\n", b"+ " + SALT_B64 + b"\r\n"),
        say(cram_response(b"ok") + b"\r\n", LOGGED_IN),
    ),
    pop3("auth-cram-md5-not-enabled", "pop3_plain", say(b"AUTH CRAM-MD5\r\n", ERR)),
    pop3(
        "auth-cram-md5-short-digest",
        "pop3_off",
        say(b"AUTH CRAM-MD5\r\n", b"+ " + SALT_B64 + b"\r\n"),
        say(b64(b"ok abc") + b"\r\n", ERR),
    ),
    pop3(
        "auth-external", "pop3_off", say(b"AUTH EXTERNAL\r\n", USERNAME), say(b64(b"ok") + b"\r\n", LOGGED_IN)
    ),
    pop3(
        "auth-external-initial-response", "pop3_off", say(b"AUTH EXTERNAL " + b64(b"ok") + b"\r\n", LOGGED_IN)
    ),
    pop3("auth-external-not-enabled", "pop3_plain", say(b"AUTH EXTERNAL\r\n", ERR)),
    pop3(
        "auth-external-initial-response-not-enabled",
        "pop3_plain",
        say(b"AUTH EXTERNAL " + b64(b"ok") + b"\r\n", ERR),
    ),
    pop3("auth-unknown-mechanism", "pop3_off", say(b"AUTH XOAUTH2\r\n", ERR)),
    pop3("auth-four-arguments", "pop3_off", say(b"AUTH PLAIN a b c\r\n", ERR)),
    pop3(
        "auth-plain-rejected",
        "pop3_plain",
        say(b"AUTH PLAIN " + plain_response(b"reject", b"pw") + b"\r\n", err(), closes=True),
    ),
]

SYNTAX = [
    pop3("stat-unknown", "pop3_plain", say(b"STAT\r\n", ERR)),
    pop3("list-unknown", "pop3_plain", say(b"LIST\r\n", ERR)),
    pop3("retr-unknown", "pop3_plain", say(b"RETR 1\r\n", ERR)),
    pop3("uidl-unknown", "pop3_plain", say(b"UIDL\r\n", ERR)),
    pop3("five-letter-command", "pop3_plain", say(b"USERS ok\r\n", ERR)),
    pop3("three-letter-command", "pop3_plain", say(b"TOP 1 1\r\n", ERR)),
    pop3("empty-line", "pop3_plain", say(b"\r\n", ERR), say(b"NOOP\r\n", OK)),
    pop3("bare-lf-empty-line", "pop3_plain", say(b"\n", ERR)),
    pop3("cr-not-followed-by-lf", "pop3_plain", say(b"NOOP\rx\r\n", ERR), say(b"NOOP\r\n", OK)),
    pop3("command-with-digit", "pop3_plain", say(b"NOO1\r\n", ERR)),
    pop3(
        "fifth-syntax-error-closes",
        "pop3_plain",
        say(b"X\r\nX\r\nX\r\nX\r\n", ERR * 4),
        say(b"X\r\n", ERR, closes=True),
    ),
    pop3("semantic-errors-do-not-count", "pop3_plain", say(b"PASS x\r\n" * 6, ERR * 6), say(b"NOOP\r\n", OK)),
    pop3(
        "max-errors-2-closes-on-second",
        "pop3_custom",
        say(b"STAT\r\n", ERR),
        say(b"LIST\r\n", ERR, closes=True),
    ),
    pop3(
        "too-long-auth-line-closes",
        "pop3_plain",
        say(b"AUTH PLAIN " + plain_response(b"ok", b"p" * 120) + b"\r\n", ERR, closes=True),
    ),
    pop3("too-long-user-closes", "pop3_plain", say(b"USER " + b"u" * 130 + b"\r\n", ERR, closes=True)),
    pop3("too-long-partial-line-closes", "pop3_plain", say(b"NOOP " + b"x" * 130, ERR, closes=True)),
    pop3("line-fits-128-bytes", "pop3_plain", say(b"USER " + b"u" * 120 + b"\r\n", OK)),
    # The buffer is rewound only once everything in it is consumed (spec §2.1.1, §10.6).
    pop3(
        "partial-command-behind-pipelined-ones-hits-buffer-end",
        "pop3_plain",
        say((b"NOOP\r\n" * 20 + b"NOOP", b" xxxxxx\r\n"), OK * 20 + ERR, closes=True),
    ),
    pop3(
        "buffer-rewound-once-everything-is-consumed",
        "pop3_plain",
        say(b"NOOP\r\n" * 20, OK * 20),
        say(b"NOOP xxxxxx\r\n", OK),
    ),
]

AUTH_RESULTS = [
    pop3(
        "pass-rejected-closes",
        "pop3_plain",
        say(b"USER reject\r\n", OK),
        say(b"PASS pw\r\n", err(), closes=True),
    ),
    pop3(
        "pass-rejected-error-code-ignored",
        "pop3_plain",
        say(b"USER tempfail\r\n", OK),
        say(b"PASS pw\r\n", err(TEMPORARY_FAILURE), closes=True),
    ),
    pop3(
        "pass-rejected-with-wait-continues",
        "pop3_plain",
        say(b"USER retry\r\nPASS pw\r\n", OK + err()),
        say(b"USER ok\r\nPASS pw\r\n", OK + LOGGED_IN),
    ),
    pop3(
        "rejected-with-wait-back-to-start-state",
        "pop3_plain",
        say(b"USER retry\r\nPASS pw\r\n", OK + err()),
        say(b"PASS pw\r\n", ERR),
    ),
    pop3(
        "auth-server-malformed-reply",
        "pop3_plain",
        say(b"USER broken\r\nPASS pw\r\n", OK + INTERNAL_ERROR, closes=True),
    ),
    pop3(
        "plain-login-reply-without-password",
        "pop3_plain",
        say(b"USER nopass\r\n", OK),
        say(b"PASS pw\r\n", LOGGED_IN),
    ),
]

PIPELINING = [
    pop3(
        "pipelined-commands-answered-in-order",
        "pop3_plain",
        say(b"CAPA\r\nNOOP\r\nUSER ok\r\nPASS pw\r\n", CAPA["pop3_plain"] + OK + OK + LOGGED_IN),
    ),
    pop3(
        "bytes-after-pass-go-to-backend",
        "pop3_plain",
        say(b"USER ok\r\nPASS pw\r\nSTAT\r\n", OK + LOGGED_IN + b"STAT\r\n"),
    ),
    pop3("pipelined-quit-stops", "pop3_plain", say(b"QUIT\r\nNOOP\r\n", OK, closes=True)),
    pop3("pipelined-errors-and-commands", "pop3_plain", say(b"STAT\r\nNOOP\r\nPASS x\r\n", ERR + OK + ERR)),
]

STLS_ON = [
    pop3(
        "stls-on-capa-before-and-after",
        "pop3_on",
        say(b"CAPA\r\n", CAPA["pop3_on"]),
        say(b"STLS\r\n", OK),
        starttls(),
        say(b"CAPA\r\n", CAPA_ALL),
    ),
    pop3(
        "stls-on-user-pass-after-tls",
        "pop3_on",
        say(b"STLS\r\n", OK),
        starttls(),
        say(b"USER ok\r\n", OK),
        say(b"PASS pw\r\n", LOGGED_IN),
    ),
    pop3("stls-on-user-pass-before-tls", "pop3_on", say(b"USER ok\r\n", OK), say(b"PASS pw\r\n", LOGGED_IN)),
    pop3(
        "stls-on-injected-login-discarded",
        "pop3_on",
        say(b"STLS\r\nUSER ok\r\nPASS pw\r\n", OK),
        starttls(),
        say(b"PASS pw\r\n", ERR),
    ),
    pop3(
        "stls-on-injected-capa-discarded",
        "pop3_on",
        say(b"STLS\r\nCAPA\r\n", OK),
        starttls(),
        say(b"NOOP\r\n", OK),
    ),
    pop3("stls-on-second-stls-refused", "pop3_on", say(b"STLS\r\n", OK), starttls(), say(b"STLS\r\n", ERR)),
    pop3(
        "stls-on-apop-after-tls",
        "pop3_on",
        say(b"stls\r\n", OK),
        starttls(),
        say(b"APOP ok " + DIGEST + b"\r\n", LOGGED_IN),
    ),
    pop3(
        "stls-on-cram-md5-after-tls-same-salt",
        "pop3_on",
        say(b"STLS\r\n", OK),
        starttls(),
        say(b"AUTH CRAM-MD5\r\n", b"+ " + SALT_B64 + b"\r\n"),
        say(cram_response(b"ok") + b"\r\n", LOGGED_IN),
    ),
    pop3("stls-off-refused", "pop3_off", say(b"STLS\r\n", ERR), say(b"NOOP\r\n", OK)),
    pop3("stls-implicit-tls-refused", "pop3_ssl", say(b"STLS\r\n", ERR)),
]

STLS_ONLY = [
    pop3("stls-only-user-refused", "pop3_only", say(b"USER ok\r\n", ERR), say(b"PASS pw\r\n", ERR)),
    pop3("stls-only-apop-refused", "pop3_only", say(b"APOP ok " + DIGEST + b"\r\n", ERR)),
    pop3("stls-only-auth-list-refused", "pop3_only", say(b"AUTH\r\n", ERR)),
    pop3(
        "stls-only-auth-plain-refused",
        "pop3_only",
        say(b"AUTH PLAIN " + plain_response(b"ok", b"pw") + b"\r\n", ERR),
    ),
    pop3(
        "stls-only-refusals-do-not-count", "pop3_only", say(b"USER ok\r\n" * 6, ERR * 6), say(b"NOOP\r\n", OK)
    ),
    pop3(
        "stls-only-capa-before-and-after",
        "pop3_only",
        say(b"CAPA\r\n", CAPA["pop3_only"]),
        say(b"STLS\r\n", OK),
        starttls(),
        say(b"CAPA\r\n", CAPA_ALL),
    ),
    pop3(
        "stls-only-login-after-tls",
        "pop3_only",
        say(b"STLS\r\n", OK),
        starttls(),
        say(b"USER ok\r\nPASS pw\r\n", OK + LOGGED_IN),
    ),
    pop3(
        "stls-only-auth-list-after-tls",
        "pop3_only",
        say(b"STLS\r\n", OK),
        starttls(),
        say(b"AUTH\r\n", crlf(METHODS_HEAD, b"PLAIN", b"LOGIN", b"CRAM-MD5", b"EXTERNAL", b".")),
    ),
    pop3(
        "stls-only-rejection-over-tls",
        "pop3_only",
        say(b"STLS\r\n", OK),
        starttls(),
        say(b"USER reject\r\nPASS pw\r\n", OK + err(), closes=True),
    ),
]

IMPLICIT_TLS = [
    pop3("implicit-tls-user-pass", "pop3_ssl", say(b"USER ok\r\nPASS pw\r\n", OK + LOGGED_IN)),
    pop3(
        "implicit-tls-cram-md5",
        "pop3_ssl",
        say(b"AUTH CRAM-MD5\r\n", b"+ " + SALT_B64 + b"\r\n"),
        say(cram_response(b"ok") + b"\r\n", LOGGED_IN),
    ),
    pop3("implicit-tls-apop-not-enabled", "pop3_ssl", say(b"APOP ok " + DIGEST + b"\r\n", ERR)),
]

# Failures inside the proxy: the auth server or the backend cannot be reached, Auth-Wait: 0.
FAILURES = [
    pop3(
        "auth-server-unreachable",
        "pop3_deadauth",
        say(b"USER ok\r\nPASS pw\r\n", OK + INTERNAL_ERROR, closes=True),
    ),
    pop3("capa-with-auth-server-unreachable", "pop3_deadauth", say(b"CAPA\r\n", CAPA["pop3_plain"])),
    pop3(
        "backend-unreachable",
        "pop3_plain",
        say(b"USER deadbackend\r\nPASS pw\r\n", OK + INTERNAL_ERROR, closes=True),
    ),
    pop3(
        "rejected-with-zero-wait-closes",
        "pop3_plain",
        say(b"USER waitzero\r\nPASS pw\r\n", OK + err(), closes=True),
    ),
]

# Several TLS records in one segment, and a first command riding with the client's last handshake flight.
TLS_RECORDS = [
    pop3(
        "implicit-tls-commands-in-separate-records",
        "pop3_ssl",
        [
            Send(b"NOOP\r\n", b"USER ok\r\n", b"PASS pw\r\n", together=True),
            Read(Lines(3), OK + OK + LOGGED_IN),
        ],
    ),
    pop3(
        "stls-on-command-with-client-finished",
        "pop3_on",
        say(b"STLS\r\n", OK),
        [StartTls(hold_finished=True)],
        say(b"CAPA\r\n", CAPA_ALL),
    ),
    pop3(
        "stls-only-login-in-separate-records",
        "pop3_only",
        say(b"STLS\r\n", OK),
        starttls(),
        [Send(b"USER ok\r\n", b"PASS pw\r\n", together=True), Read(Lines(2), OK + LOGGED_IN)],
    ),
]

# nginx quirks mailgate does not copy (docs/quirks.md): the spec's or the sane bytes are expected.
QUIRKS = [
    pop3(
        "auth-plain-line-break-in-password-refused",
        "pop3_plain",
        say(b"AUTH PLAIN " + plain_response(b"ok", b"pw\r\nDELE 1") + b"\r\n", ERR),
        say(b"NOOP\r\n", OK),
    ),
]

SESSIONS: list[Session] = [
    *BASICS,
    *USER_PASS,
    *APOP,
    *AUTH,
    *SYNTAX,
    *AUTH_RESULTS,
    *FAILURES,
    *PIPELINING,
    *STLS_ON,
    *STLS_ONLY,
    *IMPLICIT_TLS,
    *TLS_RECORDS,
    *QUIRKS,
]
