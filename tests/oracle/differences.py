"""Sessions where Debian's nginx 1.22 does not send what the spec (newest nginx, 1.31) says.

For each, the session's own ``expect`` bytes are the spec's, and mailgate must send them; ``nginx_1_22``
gives what nginx 1.22 sends instead at the listed script steps. The tests assert both, so an entry cannot
go stale: if nginx 1.22 ever sent the spec's bytes, or mailgate did not, a test fails.

``newer`` entries are explained by a later nginx change in spec §8. ``unexplained`` entries contradict the
spec with no §8 entry to account for them: mailgate follows the spec, and the spec's owner should confirm
the spec rather than nginx 1.22 (both are reported).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Nginx122Difference:
    kind: str  # "newer" or "unexplained"
    reason: str
    nginx_1_22: dict[int, bytes]  # script step index -> what nginx 1.22 sends in that Read


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
