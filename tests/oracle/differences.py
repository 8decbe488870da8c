"""Sessions where Debian's nginx 1.22 does not send what the spec (newest nginx, 1.31) says.

For each, the session's own ``expect`` bytes are the spec's, and mailgate must send them; ``nginx_1_22``
gives what nginx 1.22 sends instead at the listed script steps. Where the client sees the same bytes and
only the auth request or the backend login differs, ``beyond_client`` gives the spec's and nginx 1.22's
bytes there. The tests assert both sides, so an entry cannot go stale: if nginx 1.22 ever sent the spec's
bytes, or mailgate did not, a test fails.

``newer`` entries are explained by a later nginx change in spec §8. ``unexplained`` entries contradict the
spec with no §8 entry to account for them: mailgate follows the spec, and the spec's owner should confirm
the spec rather than nginx 1.22 (both are reported).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Nginx122Difference:
    kind: str  # "newer" or "unexplained"
    reason: str
    nginx_1_22: dict[int, bytes] = field(default_factory=dict)  # script step -> what 1.22 sends in that Read
    # Where the client receives the same bytes: (spec, nginx 1.22) byte strings that differ in the auth
    # request or in what the backend receives. Replacing each spec string in mailgate's run gives nginx's.
    beyond_client: tuple[tuple[bytes, bytes], ...] = ()


NGINX_1_22_DIFFERENCES: dict[str, Nginx122Difference] = {
    "imap-literal-followed-by-letter": Nginx122Difference(
        "newer",
        "1.29.6: only SP or CRLF may follow an IMAP literal. nginx 1.22 swallows the byte after the literal "
        "(`{2}` `okx secret` logs in as `ok`/`secret`); the spec answers BAD (spec §2.2.1).",
        {4: b"a OK backend logged in\r\n"},
    ),
    "imap-literal-length-overflow": Nginx122Difference(
        "newer",
        "1.29.6: literal length overflow check. nginx 1.22 wraps the 23-digit length around and answers the "
        "literal continuation `+ OK`; the spec answers BAD (spec §2.2.1).",
        {2: b"+ OK\r\n"},
    ),
    "smtp-none-mail-after-rejected-auth-with-wait": Nginx122Difference(
        "newer",
        "1.29.1 (CVE-2025-53859): the login left from a rejected AUTH is cleared at MAIL. nginx 1.22 sends "
        "the stale login (`Auth-User: retry`) with the `smtp_auth none` request, which this auth server "
        "rejects again; the spec sends an empty Auth-User, so the RCPT is relayed (spec §2.4.4).",
        {4: b"250 2.0.0 OK\r\n535 5.7.0 Invalid login or password\r\n"},
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
        "unexplained",
        "Spec §2.2.1: an empty tag is a syntax error (`* BAD invalid command`). nginx 1.22's tag state takes "
        "a leading space as the end of a one-space tag and answers ` NOOP` with ` OK completed`; no §8 entry "
        "after 1.21.0 (stricter tags) changes this.",
        {2: b" OK completed\r\n"},
    ),
    "imap-authenticate-external-initial-response-not-enabled": Nginx122Difference(
        "unexplained",
        "Spec §2.5: EXTERNAL only if enabled, with or without an initial response. nginx 1.22 checks "
        "`imap_auth external` only for the bare `AUTHENTICATE EXTERNAL` (the 1.11.9 fix); with an initial "
        "response it authenticates. No §8 entry covers the initial-response form.",
        {2: b"a OK backend logged in\r\n"},
    ),
    "pop3-auth-external-initial-response-not-enabled": Nginx122Difference(
        "unexplained",
        "As imap-authenticate-external-initial-response-not-enabled, for POP3 `AUTH EXTERNAL <b64>` without "
        "`pop3_auth external`: nginx 1.22 authenticates, the spec answers -ERR.",
        {2: b"+OK backend logged in\r\n"},
    ),
    "smtp-auth-external-initial-response-not-enabled": Nginx122Difference(
        "unexplained",
        "As imap-authenticate-external-initial-response-not-enabled, for SMTP `AUTH EXTERNAL <b64>` without "
        "`smtp_auth external`: nginx 1.22 authenticates (235), the spec answers 500.",
        {2: b"235 2.0.0 OK\r\n"},
    ),
}
