"""IMAP sessions (conf/imap.conf): what a client receives per spec §2.1, §2.2, §2.5, §3.5, §4.2, §4.4."""

from __future__ import annotations

from tests.oracle.script import (
    SALT_B64,
    Session,
    b64,
    cram_response,
    greeting,
    plain_response,
    say,
    starttls,
)
from tests.oracle.targets import INVALID_LOGIN, TEMPORARY_FAILURE
from tests.oracle.transcript import Lines, Read, Send, StartTls, Step

GREETING = b"* OK IMAP4 ready\r\n"
CAPS = b"* CAPABILITY IMAP4 IMAP4rev1 UIDPLUS"
# CAPABILITY lines per server (spec §4.4).
CAPABILITY = {
    "imap_plain": CAPS + b" AUTH=PLAIN\r\n",
    "imap_off": CAPS + b" AUTH=PLAIN AUTH=LOGIN AUTH=CRAM-MD5 AUTH=EXTERNAL\r\n",
    "imap_on": CAPS + b" AUTH=PLAIN AUTH=LOGIN AUTH=CRAM-MD5 AUTH=EXTERNAL STARTTLS\r\n",
    "imap_only": CAPS + b" STARTTLS LOGINDISABLED\r\n",
    "imap_ssl": CAPS + b" AUTH=PLAIN AUTH=LOGIN AUTH=CRAM-MD5\r\n",
    "imap_small": b"* CAPABILITY IMAP4rev1 LITERAL+ SASL-IR AUTH=LOGIN\r\n",
}
CAPABILITY_AFTER_TLS = CAPS + b" AUTH=PLAIN AUTH=LOGIN AUTH=CRAM-MD5 AUTH=EXTERNAL\r\n"
USERNAME = b"+ VXNlcm5hbWU6\r\n"
PASSWORD = b"+ UGFzc3dvcmQ6\r\n"
INTERNAL_ERROR = b"* BAD internal server error\r\n"


def bad(tag: bytes = b"*") -> bytes:
    return tag + b" BAD invalid command\r\n"


def ok(tag: bytes) -> bytes:
    return tag + b" OK completed\r\n"


def logged_in(tag: bytes) -> bytes:
    """The backend's reply to the proxy's LOGIN, relayed: authentication was reached and succeeded."""
    return tag + b" OK backend logged in\r\n"


def no(tag: bytes, text: str = INVALID_LOGIN) -> bytes:
    return tag + b" NO " + text.encode() + b"\r\n"


def imap(id: str, server: str, *steps: list[Step]) -> Session:
    """A session on ``server`` that starts by reading the greeting (over TLS for imap_ssl)."""
    script = greeting(GREETING)
    for part in steps:
        script += part
    return Session(f"imap-{id}", "imap", server, script)


def _basics() -> list[Session]:
    sessions = []
    for server, capability in CAPABILITY.items():
        name = server.removeprefix("imap_")
        sessions += [
            imap(f"capability-{name}", server, say(b"a CAPABILITY\r\n", capability + ok(b"a"))),
            imap(f"noop-{name}", server, say(b"a1 NOOP\r\n", ok(b"a1"))),
            imap(f"logout-{name}", server, say(b"z LOGOUT\r\n", b"* BYE\r\n" + ok(b"z"), closes=True)),
        ]
    return sessions


BASICS = _basics()

COMMAND_SYNTAX = [
    imap("capability-lowercase", "imap_plain", say(b"a capability\r\n", CAPABILITY["imap_plain"] + ok(b"a"))),
    imap(
        "capability-arguments-ignored",
        "imap_plain",
        say(b'a CAPABILITY x "y z"\r\n', CAPABILITY["imap_plain"] + ok(b"a")),
    ),
    imap("noop-mixed-case-and-arguments", "imap_plain", say(b"t NoOp whatever\r\n", ok(b"t"))),
    imap(
        "logout-arguments-ignored",
        "imap_plain",
        say(b"t LOGOUT now\r\n", b"* BYE\r\n" + ok(b"t"), closes=True),
    ),
    imap("bare-lf-terminates", "imap_plain", say(b"a NOOP\n", ok(b"a")), say(b"b NOOP\r\n", ok(b"b"))),
    imap("extra-spaces-after-tag", "imap_plain", say(b"a    NOOP\r\n", ok(b"a"))),
    imap("tag-of-allowed-characters", "imap_plain", say(b"Az09-._ NOOP\r\n", ok(b"Az09-._"))),
    imap("tag-of-32-characters", "imap_plain", say(b"t" * 32 + b" NOOP\r\n", ok(b"t" * 32))),
    imap(
        "tag-of-33-characters",
        "imap_plain",
        say(b"t" * 33 + b" NOOP\r\n", bad()),
        say(b"b NOOP\r\n", ok(b"b")),
    ),
    imap("tag-star", "imap_plain", say(b"* NOOP\r\n", bad())),
    imap("tag-plus", "imap_plain", say(b"+ NOOP\r\n", bad())),
    imap("tag-with-bang", "imap_plain", say(b"a!b NOOP\r\n", bad())),
    imap("tag-with-brace", "imap_plain", say(b"a{1 NOOP\r\n", bad())),
    imap("empty-tag", "imap_plain", say(b" NOOP\r\n", bad())),
    imap("tag-without-command", "imap_plain", say(b"a\r\n", bad()), say(b"b NOOP\r\n", ok(b"b"))),
    imap("tag-space-without-command", "imap_plain", say(b"a \r\n", bad(b"a"))),
    imap("empty-line", "imap_plain", say(b"\r\n", bad()), say(b"b NOOP\r\n", ok(b"b"))),
    imap("bare-lf-empty-line", "imap_plain", say(b"\n", bad())),
    imap("unknown-command-select", "imap_plain", say(b"a SELECT INBOX\r\n", bad(b"a"))),
    imap("unknown-command-id", "imap_plain", say(b"a ID NIL\r\n", bad(b"a"))),
    imap("unknown-command-enable", "imap_plain", say(b"a ENABLE UTF8=ACCEPT\r\n", bad(b"a"))),
    imap("command-word-with-digit", "imap_plain", say(b"a NOOP2\r\n", bad(b"a"))),
    imap(
        "cr-not-followed-by-lf", "imap_plain", say(b"a NOOP\rx\r\n", bad(b"a")), say(b"b NOOP\r\n", ok(b"b"))
    ),
    imap("four-arguments", "imap_plain", say(b"a NOOP 1 2 3 4\r\n", bad(b"a"))),
    imap(
        "command-split-across-segments",
        "imap_plain",
        say((b"a CAPA", b"BILITY", b"\r\n"), CAPABILITY["imap_plain"] + ok(b"a")),
    ),
    imap("crlf-split-across-segments", "imap_plain", say((b"a NOOP\r", b"\n"), ok(b"a"))),
]

LOGIN = [
    imap("login-atoms", "imap_plain", say(b"a LOGIN ok secret\r\n", logged_in(b"a"))),
    imap("login-quoted", "imap_plain", say(b'a LOGIN "ok user" "pa ss"\r\n', logged_in(b"a"))),
    imap("login-quoted-escapes", "imap_plain", say(b'a LOGIN "o\\"k" "p\\\\w"\r\n', logged_in(b"a"))),
    imap("login-quote-inside-atom", "imap_plain", say(b'a LOGIN o"k p"w\r\n', logged_in(b"a"))),
    imap(
        "login-synchronizing-literals",
        "imap_plain",
        say(b"a LOGIN {2}\r\n", b"+ OK\r\n"),
        say(b"ok {6}\r\n", b"+ OK\r\n"),
        say(b"se cr\n\r\n", logged_in(b"a")),
    ),
    imap(
        "login-non-synchronizing-literals",
        "imap_plain",
        say(b"a LOGIN {2+}\r\nok {4+}\r\npass\r\n", logged_in(b"a")),
    ),
    imap(
        "login-literal-user-atom-password",
        "imap_plain",
        say(b"a LOGIN {5}\r\n", b"+ OK\r\n"),
        say(b'o k"\\ secret\r\n', logged_in(b"a")),
    ),
    imap(
        "login-atom-user-literal-password",
        "imap_plain",
        say(b"a LOGIN ok {3}\r\n", b"+ OK\r\n"),
        say(b"a b\r\n", logged_in(b"a")),
    ),
    imap("login-literal-with-bare-lf", "imap_plain", say(b"a LOGIN {2+}\nok pw\n", logged_in(b"a"))),
    imap("login-empty-password", "imap_plain", say(b'a LOGIN ok ""\r\n', logged_in(b"a"))),
    imap("login-empty-user", "imap_plain", say(b'a LOGIN "" secret\r\n', bad(b"a"))),
    imap("login-one-argument", "imap_plain", say(b"a LOGIN ok\r\n", bad(b"a"))),
    imap("login-no-argument", "imap_plain", say(b"a LOGIN\r\n", bad(b"a"))),
    imap("login-three-arguments", "imap_plain", say(b"a LOGIN ok secret more\r\n", bad(b"a"))),
    imap("login-four-arguments", "imap_plain", say(b"a LOGIN a b c d\r\n", bad(b"a"))),
    imap(
        "login-split-across-segments",
        "imap_plain",
        say((b"a LOG", b"IN ok se", b"cret\r\n"), logged_in(b"a")),
    ),
    imap("login-bare-lf", "imap_plain", say(b"a LOGIN ok secret\n", logged_in(b"a"))),
    imap("login-lowercase", "imap_plain", say(b"a login ok secret\r\n", logged_in(b"a"))),
    imap("login-backslash-before-crlf-in-quoted", "imap_plain", say(b'a LOGIN "ok\\\r\n', bad(b"a"))),
    imap("literal-bad-character", "imap_plain", say(b"a LOGIN {1x}\r\n", bad(b"a"))),
    imap("literal-not-at-end-of-line", "imap_plain", say(b"a LOGIN {2} x\r\n", bad(b"a"))),
    imap(
        "literal-followed-by-other-character",
        "imap_plain",
        say(b"a LOGIN {2}\r\n", b"+ OK\r\n"),
        say(b'ok"x" secret\r\n', bad(b"a")),
    ),
    imap(
        "literal-followed-by-letter",
        "imap_plain",
        say(b"a LOGIN {2}\r\n", b"+ OK\r\n"),
        say(b"okx secret\r\n", bad(b"a")),
    ),
    imap("literal-length-overflow", "imap_plain", say(b"a LOGIN {99999999999999999999999}\r\n", bad(b"a"))),
    imap(
        "non-synchronizing-literal-in-invalid-line-closes",
        "imap_plain",
        say(b"a SELECT {3+}\r\n", bad(b"a"), closes=True),
    ),
]

AUTHENTICATE = [
    imap(
        "authenticate-plain-initial-response",
        "imap_off",
        say(b"a AUTHENTICATE PLAIN " + plain_response(b"ok", b"secret") + b"\r\n", logged_in(b"a")),
    ),
    imap(
        "authenticate-plain-prompted",
        "imap_off",
        say(b"a AUTHENTICATE PLAIN\r\n", b"+ \r\n"),
        say(plain_response(b"ok", b"secret") + b"\r\n", logged_in(b"a")),
    ),
    imap(
        "authenticate-plain-with-authzid",
        "imap_off",
        say(b"a AUTHENTICATE PLAIN " + plain_response(b"ok", b"pw", b"admin") + b"\r\n", logged_in(b"a")),
    ),
    imap(
        "authenticate-plain-empty-password",
        "imap_off",
        say(b"a AUTHENTICATE PLAIN " + plain_response(b"ok", b"") + b"\r\n", logged_in(b"a")),
    ),
    imap(
        "authenticate-plain-lowercase-mechanism",
        "imap_plain",
        say(b"a authenticate plain " + plain_response(b"ok", b"pw") + b"\r\n", logged_in(b"a")),
    ),
    imap("authenticate-plain-bad-base64", "imap_off", say(b"a AUTHENTICATE PLAIN !!!!\r\n", bad(b"a"))),
    imap(
        "authenticate-plain-no-nul",
        "imap_off",
        say(b"a AUTHENTICATE PLAIN " + b64(b"okpw") + b"\r\n", bad(b"a")),
    ),
    imap(
        "authenticate-plain-one-nul",
        "imap_off",
        say(b"a AUTHENTICATE PLAIN " + b64(b"\0okpw") + b"\r\n", bad(b"a")),
    ),
    imap(
        "authenticate-plain-cancelled",
        "imap_off",
        say(b"a AUTHENTICATE PLAIN\r\n", b"+ \r\n"),
        say(b"*\r\n", bad(b"a")),
        say(b"b NOOP\r\n", ok(b"b")),
    ),
    imap(
        "authenticate-plain-too-many-tokens",
        "imap_off",
        say(b"a AUTHENTICATE PLAIN " + plain_response(b"ok", b"pw") + b" extra\r\n", bad(b"a")),
    ),
    imap(
        "authenticate-login",
        "imap_off",
        say(b"a AUTHENTICATE LOGIN\r\n", USERNAME),
        say(b64(b"ok") + b"\r\n", PASSWORD),
        say(b64(b"secret") + b"\r\n", logged_in(b"a")),
    ),
    imap(
        "authenticate-login-initial-response",
        "imap_off",
        say(b"a AUTHENTICATE LOGIN " + b64(b"ok") + b"\r\n", PASSWORD),
        say(b64(b"secret") + b"\r\n", logged_in(b"a")),
    ),
    imap(
        "authenticate-login-bad-base64-password",
        "imap_off",
        say(b"a AUTHENTICATE LOGIN " + b64(b"ok") + b"\r\n", PASSWORD),
        say(b"#\r\n", bad(b"a")),
    ),
    imap("authenticate-login-on-server-without-it", "imap_plain", say(b"a AUTHENTICATE LOGIN\r\n", USERNAME)),
    imap(
        "authenticate-cram-md5",
        "imap_off",
        say(b"a AUTHENTICATE CRAM-MD5\r\n", b"+ " + SALT_B64 + b"\r\n"),
        say(cram_response(b"ok") + b"\r\n", logged_in(b"a")),
    ),
    imap(
        "authenticate-cram-md5-short-digest",
        "imap_off",
        say(b"a AUTHENTICATE CRAM-MD5\r\n", b"+ " + SALT_B64 + b"\r\n"),
        say(b64(b"ok 0123") + b"\r\n", bad(b"a")),
    ),
    imap(
        "authenticate-cram-md5-initial-response",
        "imap_off",
        say(b"a AUTHENTICATE CRAM-MD5 " + cram_response(b"ok") + b"\r\n", bad(b"a")),
    ),
    imap("authenticate-cram-md5-not-enabled", "imap_plain", say(b"a AUTHENTICATE CRAM-MD5\r\n", bad(b"a"))),
    imap(
        "authenticate-external",
        "imap_off",
        say(b"a AUTHENTICATE EXTERNAL\r\n", USERNAME),
        say(b64(b"ok") + b"\r\n", logged_in(b"a")),
    ),
    imap(
        "authenticate-external-initial-response",
        "imap_off",
        say(b"a AUTHENTICATE EXTERNAL " + b64(b"ok") + b"\r\n", logged_in(b"a")),
    ),
    imap("authenticate-external-not-enabled", "imap_plain", say(b"a AUTHENTICATE EXTERNAL\r\n", bad(b"a"))),
    imap(
        "authenticate-external-initial-response-not-enabled",
        "imap_plain",
        say(b"a AUTHENTICATE EXTERNAL " + b64(b"ok") + b"\r\n", bad(b"a")),
    ),
    imap("authenticate-unknown-mechanism", "imap_off", say(b"a AUTHENTICATE XOAUTH2 abc\r\n", bad(b"a"))),
    imap("authenticate-no-mechanism", "imap_off", say(b"a AUTHENTICATE\r\n", bad(b"a"))),
    imap(
        "authenticate-tag-kept-across-prompts",
        "imap_off",
        say(b"x.1 AUTHENTICATE LOGIN\r\n", USERNAME),
        say(b64(b"reject") + b"\r\n", PASSWORD),
        say(b64(b"pw") + b"\r\n", no(b"x.1"), closes=True),
    ),
]

AUTH_RESULTS = [
    imap("login-rejected-closes", "imap_plain", say(b"a LOGIN reject secret\r\n", no(b"a"), closes=True)),
    imap(
        "login-rejected-with-error-code-ignored",
        "imap_plain",
        say(b"a LOGIN tempfail secret\r\n", no(b"a", TEMPORARY_FAILURE), closes=True),
    ),
    imap(
        "login-rejected-with-wait-continues",
        "imap_plain",
        say(b"a LOGIN retry secret\r\n", no(b"a")),
        say(b"b LOGIN ok secret\r\n", logged_in(b"b")),
    ),
    imap(
        "login-rejected-with-wait-twice",
        "imap_plain",
        say(b"a LOGIN retry secret\r\n", no(b"a")),
        say(b"b NOOP\r\n", ok(b"b")),
        say(b"c LOGIN reject secret\r\n", no(b"c"), closes=True),
    ),
    imap(
        "authenticate-rejected-with-wait-resets-mechanism",
        "imap_off",
        say(b"a AUTHENTICATE PLAIN " + plain_response(b"retry", b"pw") + b"\r\n", no(b"a")),
        say(b"b AUTHENTICATE LOGIN\r\n", USERNAME),
    ),
    imap(
        "command-pipelined-during-auth-wait",
        "imap_plain",
        say(b"a LOGIN retry secret\r\nb NOOP\r\n", no(b"a") + ok(b"b")),
    ),
    imap(
        "auth-server-malformed-reply",
        "imap_plain",
        say(b"a LOGIN broken secret\r\n", INTERNAL_ERROR, closes=True),
    ),
    imap(
        "auth-server-reply-without-password-for-plain",
        "imap_plain",
        say(b"a LOGIN nopass secret\r\n", logged_in(b"a")),
    ),
    imap(
        "cram-md5-reply-without-password",
        "imap_off",
        say(b"a AUTHENTICATE CRAM-MD5\r\n", b"+ " + SALT_B64 + b"\r\n"),
        say(cram_response(b"nopass") + b"\r\n", INTERNAL_ERROR, closes=True),
    ),
]

PIPELINING = [
    imap(
        "pipelined-commands-answered-in-order",
        "imap_plain",
        say(
            b"a NOOP\r\nb CAPABILITY\r\nc NOOP\r\n", ok(b"a") + CAPABILITY["imap_plain"] + ok(b"b") + ok(b"c")
        ),
    ),
    imap(
        "pipelined-errors-and-commands",
        "imap_plain",
        say(b"a SELECT x\r\nb NOOP\r\n\r\nc NOOP\r\n", bad(b"a") + ok(b"b") + bad() + ok(b"c")),
    ),
    imap(
        "pipelined-login-after-commands",
        "imap_plain",
        say(b"a NOOP\r\nb LOGIN ok secret\r\n", ok(b"a") + logged_in(b"b")),
    ),
    imap(
        "bytes-after-login-go-to-backend",
        "imap_plain",
        say(b"a LOGIN ok secret\r\nb SELECT INBOX\r\n", logged_in(b"a") + b"b SELECT INBOX\r\n"),
    ),
    imap(
        "pipelined-logout-stops",
        "imap_plain",
        say(b"a LOGOUT\r\nb NOOP\r\n", b"* BYE\r\n" + ok(b"a"), closes=True),
    ),
]

MAX_ERRORS = [
    # The buffer is rewound only once everything in it is consumed (spec §2.1.1, §10.6).
    imap(
        "partial-command-behind-pipelined-ones-hits-buffer-end",
        "imap_small",
        say((b"a NOOP\r\n" * 15 + b"b NOOP", b" xxxxxx\r\n"), ok(b"a") * 15 + bad(b"b"), closes=True),
    ),
    imap(
        "buffer-rewound-once-everything-is-consumed",
        "imap_small",
        say(b"a NOOP\r\n" * 15, ok(b"a") * 15),
        say(b"b NOOP xxxxxx\r\n", ok(b"b")),
    ),
    imap(
        "fifth-syntax-error-closes",
        "imap_plain",
        say(b"a X\r\nb X\r\nc X\r\nd X\r\n", bad(b"a") + bad(b"b") + bad(b"c") + bad(b"d")),
        say(b"e X\r\n", bad(b"e"), closes=True),
    ),
    imap(
        "four-syntax-errors-keep-session",
        "imap_plain",
        say(b"a X\r\nb X\r\nc X\r\nd X\r\n", bad(b"a") + bad(b"b") + bad(b"c") + bad(b"d")),
        say(b"e NOOP\r\n", ok(b"e")),
    ),
    imap(
        "semantic-errors-do-not-count",
        "imap_plain",
        say(b"a LOGIN x\r\n" * 6, bad(b"a") * 6),
        say(b"e NOOP\r\n", ok(b"e")),
    ),
    imap(
        "max-errors-2-closes-on-second",
        "imap_small",
        say(b"a X\r\n", bad(b"a")),
        say(b"b X\r\n", bad(b"b"), closes=True),
    ),
    imap(
        "too-long-command-closes",
        "imap_small",
        say(b"a LOGIN " + b"u" * 200 + b" p\r\n", bad(b"a"), closes=True),
    ),
    imap(
        "too-long-literal-closes",
        "imap_small",
        say(b"a LOGIN {200}\r\n", b"+ OK\r\n"),
        say(b"u" * 200 + b" p\r\n", bad(b"a"), closes=True),
    ),
    imap("too-long-partial-line-closes", "imap_small", say(b"a NOOP " + b"x" * 200, bad(b"a"), closes=True)),
    imap(
        "command-fits-small-buffer", "imap_small", say(b"a LOGIN ok " + b"p" * 80 + b"\r\n", logged_in(b"a"))
    ),
]

STARTTLS_ON = [
    imap(
        "starttls-on-capability-before-and-after",
        "imap_on",
        say(b"a CAPABILITY\r\n", CAPABILITY["imap_on"] + ok(b"a")),
        say(b"b STARTTLS\r\n", ok(b"b")),
        starttls(),
        say(b"c CAPABILITY\r\n", CAPABILITY_AFTER_TLS + ok(b"c")),
    ),
    imap(
        "starttls-on-login-after-tls",
        "imap_on",
        say(b"b STARTTLS\r\n", ok(b"b")),
        starttls(),
        say(b"c LOGIN ok secret\r\n", logged_in(b"c")),
    ),
    imap("starttls-on-login-before-tls", "imap_on", say(b"a LOGIN ok secret\r\n", logged_in(b"a"))),
    imap(
        "starttls-on-injected-login-discarded",
        "imap_on",
        say(b"b STARTTLS\r\nc LOGIN ok secret\r\n", ok(b"b")),
        starttls(),
        say(b"d NOOP\r\n", ok(b"d")),
    ),
    imap(
        "starttls-on-injected-noop-discarded",
        "imap_on",
        say(b"b STARTTLS\r\nc NOOP\r\n", ok(b"b")),
        starttls(),
        say(b"d NOOP\r\n", ok(b"d")),
    ),
    imap(
        "starttls-on-second-starttls-refused",
        "imap_on",
        say(b"b STARTTLS\r\n", ok(b"b")),
        starttls(),
        say(b"c STARTTLS\r\n", bad(b"c")),
    ),
    imap(
        "starttls-on-lowercase",
        "imap_on",
        say(b"b starttls\r\n", ok(b"b")),
        starttls(),
        say(b"c NOOP\r\n", ok(b"c")),
    ),
    imap(
        "starttls-on-authenticate-after-tls",
        "imap_on",
        say(b"b STARTTLS\r\n", ok(b"b")),
        starttls(),
        say(b"c AUTHENTICATE PLAIN " + plain_response(b"ok", b"pw") + b"\r\n", logged_in(b"c")),
    ),
    imap(
        "starttls-on-rejection-over-tls",
        "imap_on",
        say(b"b STARTTLS\r\n", ok(b"b")),
        starttls(),
        say(b"c LOGIN reject pw\r\n", no(b"c"), closes=True),
    ),
    imap("starttls-off-refused", "imap_off", say(b"a STARTTLS\r\n", bad(b"a")), say(b"b NOOP\r\n", ok(b"b"))),
    imap("starttls-on-implicit-tls-refused", "imap_ssl", say(b"a STARTTLS\r\n", bad(b"a"))),
]

STARTTLS_ONLY = [
    imap("starttls-only-login-refused", "imap_only", say(b"a LOGIN ok secret\r\n", bad(b"a"))),
    imap(
        "starttls-only-authenticate-refused",
        "imap_only",
        say(b"a AUTHENTICATE PLAIN " + plain_response(b"ok", b"pw") + b"\r\n", bad(b"a")),
    ),
    imap(
        "starttls-only-refusals-do-not-count",
        "imap_only",
        say(b"a LOGIN ok pw\r\n" * 6, bad(b"a") * 6),
        say(b"b NOOP\r\n", ok(b"b")),
    ),
    imap(
        "starttls-only-capability-before-and-after",
        "imap_only",
        say(b"1 CAPABILITY\r\n", CAPABILITY["imap_only"] + ok(b"1")),
        say(b"2 LOGIN u p\r\n", bad(b"2")),
        say(b"3 STARTTLS\r\n", ok(b"3")),
        starttls(),
        say(b"4 CAPABILITY\r\n", CAPABILITY_AFTER_TLS + ok(b"4")),
    ),
    imap(
        "starttls-only-login-after-tls",
        "imap_only",
        say(b"a STARTTLS\r\n", ok(b"a")),
        starttls(),
        say(b"b LOGIN ok secret\r\n", logged_in(b"b")),
    ),
    imap(
        "starttls-only-injected-login-discarded",
        "imap_only",
        say(b"a STARTTLS\r\nb LOGIN ok secret\r\n", ok(b"a")),
        starttls(),
        say(b"c CAPABILITY\r\n", CAPABILITY_AFTER_TLS + ok(b"c")),
    ),
    imap(
        "starttls-only-cram-md5-after-tls",
        "imap_only",
        say(b"a STARTTLS\r\n", ok(b"a")),
        starttls(),
        say(b"b AUTHENTICATE CRAM-MD5\r\n", b"+ " + SALT_B64 + b"\r\n"),
        say(cram_response(b"ok") + b"\r\n", logged_in(b"b")),
    ),
    imap(
        "starttls-only-external-after-tls",
        "imap_only",
        say(b"a STARTTLS\r\n", ok(b"a")),
        starttls(),
        say(b"b AUTHENTICATE EXTERNAL " + b64(b"ok") + b"\r\n", logged_in(b"b")),
    ),
]

IMPLICIT_TLS = [
    imap(
        "implicit-tls-default-protocols",
        "imap_tlsdefault_ssl",
        say(b"a LOGIN ok secret\r\n", logged_in(b"a")),
    ),
    imap("implicit-tls-login", "imap_ssl", say(b"a LOGIN ok secret\r\n", logged_in(b"a"))),
    imap("implicit-tls-external-not-enabled", "imap_ssl", say(b"a AUTHENTICATE EXTERNAL\r\n", bad(b"a"))),
    imap("implicit-tls-rejection", "imap_ssl", say(b"a LOGIN reject secret\r\n", no(b"a"), closes=True)),
    imap(
        "implicit-tls-pipelined",
        "imap_ssl",
        say(b"a NOOP\r\nb LOGIN ok pw\r\nc NOOP\r\n", ok(b"a") + logged_in(b"b") + b"c NOOP\r\n"),
    ),
]

SMALL_SERVER = [
    imap(
        "authenticate-plain-accepted-though-not-listed",
        "imap_small",
        say(b"a AUTHENTICATE PLAIN " + plain_response(b"ok", b"pw") + b"\r\n", logged_in(b"a")),
    ),
    imap(
        "authenticate-login-on-login-only-server",
        "imap_small",
        say(b"a AUTHENTICATE LOGIN " + b64(b"ok") + b"\r\n", PASSWORD),
        say(b64(b"pw") + b"\r\n", logged_in(b"a")),
    ),
]

# Failures inside the proxy: the auth server or the backend cannot be reached, Auth-Wait: 0.
FAILURES = [
    imap(
        "auth-server-unreachable", "imap_deadauth", say(b"a LOGIN ok secret\r\n", INTERNAL_ERROR, closes=True)
    ),
    imap(
        "auth-server-unreachable-after-authenticate",
        "imap_deadauth",
        say(b"a AUTHENTICATE PLAIN\r\n", b"+ \r\n"),
        say(plain_response(b"ok", b"pw") + b"\r\n", INTERNAL_ERROR, closes=True),
    ),
    imap(
        "capability-with-auth-server-unreachable",
        "imap_deadauth",
        say(b"a CAPABILITY\r\n", CAPABILITY["imap_plain"] + ok(b"a")),
    ),
    imap(
        "backend-unreachable",
        "imap_plain",
        say(b"a LOGIN deadbackend secret\r\n", INTERNAL_ERROR, closes=True),
    ),
    imap(
        "rejected-with-zero-wait-closes",
        "imap_plain",
        say(b"a LOGIN waitzero secret\r\n", no(b"a"), closes=True),
    ),
]

# Several TLS records in one segment, and a first command riding with the client's last handshake flight.
TLS_RECORDS = [
    imap(
        "implicit-tls-commands-in-separate-records",
        "imap_ssl",
        [
            Send(b"a NOOP\r\n", b"b NOOP\r\n", b"c NOOP\r\n", together=True),
            Read(Lines(3), ok(b"a") + ok(b"b") + ok(b"c")),
        ],
    ),
    imap(
        "implicit-tls-login-split-across-records",
        "imap_ssl",
        [Send(b"a LOGIN ok", b" secret\r\n", together=True), Read(Lines(1), logged_in(b"a"))],
    ),
    imap(
        "starttls-on-command-with-client-finished",
        "imap_on",
        say(b"b STARTTLS\r\n", ok(b"b")),
        [StartTls(hold_finished=True)],
        say(b"c NOOP\r\n", ok(b"c")),
    ),
    imap(
        "starttls-only-login-with-client-finished",
        "imap_only",
        say(b"a STARTTLS\r\n", ok(b"a")),
        [StartTls(hold_finished=True)],
        say(b"b LOGIN ok secret\r\n", logged_in(b"b")),
    ),
    imap(
        "starttls-on-commands-in-separate-records",
        "imap_on",
        say(b"b STARTTLS\r\n", ok(b"b")),
        starttls(),
        [
            Send(b"c NOOP\r\n", b"d LOGIN ok pw\r\n", together=True),
            Read(Lines(2), ok(b"c") + logged_in(b"d")),
        ],
    ),
]

# nginx quirks mailgate does not copy (docs/quirks.md): the spec's or the sane bytes are expected.
QUIRKS = [
    imap(
        "zero-length-literal-is-empty",
        "imap_plain",
        say(b"a LOGIN {0}\r\n", b"+ OK\r\n"),
        say(b"X secret\r\n", bad(b"a")),
    ),
    imap("literal-without-digits", "imap_plain", say(b"a LOGIN {}\r\n", bad(b"a"))),
    imap(
        "unterminated-quote-does-not-leak-into-next-command",
        "imap_plain",
        say(b'a LOGIN "ok\r\n', bad(b"a")),
        say(b"b LOGIN ok secret\r\n", logged_in(b"b")),
    ),
    imap(
        "invalid-tag-after-rejection-gets-untagged-bad",
        "imap_plain",
        say(b"a LOGIN retry secret\r\n", no(b"a")),
        say(b"!x NOOP\r\n", bad()),
    ),
    imap(
        "authenticate-login-bad-base64-username-is-tagged",
        "imap_off",
        say(b"a AUTHENTICATE LOGIN\r\n", USERNAME),
        say(b"!!!!\r\n", bad(b"a")),
    ),
]

SESSIONS: list[Session] = [
    *BASICS,
    *COMMAND_SYNTAX,
    *LOGIN,
    *AUTHENTICATE,
    *AUTH_RESULTS,
    *FAILURES,
    *PIPELINING,
    *MAX_ERRORS,
    *STARTTLS_ON,
    *STARTTLS_ONLY,
    *IMPLICIT_TLS,
    *SMALL_SERVER,
    *TLS_RECORDS,
    *QUIRKS,
]
