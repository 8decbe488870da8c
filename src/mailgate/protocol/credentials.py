"""What a pre-auth engine hands to the auth step once a client's credentials are complete."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from mailgate.config.model import Protocol


class AuthMethod(StrEnum):
    """The `Auth-Method` header value (SASL LOGIN and the LOGIN/USER/PASS commands are all `plain`)."""

    PLAIN = "plain"
    APOP = "apop"
    CRAM_MD5 = "cram-md5"
    EXTERNAL = "external"
    NONE = "none"


@dataclass(frozen=True)
class Credentials:
    """One authentication attempt, as typed by the client.

    Values are raw bytes: logins and passwords may hold any byte, and the auth request escapes them.
    """

    protocol: Protocol
    method: AuthMethod
    login: bytes = b""
    password: bytes = field(default=b"", repr=False)  # for apop / cram-md5: the client's digest
    salt: bytes | None = None  # the session's `<R.T@server_name>`, once it has one; without CRLF
    imap_tag: bytes = b""  # IMAP: the tag of the LOGIN/AUTHENTICATE command, without the trailing space
    smtp_helo: bytes = b""  # SMTP: argument of the last HELO/EHLO (empty if none since connect/STARTTLS)
    smtp_esmtp: bool = False  # SMTP: the client used EHLO
    smtp_from: bytes = b""  # SMTP `smtp_auth none`: the whole stored `MAIL ...` command text
    smtp_to: bytes = b""  # SMTP `smtp_auth none`: the whole stored `RCPT ...` command text
