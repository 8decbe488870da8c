"""nginx as the oracle: every scripted session against Debian's nginx and against mailgate, byte for byte.

For each session nginx must send what the session's ``expect`` bytes say (the spec), except where
``NGINX_1_22_DIFFERENCES`` records what nginx 1.22 sends instead; mailgate must then send exactly what nginx
sent — every byte the client receives up to authentication and the rejection lines after it — and cause
the same auth requests and backend login bytes. Where nginx 1.22 is older than the spec, mailgate must send
the spec's bytes.
"""

from __future__ import annotations

import pytest

from tests.oracle import sessions_imap, sessions_pop3, sessions_smtp
from tests.oracle.differences import NGINX_1_22_DIFFERENCES
from tests.oracle.runs import Servers
from tests.oracle.script import Session, expected_transcript
from tests.oracle.transcript import ReadResult, Transcript
from tests.support.nginx import require_nginx

pytestmark = pytest.mark.nginx

SESSIONS: list[Session] = [*sessions_imap.SESSIONS, *sessions_pop3.SESSIONS, *sessions_smtp.SESSIONS]
BY_ID = {session.id: session for session in SESSIONS}


def nginx_1_22_transcript(session: Session) -> Transcript:
    """The spec's transcript with the steps nginx 1.22 answers differently replaced by what it sends."""
    transcript = expected_transcript(session.script)
    for index, data in NGINX_1_22_DIFFERENCES[session.id].nginx_1_22.items():
        step = transcript.steps[index]
        assert isinstance(step, ReadResult), f"{session.id}: step {index} is not a Read"
        transcript.steps[index] = ReadResult(data, step.ended)
    return transcript


def test_sessions_cover_the_three_protocols_generously() -> None:
    assert len(BY_ID) == len(SESSIONS), "session ids must be unique"
    per_protocol = {
        protocol: sum(s.id.startswith(protocol) for s in SESSIONS) for protocol in ("imap", "pop3", "smtp")
    }
    assert len(SESSIONS) >= 150
    assert min(per_protocol.values()) >= 50, per_protocol


def test_every_recorded_difference_names_a_session_and_a_read() -> None:
    for session_id, difference in NGINX_1_22_DIFFERENCES.items():
        assert session_id in BY_ID, session_id
        assert difference.kind in ("newer", "unexplained")
        expected = expected_transcript(BY_ID[session_id].script)
        for index, data in difference.nginx_1_22.items():
            step = expected.steps[index]
            assert isinstance(step, ReadResult), (session_id, index)
            assert data != step.data, f"{session_id}: the recorded nginx 1.22 bytes equal the spec's"


@pytest.mark.parametrize("session", SESSIONS, ids=lambda session: session.id)
def test_nginx_sends_what_the_spec_says(session: Session, servers: Servers) -> None:
    require_nginx()
    run = servers.run("nginx", session)
    if session.id in NGINX_1_22_DIFFERENCES:
        expected = nginx_1_22_transcript(session)
        reason = NGINX_1_22_DIFFERENCES[session.id].reason
    else:
        expected = expected_transcript(session.script)
        reason = "spec"
    assert run.transcript.steps == expected.steps and not run.transcript.error, (
        f"{session.id} ({reason})\nnginx sent:\n{run.describe()}\nexpected:\n{expected.describe()}"
    )


@pytest.mark.parametrize("session", SESSIONS, ids=lambda session: session.id)
def test_mailgate_sends_what_nginx_sends(session: Session, servers: Servers) -> None:
    require_nginx()
    nginx = servers.run("nginx", session)
    mailgate = servers.run("mailgate", session)
    if session.id in NGINX_1_22_DIFFERENCES:
        spec = expected_transcript(session.script)
        assert mailgate.transcript.steps == spec.steps and not mailgate.transcript.error, (
            f"{session.id}: nginx 1.22 differs here ({NGINX_1_22_DIFFERENCES[session.id].reason}); mailgate "
            f"must follow the spec\nmailgate sent:\n{mailgate.describe()}\nspec:\n{spec.describe()}"
        )
        return
    assert mailgate == nginx, f"{session.id}\nmailgate:\n{mailgate.describe()}\nnginx:\n{nginx.describe()}"
