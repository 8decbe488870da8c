"""`session_log` (a mailgate extension): inheritance from `mail {}` into each server, and `off`."""

from __future__ import annotations

from pathlib import Path

from tests.config.conftest import MAIL_HEAD, ConfDir


def test_a_server_inherits_the_mail_blocks_session_log_unless_it_says_otherwise(conf: ConfDir) -> None:
    loaded = conf.load(
        "events {}\n"
        f"{MAIL_HEAD}"
        "session_log logs/sessions.log json;\n"
        "server { listen 127.0.0.1:143; }\n"
        "server { listen 127.0.0.1:110; session_log off; }\n"
        "server { listen 127.0.0.1:25; session_log stderr; }\n"
        "}\n"
    )
    assert loaded.config.mail is not None
    inherited, off, own = (server.core.session_log for server in loaded.config.mail.servers)
    assert inherited is not None and (inherited.path, inherited.json) == (
        conf.path / Path("logs/sessions.log"),
        True,
    )
    assert off is None
    assert own is not None and (own.stderr, own.json) == (True, False)


def test_without_the_directive_there_is_no_session_log(conf: ConfDir) -> None:
    loaded = conf.load(f"events {{}}\n{MAIL_HEAD}server {{ listen 127.0.0.1:143; }}\n}}\n")
    assert loaded.config.mail is not None
    assert loaded.config.mail.servers[0].core.session_log is None
