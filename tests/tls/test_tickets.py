"""ssl_session_ticket_key files (48/80 bytes, rotation) and the keys a shared zone generates and rotates."""

import os
import re
import time
from pathlib import Path
from typing import Any

import pytest

from mailgate.config.errors import ConfigError
from mailgate.config.model import SessionCache
from mailgate.tls import ServerTls, build_server_context
from mailgate.tls.sessions import SharedSessionCache, TicketKey
from mailgate.tls.tickets import TicketKeyRing
from tests.tls.support import Pki, pair, s_client, server_config, serving, unique_zone


def _key_file(directory: Path, name: str, size: int = 80) -> Path:
    path = directory / name
    path.write_bytes(os.urandom(size))
    return path


def _ticket_server(pki: Pki, *keys: Path, **settings: Any) -> ServerTls:
    return build_server_context(
        server_config((pair(*pki.server_ecdsa),), session_ticket_keys=keys, **settings)
    )


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
@pytest.mark.parametrize("size", [48, 80])
def test_ticket_from_one_server_resumes_on_another_reading_the_same_key_file(
    pki: Pki, tmp_path: Path, version: str, size: int
) -> None:
    key = _key_file(tmp_path, "ticket.key", size)
    session_file = tmp_path / "session.pem"
    with serving(_ticket_server(pki, key)) as first:
        assert s_client(first.port, version, "-sess_out", session_file).handshake_done
    with serving(_ticket_server(pki, key)) as second:
        resumed = s_client(second.port, version, "-sess_in", session_file)
    with serving(_ticket_server(pki, _key_file(tmp_path, "other.key", size))) as third:
        foreign = s_client(third.port, version, "-sess_in", session_file)
    assert resumed.reused
    assert foreign.handshake_done and not foreign.reused


def _printed_ticket_key_name(output: str) -> bytes | None:
    """The first 16 bytes of the ticket `openssl s_client` prints: the name of the key that encrypted it."""
    match = re.search(r"TLS session ticket:\n\s*0000 - ([0-9a-f -]{47})", output)
    return bytes.fromhex(match.group(1).replace("-", " ")) if match else None


def test_old_key_still_decrypts_after_rotation_and_the_ticket_is_renewed_tls12(
    pki: Pki, tmp_path: Path
) -> None:
    old, new = _key_file(tmp_path, "old.key"), _key_file(tmp_path, "new.key")
    session_file = tmp_path / "session.pem"
    with serving(_ticket_server(pki, old)) as before:
        issued = s_client(before.port, "-tls1_2", "-sess_out", session_file)
    with serving(_ticket_server(pki, new, old)) as rotated:
        with_old_key = s_client(rotated.port, "-tls1_2", "-sess_in", session_file)
    assert _printed_ticket_key_name(issued.output) == old.read_bytes()[:16]
    assert with_old_key.reused
    assert _printed_ticket_key_name(with_old_key.output) == new.read_bytes()[:16]


def test_old_key_still_decrypts_after_rotation_and_the_ticket_is_renewed_tls13(
    pki: Pki, tmp_path: Path
) -> None:
    old, new = _key_file(tmp_path, "old.key"), _key_file(tmp_path, "new.key")
    old_ticket, renewed_ticket = tmp_path / "old.pem", tmp_path / "renewed.pem"
    with serving(_ticket_server(pki, old)) as before:
        assert s_client(before.port, "-tls1_3", "-sess_out", old_ticket).handshake_done
    with serving(_ticket_server(pki, new, old)) as rotated:
        with_old_key = s_client(rotated.port, "-tls1_3", "-sess_in", old_ticket, "-sess_out", renewed_ticket)
    with serving(_ticket_server(pki, new)) as after:
        with_new_key = s_client(after.port, "-tls1_3", "-sess_in", renewed_ticket)
    assert with_old_key.reused
    assert with_new_key.reused


def test_ticket_key_file_of_the_wrong_size_is_a_config_error(pki: Pki, tmp_path: Path) -> None:
    bad = _key_file(tmp_path, "bad.key", 64)
    with pytest.raises(ConfigError) as error:
        _ticket_server(pki, bad)
    assert str(error.value) == f'"{bad}" must be 48 or 80 bytes'


def test_missing_ticket_key_file_is_a_config_error(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r'^open\(\) ".*missing.key" failed \(2: No such file or directory\)$'
    ):
        _ticket_server(pki, tmp_path / "missing.key")


def test_key_file_layouts_follow_nginx() -> None:
    data = bytes(range(80))
    key80 = TicketKey.from_file_bytes(data)
    assert (key80.name, key80.hmac_key, key80.aes_key, key80.size) == (data[:16], data[16:48], data[48:], 80)
    key48 = TicketKey.from_file_bytes(data[:48])
    assert (key48.name, key48.aes_key, key48.hmac_key, key48.size) == (
        data[:16],
        data[16:32],
        data[32:48],
        48,
    )
    assert "aes" not in repr(key80) and data[16:48].hex() not in repr(key80)


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_shared_zone_keys_let_separately_built_contexts_resume_each_others_tickets(
    pki: Pki, tmp_path: Path, version: str
) -> None:
    zone = unique_zone()
    settings: dict[str, Any] = {"session_cache": SessionCache(mode="cache", shared=zone)}
    session_file = tmp_path / "session.pem"
    first_tls = build_server_context(server_config((pair(*pki.server_ecdsa),), **settings))
    second_tls = build_server_context(server_config((pair(*pki.server_ecdsa),), **settings))
    no_zone_tls = build_server_context(server_config((pair(*pki.server_ecdsa),)))
    with serving(first_tls) as first:
        assert s_client(first.port, version, "-sess_out", session_file).handshake_done
    with serving(second_tls) as second:
        resumed = s_client(second.port, version, "-sess_in", session_file)
    with serving(no_zone_tls) as other:
        not_resumed = s_client(other.port, version, "-sess_in", session_file)
    assert resumed.reused
    assert not not_resumed.reused


def test_shared_keys_rotate_once_the_previous_key_has_expired(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1_000_000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    zone = SharedSessionCache("rotation", 1 << 20)
    ring = TicketKeyRing(shared=zone)

    current, previous = ring.current(300)
    assert current == previous and current.expire == 1_000_300  # the first key is both
    clock[0] += 100
    assert ring.current(300)[0].name == current.name  # still in use, lifetime extended
    assert zone.rotate_ticket_keys(300)[0].expire == 1_000_400
    clock[0] += 250  # past the first key's original expiry, not its extended one
    rotated_current, rotated_previous = ring.current(300)
    assert rotated_previous.name == current.name  # the old key still decrypts
    assert rotated_current.name != current.name  # and a new one encrypts
    other_ring = TicketKeyRing(shared=zone)
    assert other_ring.current(300)[0].name == rotated_current.name  # every worker agrees


def test_the_c_callback_holds_shared_keys_only_until_the_ring_would_look_at_the_zone_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1_000_000.25]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    ring = TicketKeyRing(shared=SharedSessionCache("snapshot", 1 << 20))
    keys, valid_for = ring.snapshot(300)
    current, previous = ring.current(300)
    assert keys == [(key.name, key.aes_key, key.hmac_key, key.expire) for key in (current, previous)]
    assert valid_for == pytest.approx(0.75)  # current() skips the zone until the second ends
    file_keys, file_valid_for = TicketKeyRing([TicketKey.from_file_bytes(bytes(range(48)))]).snapshot(300)
    assert [name for name, *_ in file_keys] == [bytes(range(16))]
    assert file_valid_for >= 1e6  # file keys never change
