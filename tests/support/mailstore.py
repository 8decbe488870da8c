"""Test mail users, test messages, and direct access to a user's Maildir (seed messages, read what landed).

Pitfalls:
- Maildir files must belong to the mail uid Dovecot runs the user's processes as (``nobody`` here), or
  Dovecot fails with "Permission denied"; ``Maildir.deliver`` chowns what it writes.
- Dovecot serves a Maildir file's bytes as stored; a message written with CRLF line endings comes back
  byte for byte from IMAP ``BODY[]`` and POP3 ``RETR``. Mail that arrives through Postfix and
  ``dovecot-lda`` is stored with LF line endings and gains ``Return-Path``/``Delivered-To``/``Received``
  headers: compare such mail by content, not by digest.
- Dovecot moves files from ``new/`` to ``cur/`` (renaming them) when a client opens the mailbox, so a
  listing can race with a rename; ``Maildir.messages`` retries until it gets a consistent view.
- Dovecot assigns IMAP UIDs in the order it notices files, not in delivery order: find a message by its
  Subject or Message-ID (``SEARCH HEADER``), not by sequence number.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path

from tests.support.loopback import wait_until

TEST_DOMAIN = "test.example"

_delivery_counter = itertools.count()


@dataclass(frozen=True)
class MailUser:
    """A mailbox owner: ``name`` is the Dovecot login and the local part of ``address``."""

    name: str
    password: str = field(repr=False)
    domain: str = TEST_DOMAIN

    def __post_init__(self) -> None:
        # passwd-file lines are colon-separated; the name is a file name; Postfix lower-cases recipients.
        if set(":\r\n\0") & set(self.name + self.password):
            raise ValueError(f"test user {self.name!r}: no colon, CR, LF or NUL in name or password")
        if (
            not self.name
            or self.name != self.name.lower()
            or self.name[0] == "."
            or set(self.name) & set(" @/")
        ):
            raise ValueError(
                f"test user {self.name!r}: names are lower case, without space, @, / or leading ."
            )

    @property
    def address(self) -> str:
        return f"{self.name}@{self.domain}"


@dataclass(frozen=True)
class StoredMessage:
    """One message file in a Maildir, with the bytes it held when read."""

    path: Path
    data: bytes = field(repr=False)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def header(self, name: str) -> str | None:
        """The first header ``name`` (case-insensitive), unfolded, or None."""
        head = self.data.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0].decode("utf-8", "replace")
        unfolded = head.replace("\n ", " ").replace("\n\t", " ")
        prefix = name.lower() + ":"
        for line in unfolded.split("\n"):
            if line.lower().startswith(prefix):
                return line[len(prefix) :].strip()
        return None


def build_message(
    subject: str,
    *,
    size: int = 0,
    sender: str = "sender@example.org",
    recipient: str = f"someone@{TEST_DOMAIN}",
    seed: int | None = None,
) -> bytes:
    """An RFC 5322 message with CRLF line endings and a unique Message-ID, padded to at least ``size``.

    The body is base64 text in 76-character lines, so no line starts with "." (no dot-stuffing
    surprises) and nothing is 8-bit; ``seed`` makes the body reproducible.
    """
    chooser = random.Random(seed)
    message_id = f"<{chooser.getrandbits(64):016x}.{time.time_ns()}@{TEST_DOMAIN}>"
    head = (
        f"From: <{sender}>\r\n"
        f"To: <{recipient}>\r\n"
        f"Subject: {subject}\r\n"
        f"Date: {formatdate(localtime=False)}\r\n"
        f"Message-ID: {message_id}\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "\r\n"
    ).encode()
    body = [f"Test message {subject}.\r\n".encode()]
    missing = size - len(head) - len(body[0])
    if missing > 0:
        line_count = -(-missing // 78)
        text = base64.b64encode(chooser.randbytes(line_count * 57))  # 57 bytes -> 76 base64 characters
        body.extend(text[i * 76 : i * 76 + 76] + b"\r\n" for i in range(line_count))
    return head + b"".join(body)


class Maildir:
    """A user's ``~/Maildir`` INBOX as files; safe to use while Dovecot serves the same mailbox."""

    def __init__(self, path: Path, owner_uid: int, owner_gid: int) -> None:
        self.path = path
        self.owner_uid = owner_uid
        self.owner_gid = owner_gid

    def create(self) -> None:
        """Create the Maildir (and its parent home) owned by the mail user, if missing."""
        for directory in (
            self.path.parent,
            self.path,
            self.path / "tmp",
            self.path / "new",
            self.path / "cur",
        ):
            directory.mkdir(mode=0o700, exist_ok=True)
            os.chown(directory, self.owner_uid, self.owner_gid)

    def deliver(self, message: bytes) -> StoredMessage:
        """Put ``message`` into ``new/`` the Maildir way (write in ``tmp/``, then rename)."""
        self.create()
        name = f"{time.time_ns() // 1000}.M{next(_delivery_counter)}P{os.getpid()}.mailgate-tests"
        staging = self.path / "tmp" / name
        staging.write_bytes(message)
        os.chown(staging, self.owner_uid, self.owner_gid)
        final = self.path / "new" / name
        staging.rename(final)
        return StoredMessage(final, message)

    def messages(self) -> list[StoredMessage]:
        """Every message in ``new/`` and ``cur/``, oldest file first."""
        while True:
            found: dict[str, tuple[int, StoredMessage]] = {}
            vanished = False
            paths = [*self._listing("new"), *self._listing("cur")]
            for path in paths:
                try:
                    mtime = path.stat().st_mtime_ns
                    data = path.read_bytes()
                except FileNotFoundError:
                    vanished = True  # renamed new/ -> cur/ under us: list again
                    continue
                found.setdefault(path.name.split(":", 1)[0], (mtime, StoredMessage(path, data)))
            if not vanished:
                return [message for _, message in sorted(found.values(), key=lambda item: item[0])]

    def _listing(self, subdirectory: str) -> list[Path]:
        try:
            return list((self.path / subdirectory).iterdir())
        except FileNotFoundError:
            return []

    def wait_for_message(
        self, matches: Callable[[StoredMessage], bool], timeout: float = 20.0
    ) -> StoredMessage:
        """The first message for which ``matches`` is true, waiting up to ``timeout`` seconds for it."""
        found: list[StoredMessage] = []

        def arrived() -> bool:
            found.extend(message for message in self.messages() if matches(message))
            return bool(found)

        if not wait_until(arrived, timeout, interval=0.05):
            raise TimeoutError(f"no matching message arrived in {self.path} within {timeout} s")
        return found[0]
