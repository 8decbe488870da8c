"""Sessions where Debian's nginx 1.22 does not send what the spec (newest nginx, 1.31) says.

Each entry gives the reason and, per differing Read of the session's script, the spec's bytes (which
mailgate must send; they equal the session's own ``expect``) beside what nginx 1.22 sends instead. Where the
client sees the same bytes and only the auth request or the backend login differs, ``beyond_client`` gives
the spec's and nginx 1.22's bytes there. The tests assert both sides, so an entry cannot go stale: if nginx
1.22 ever sent the spec's bytes, or mailgate did not, a test fails.

``newer`` entries are explained by a later nginx change (spec §8, or docs/quirks.md where §8 is silent).
``fixed`` entries are nginx bugs that the newest nginx still has, which mailgate deliberately does not copy
(docs/quirks.md, where the spec allows or asks for it); the expected bytes are mailgate's documented ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Nginx122Difference:
    kind: str  # "newer" or "fixed"
    reason: str
    # Script step -> (the spec's bytes, which mailgate sends; what nginx 1.22 sends) in that Read.
    reads: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    # Where the client receives the same bytes: (spec, nginx 1.22) byte strings that differ in the auth
    # request or in what the backend receives. Replacing each spec string in mailgate's run gives nginx's.
    beyond_client: tuple[tuple[bytes, bytes], ...] = ()


NGINX_1_22_DIFFERENCES: dict[str, Nginx122Difference] = {
    "imap-literal-followed-by-letter": Nginx122Difference(
        "newer",
        "1.29.6: only SP or CRLF may follow an IMAP literal. nginx 1.22 swallows the byte after the literal "
        "(`{2}` `okx secret` logs in as `ok`/`secret`); the spec answers BAD (spec §2.2.1).",
        {4: (b"a BAD invalid command\r\n", b"a OK backend logged in\r\n")},
    ),
    "imap-literal-length-overflow": Nginx122Difference(
        "newer",
        "1.29.6: literal length overflow check. nginx 1.22 wraps the 23-digit length around and answers the "
        "literal continuation `+ OK`; the spec answers BAD (spec §2.2.1).",
        {2: (b"a BAD invalid command\r\n", b"+ OK\r\n")},
    ),
    "smtp-none-mail-after-rejected-auth-with-wait": Nginx122Difference(
        "newer",
        "1.29.1 (CVE-2025-53859): the login left from a rejected AUTH is cleared at MAIL. nginx 1.22 sends "
        "the stale login (`Auth-User: retry`) with the `smtp_auth none` request, which this auth server "
        "rejects again; the spec sends an empty Auth-User, so the RCPT is relayed (spec §2.4.4).",
        {
            4: (
                b"250 2.0.0 OK\r\n250 2.1.5 backend recipient ok\r\n",
                b"250 2.0.0 OK\r\n535 5.7.0 Invalid login or password\r\n",
            )
        },
    ),
    "imap-implicit-tls-default-protocols": Nginx122Difference(
        "newer",
        "1.23.4: TLSv1.3 is in the default ssl_protocols. nginx 1.22 (TLSv1 TLSv1.1 TLSv1.2 by default) "
        "negotiates TLSv1.2 with the same client, which shows in the auth request (spec §3.3, §4.6).",
        beyond_client=(
            (b"Auth-SSL-Protocol: TLSv1.3\r\n", b"Auth-SSL-Protocol: TLSv1.2\r\n"),
            (
                b"Auth-SSL-Cipher: TLS_AES_256_GCM_SHA384\r\n",
                b"Auth-SSL-Cipher: ECDHE-ECDSA-AES256-GCM-SHA384\r\n",
            ),
        ),
    ),
    "smtp-xclient-login-is-xtext": Nginx122Difference(
        "newer",
        "1.29.2: XCLIENT LOGIN= is xtext-encoded. nginx 1.22 sends the login raw (spec §5.3).",
        beyond_client=((b"LOGIN=ok+2Bx+3Dy+C3+A9 ", b"LOGIN=ok+x=y\xc3\xa9 "),),
    ),
    "imap-empty-tag": Nginx122Difference(
        "newer",
        "Spec §2.2.1: an empty tag is a syntax error (`* BAD invalid command`). nginx 1.22's tag state takes "
        "a leading space as the end of a one-space tag and answers ` NOOP` with ` OK completed`. §8 lists no "
        "change after 1.21.0 (stricter tags); docs/quirks.md #17 says the newest nginx rejects it.",
        {2: (b"* BAD invalid command\r\n", b" OK completed\r\n")},
    ),
    "imap-authenticate-external-initial-response-not-enabled": Nginx122Difference(
        "fixed",
        "Spec §2.5: EXTERNAL only if enabled. nginx checks `imap_auth external` only for the bare "
        "`AUTHENTICATE EXTERNAL` (the 1.11.9 fix); with an initial response its mechanism parser completes "
        "the login first (docs/quirks.md #14: a security fix).",
        {2: (b"a BAD invalid command\r\n", b"a OK backend logged in\r\n")},
    ),
    "pop3-auth-external-initial-response-not-enabled": Nginx122Difference(
        "fixed",
        "As imap-authenticate-external-initial-response-not-enabled, for POP3 `AUTH EXTERNAL <b64>` without "
        "`pop3_auth external`: nginx authenticates, the spec answers -ERR.",
        {2: (b"-ERR invalid command\r\n", b"+OK backend logged in\r\n")},
    ),
    "smtp-auth-external-initial-response-not-enabled": Nginx122Difference(
        "fixed",
        "As imap-authenticate-external-initial-response-not-enabled, for SMTP `AUTH EXTERNAL <b64>` without "
        "`smtp_auth external`: nginx authenticates (235), the spec answers 500.",
        {2: (b"500 5.5.1 Invalid command\r\n", b"235 2.0.0 OK\r\n")},
    ),
    "imap-zero-length-literal-is-empty": Nginx122Difference(
        "fixed",
        "Spec §10.1: nginx's `{0}` takes the next byte as its content, so `{0}` `X secret` logs in as "
        "`X`/`secret`; mailgate reads an empty literal, and `X` after it is a syntax error "
        "(docs/quirks.md #1).",
        {4: (b"a BAD invalid command\r\n", b"a OK backend logged in\r\n")},
    ),
    "imap-literal-without-digits": Nginx122Difference(
        "fixed",
        "nginx reads `{}` as `{0}` and answers `+ OK`; mailgate: syntax error (docs/quirks.md #20).",
        {2: (b"a BAD invalid command\r\n", b"+ OK\r\n")},
    ),
    "imap-unterminated-quote-does-not-leak-into-next-command": Nginx122Difference(
        "fixed",
        'Spec §10.2: nginx leaves its "inside quotes" flag set after `a LOGIN "ok` CRLF, so the next, '
        "well-formed LOGIN is refused; mailgate resets it (docs/quirks.md #2).",
        {4: (b"b OK backend logged in\r\n", b"b BAD invalid command\r\n")},
    ),
    "imap-invalid-tag-after-rejection-gets-untagged-bad": Nginx122Difference(
        "fixed",
        "After a rejection with Auth-Wait nginx answers an untaggable command with a stale tag pointing into "
        "its rewound buffer (here `!xBAD invalid command`); mailgate answers `* BAD` (docs/quirks.md #12).",
        {4: (b"* BAD invalid command\r\n", b"!xBAD invalid command\r\n")},
    ),
    "imap-authenticate-login-bad-base64-username-is-tagged": Nginx122Difference(
        "fixed",
        "nginx answers bad base64 on the AUTHENTICATE LOGIN username line with an untagged, starless "
        "`BAD invalid command`; mailgate uses the AUTHENTICATE tag as spec §2.2.3 says (docs/quirks.md #13).",
        {4: (b"a BAD invalid command\r\n", b"BAD invalid command\r\n")},
    ),
    "pop3-auth-plain-line-break-in-password-refused": Nginx122Difference(
        "fixed",
        "nginx passes a decoded SASL password with CRLF on to `PASS ...`, injecting `DELE 1` into the "
        "backend session (the backend here echoes it); mailgate refuses it (docs/quirks.md #23).",
        {2: (b"-ERR invalid command\r\n", b"+OK backend logged in\r\n"), 4: (b"+OK\r\n", b"DELE 1\r\n")},
    ),
    "smtp-refused-mail-keeps-pipelined-commands-intact": Nginx122Difference(
        "fixed",
        "To log a refused MAIL, nginx turns every CR/LF in its buffer into `_`, so the pipelined `NOOP` "
        "merges with the next one into `NOOP_NOOP` (500); mailgate answers both NOOPs (docs/quirks.md #15).",
        {4: (b"250 2.0.0 OK\r\n", b"500 5.5.1 Invalid command\r\n")},
    ),
}
