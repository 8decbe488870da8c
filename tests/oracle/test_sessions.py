"""nginx as the oracle: every scripted session against Debian's nginx and against mailgate, byte for byte.

For each session nginx must send what the session's ``expect`` bytes say (the spec), except where
``NGINX_1_22_DIFFERENCES`` records what nginx 1.22 sends instead; mailgate must then send exactly what nginx
sent — every byte the client receives up to authentication and the rejection lines after it — and cause
the same auth requests and backend login bytes. Where nginx 1.22 is older than the spec, mailgate must send
the spec's bytes.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.oracle import sessions_imap, sessions_pop3, sessions_smtp
from tests.oracle.differences import NGINX_1_22_DIFFERENCES
from tests.oracle.runs import Servers, SessionRun
from tests.oracle.script import Session, expected_transcript
from tests.oracle.transcript import ReadResult, Transcript
from tests.support.nginx import require_nginx

pytestmark = pytest.mark.nginx

SESSIONS: list[Session] = [*sessions_imap.SESSIONS, *sessions_pop3.SESSIONS, *sessions_smtp.SESSIONS]
BY_ID = {session.id: session for session in SESSIONS}


def nginx_1_22_transcript(session: Session) -> Transcript:
    """The spec's transcript with the steps nginx 1.22 answers differently replaced by what it sends."""
    transcript = expected_transcript(session.script)
    for index, (_, data) in NGINX_1_22_DIFFERENCES[session.id].reads.items():
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


def beyond_client(run: SessionRun) -> bytes:
    """The auth requests and backend bytes of a run, as one byte string to search."""
    return b"".join((*run.auth_requests, *run.backend_received))


def as_nginx_1_22(run: SessionRun, substitutions: tuple[tuple[bytes, bytes], ...]) -> SessionRun:
    """mailgate's run with the spec's bytes replaced by nginx 1.22's beyond the client."""

    def substituted(data: bytes) -> bytes:
        for spec, old in substitutions:
            data = data.replace(spec, old)
        return data

    return replace(
        run,
        auth_requests=tuple(map(substituted, run.auth_requests)),
        backend_received=tuple(map(substituted, run.backend_received)),
    )


def test_every_recorded_difference_names_a_session_and_a_difference() -> None:
    for session_id, difference in NGINX_1_22_DIFFERENCES.items():
        assert session_id in BY_ID, session_id
        assert difference.kind in ("newer", "fixed")
        assert bool(difference.reads) != bool(difference.beyond_client), session_id
        expected = expected_transcript(BY_ID[session_id].script)
        for index, (spec, old) in difference.reads.items():
            step = expected.steps[index]
            assert isinstance(step, ReadResult), (session_id, index)
            assert spec == step.data, f"{session_id}: step {index}'s spec bytes are not the session's expect"
            assert old != spec, f"{session_id}: the recorded nginx 1.22 bytes equal the spec's"
        for spec, old in difference.beyond_client:
            assert spec != old, session_id


@pytest.mark.parametrize("session", SESSIONS, ids=lambda session: session.id)
def test_nginx_sends_what_the_spec_says(session: Session, servers: Servers) -> None:
    require_nginx()
    run = servers.run("nginx", session)
    difference = NGINX_1_22_DIFFERENCES.get(session.id)
    if difference is not None and difference.reads:
        expected = nginx_1_22_transcript(session)
    else:
        expected = expected_transcript(session.script)
    reason = difference.reason if difference is not None else "spec"
    assert run.transcript.steps == expected.steps and not run.transcript.error, (
        f"{session.id} ({reason})\nnginx sent:\n{run.describe()}\nexpected:\n{expected.describe()}"
    )
    for spec, old in difference.beyond_client if difference is not None else ():
        assert old in beyond_client(run) and spec not in beyond_client(run), f"{session.id}\n{run.describe()}"


@pytest.mark.parametrize("session", SESSIONS, ids=lambda session: session.id)
def test_mailgate_sends_what_nginx_sends(session: Session, servers: Servers) -> None:
    require_nginx()
    nginx = servers.run("nginx", session)
    mailgate = servers.run("mailgate", session)
    difference = NGINX_1_22_DIFFERENCES.get(session.id)
    if difference is not None and difference.reads:
        spec = expected_transcript(session.script)
        assert mailgate.transcript.steps == spec.steps and not mailgate.transcript.error, (
            f"{session.id}: nginx 1.22 differs here ({difference.reason}); mailgate must follow the spec\n"
            f"mailgate sent:\n{mailgate.describe()}\nspec:\n{spec.describe()}"
        )
        return
    if difference is not None:
        for spec_bytes, _ in difference.beyond_client:
            assert spec_bytes in beyond_client(mailgate), f"{session.id}\n{mailgate.describe()}"
        mailgate = as_nginx_1_22(mailgate, difference.beyond_client)
    assert mailgate == nginx, f"{session.id}\nmailgate:\n{mailgate.describe()}\nnginx:\n{nginx.describe()}"
