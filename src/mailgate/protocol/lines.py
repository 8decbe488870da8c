"""The fixed lines nginx sends outside any command's own reply (spec §0), one table per situation."""

from __future__ import annotations

from mailgate.config.model import Protocol

INTERNAL_ERROR: dict[Protocol, bytes] = {
    Protocol.IMAP: b"* BAD internal server error\r\n",  # untagged even when a command is pending
    Protocol.POP3: b"-ERR internal server error\r\n",
    Protocol.SMTP: b"451 4.3.2 Internal server error\r\n",
}

CERT_ERROR: dict[Protocol, bytes] = {
    Protocol.IMAP: b"* BYE SSL certificate error\r\n",
    Protocol.POP3: b"-ERR SSL certificate error\r\n",
    Protocol.SMTP: b"421 4.7.1 SSL certificate error\r\n",
}

NO_CERT: dict[Protocol, bytes] = {
    Protocol.IMAP: b"* BYE No required SSL certificate\r\n",
    Protocol.POP3: b"-ERR No required SSL certificate\r\n",
    Protocol.SMTP: b"421 4.7.1 No required SSL certificate\r\n",
}
