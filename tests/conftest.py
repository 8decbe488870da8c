"""Fixtures for real peers: a private Dovecot and Postfix per test session (per xdist worker), a fresh
Dovecot user and a recording auth_http server per test. Tests using the backends get the ``backends``
marker automatically, so ``-m "not backends"`` leaves them out.

Without the Debian packages (or without root) the backend tests are skipped with a loud reason; set
``MAILGATE_REQUIRE_BACKENDS=1`` to make that a failure instead (CI, where they must run).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import dovecot as dovecot_support
from tests.support import postfix as postfix_support
from tests.support.authserver import AuthServer
from tests.support.dovecot import Dovecot
from tests.support.mailstore import MailUser
from tests.support.postfix import Postfix

_BACKEND_FIXTURES = frozenset({"dovecot", "postfix", "mail_user"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _BACKEND_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.backends)


def _require_backend(name: str, missing: list[Path]) -> None:
    problem = ""
    if missing:
        binaries = ", ".join(map(str, missing))
        problem = f"not installed ({binaries}); apt-get install dovecot-imapd dovecot-pop3d postfix"
    elif os.geteuid() != 0:
        problem = "needs root (private Postfix and Dovecot instances drop privileges to their own users)"
    if problem:
        message = (
            f"!!! REAL {name.upper()} UNAVAILABLE: {problem}. END-TO-END TESTS AGAINST IT DID NOT RUN !!!"
        )
        if os.environ.get("MAILGATE_REQUIRE_BACKENDS"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


@pytest.fixture(scope="session")
def dovecot() -> Iterator[Dovecot]:
    """A private Dovecot: IMAP at (dovecot.host, dovecot.imap_port), POP3 at (host, pop3_port)."""
    _require_backend("Dovecot", dovecot_support.missing_binaries())
    server = Dovecot.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postfix(dovecot: Dovecot) -> Iterator[Postfix]:
    """A private Postfix: SMTP at (postfix.host, postfix.smtp_port), delivering into ``dovecot``."""
    _require_backend("Postfix", postfix_support.missing_binaries())
    server = Postfix.start(dovecot)
    yield server
    server.stop()


@pytest.fixture
def mail_user(dovecot: Dovecot) -> MailUser:
    """A Dovecot user of this test alone, with an empty INBOX; Postfix accepts mail for its address."""
    return dovecot.add_user()


@pytest.fixture
def auth_server() -> Iterator[AuthServer]:
    """A recording auth_http server on 127.0.0.1; route or script its replies before use."""
    with AuthServer() as server:
        yield server
