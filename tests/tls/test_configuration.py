"""Every directive's effect seen by a client, and nginx's wording when something cannot be loaded."""

import dataclasses
import hashlib
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from mailgate.config.errors import ConfigError
from mailgate.config.model import CertificatePair, PemSource, SessionCache, SourceRef, StartTls, VerifyClient
from mailgate.tls import ServerTls, build_server_context
from tests.tls.support import Pki, pair, pem_file, resumes, s_client, server_config, serving, with_ssl


def _build(pki: Pki, **settings: Any) -> ServerTls:
    settings.setdefault("certificates", (pair(*pki.server_ecdsa),))
    certificates = settings.pop("certificates")
    return build_server_context(server_config(certificates, **settings))


def _encrypted_key(pki: Pki, tmp_path: Path, passphrase: bytes) -> Path:
    key = serialization.load_pem_private_key(pki.server_ecdsa[1].read_bytes(), password=None)
    path = tmp_path / "encrypted.key"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(passphrase),
        )
    )
    return path


def _error(pki: Pki, **settings: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        _build(pki, **settings)
    return str(caught.value)


# -- protocols, ciphers, curves, DH, SSL_CONF ------------------------------------------------------------


def test_protocols_are_any_subset(pki: Pki) -> None:
    with serving(_build(pki, protocols=frozenset({"TLSv1.3"}))) as only_13:
        refused_12 = s_client(only_13.port, "-tls1_2")
        allowed_13 = s_client(only_13.port, "-tls1_3")
    with serving(_build(pki, protocols=frozenset({"TLSv1", "TLSv1.2"}))) as gapped:
        refused_13 = s_client(gapped.port, "-tls1_3")
        allowed_12 = s_client(gapped.port, "-tls1_2")
    assert not refused_12.handshake_done and allowed_13.protocol == "TLSv1.3"
    assert not refused_13.handshake_done and allowed_12.protocol == "TLSv1.2"


def test_ciphers_and_server_preference(pki: Pki) -> None:
    server_order = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384"
    client_order = "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256"
    with serving(_build(pki, ciphers=server_order)) as client_preferred:
        by_client = s_client(client_preferred.port, "-tls1_2", "-cipher", client_order)
        unlisted = s_client(client_preferred.port, "-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305")
    with serving(_build(pki, ciphers=server_order, prefer_server_ciphers=True)) as server_preferred:
        by_server = s_client(server_preferred.port, "-tls1_2", "-cipher", client_order)
    assert by_client.cipher == "ECDHE-ECDSA-AES256-GCM-SHA384"
    assert by_server.cipher == "ECDHE-ECDSA-AES128-GCM-SHA256"
    assert not unlisted.handshake_done


def test_ecdh_curve_list_limits_the_groups(pki: Pki) -> None:
    with serving(_build(pki, ecdh_curve="secp384r1:prime256v1")) as server:
        x25519 = s_client(server.port, "-groups", "X25519")
        p384 = s_client(server.port, "-tls1_2", "-groups", "X25519:secp384r1:prime256v1")
    assert not x25519.handshake_done
    assert "Server Temp Key: ECDH, secp384r1" in p384.output


def test_dhparam_enables_dhe_ciphers(pki: Pki, tmp_path: Path) -> None:
    dhparam = tmp_path / "dh.pem"
    subprocess.run(
        [
            "openssl",
            "genpkey",
            "-genparam",
            "-algorithm",
            "DH",
            "-pkeyopt",
            "group:ffdhe2048",
            "-out",
            dhparam,
        ],
        check=True,
        capture_output=True,
    )
    rsa = (pair(*pki.server_rsa),)
    with serving(_build(pki, certificates=rsa)) as without:
        refused = s_client(without.port, "-tls1_2", "-cipher", "DHE-RSA-AES128-GCM-SHA256")
    with serving(_build(pki, certificates=rsa, dhparam=dhparam)) as with_dh:
        dhe = s_client(with_dh.port, "-tls1_2", "-cipher", "DHE-RSA-AES128-GCM-SHA256")
    assert not refused.handshake_done
    assert dhe.cipher == "DHE-RSA-AES128-GCM-SHA256"


def test_conf_command_applies_last(pki: Pki) -> None:
    commands = (("Ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"),)
    with serving(_build(pki, conf_commands=commands)) as server:
        result = s_client(server.port, "-tls1_3")
    assert result.cipher == "TLS_CHACHA20_POLY1305_SHA256"


def test_conf_command_file_values_are_relative_to_the_prefix(pki: Pki, tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_bytes(pki.ca_file.read_bytes())
    server = server_config(
        (pair(*pki.server_ecdsa),),
        verify_client=VerifyClient.OPTIONAL,
        trusted_certificate=pki.ca_file,
        conf_commands=(("RequestCAFile", "ca.pem"),),
    )
    with serving(build_server_context(server, prefix=tmp_path)) as running:
        result = s_client(running.port)
    assert "Acceptable client certificate CA names\nO = Mailgate Test CA" in result.output
    with pytest.raises(
        ConfigError, match=r'^SSL_CONF_cmd\("RequestCAFile", "/nowhere/ca.pem"\) failed \(SSL: '
    ):
        build_server_context(server, prefix=Path("/nowhere"))


def test_session_timeout_is_the_ticket_lifetime_hint(pki: Pki) -> None:
    with serving(_build(pki)) as default, serving(_build(pki, session_timeout=123.0)) as configured:
        default_hint = s_client(default.port, "-tls1_2")
        configured_hint = s_client(configured.port, "-tls1_2")
    assert "lifetime hint: 300 (seconds)" in default_hint.output
    assert "lifetime hint: 123 (seconds)" in configured_hint.output


def test_builtin_cache_size_bounds_the_sessions_kept(pki: Pki, tmp_path: Path) -> None:
    def first_session_survives_a_second(cache: SessionCache) -> bool:
        with serving(_build(pki, session_cache=cache, session_tickets=False)) as running:
            first = tmp_path / "first.pem"
            assert s_client(running.port, "-tls1_2", "-sess_out", first).handshake_done
            assert s_client(running.port, "-tls1_2").handshake_done
            return s_client(running.port, "-tls1_2", "-sess_in", first).reused

    assert first_session_survives_a_second(SessionCache(mode="cache", builtin=True))
    assert not first_session_survives_a_second(SessionCache(mode="cache", builtin=True, builtin_size=1))


def test_session_id_context_is_nginxs_not_pythons(pki: Pki) -> None:
    certificate = x509.load_pem_x509_certificate(pki.server_ecdsa[0].read_bytes())
    expected = hashlib.sha1(b"MAIL" + certificate.fingerprint(hashes.SHA1())).digest()
    assert _build(pki).session_id_context == expected
    with_ca = _build(pki, verify_client=VerifyClient.ON, client_certificate=pki.ca_file)
    assert with_ca.session_id_context != expected


def test_sessions_do_not_resume_on_a_server_with_another_certificate(pki: Pki, tmp_path: Path) -> None:
    cache = SessionCache(mode="cache", builtin=True)
    key = tmp_path / "ticket.key"
    key.write_bytes(bytes(80))
    ecdsa = _build(pki, session_cache=cache, session_ticket_keys=(key,))
    rsa = _build(pki, certificates=(pair(*pki.server_rsa),), session_cache=cache, session_ticket_keys=(key,))
    session_file = tmp_path / "session.pem"
    with serving(ecdsa) as first:
        assert resumes(first.port, "-tls1_2", session_file)
    with serving(rsa) as second:
        other = s_client(second.port, "-tls1_2", "-sess_in", session_file)
    assert not other.reused


def test_chain_comes_from_the_certificate_file_only(pki: Pki) -> None:
    leaf_only = pki.directory / "deep-leaf-only.crt"
    text = pki.client_deep[0].read_text()
    leaf_only.write_text(text[: text.index("-----END CERTIFICATE-----") + 26])
    chain_file = pki.directory / "deep-chain.crt"
    chain_file.write_text(text[text.index("-----END CERTIFICATE-----") + 26 :] + pki.ca_file.read_text())
    server = _build(
        pki,
        certificates=(pair(leaf_only, pki.client_deep[1]),),
        verify_client=VerifyClient.OPTIONAL,
        client_certificate=chain_file,
    )
    with serving(server) as running:
        result = s_client(running.port, "-showcerts")
    assert result.output.count("-----BEGIN CERTIFICATE-----") == 1


# -- certificates and keys -------------------------------------------------------------------------------


def test_data_values_load_from_memory(pki: Pki) -> None:
    certificate = PemSource(kind="data", data=pki.server_ecdsa[0].read_bytes(), text="data:...")
    key = PemSource(kind="data", data=pki.server_ecdsa[1].read_bytes(), text="data:...")
    with serving(_build(pki, certificates=(CertificatePair(certificate, key),))) as running:
        assert s_client(running.port).handshake_done


def test_broken_data_key_error_shows_no_key_material(pki: Pki) -> None:
    secret = pki.server_ecdsa[1].read_bytes()[:-40]
    key = PemSource(kind="data", data=secret, text="data:...")
    message = _error(pki, certificates=(CertificatePair(pem_file(pki.server_ecdsa[0]), key),))
    assert message.startswith('cannot load certificate key "data:...": PEM_read_bio_PrivateKey() failed')
    assert secret.decode().splitlines()[1][:20] not in message


def test_passphrases_are_tried_in_order(pki: Pki, tmp_path: Path) -> None:
    encrypted = _encrypted_key(pki, tmp_path, b"Tr0ub4dor&3")
    certificates = (pair(pki.server_ecdsa[0], encrypted),)
    with serving(_build(pki, certificates=certificates, passwords=(b"wrong", b"Tr0ub4dor&3"))) as running:
        assert s_client(running.port).handshake_done
    message = _error(pki, certificates=certificates, passwords=(b"correct horse", b"battery staple"))
    assert message.startswith(f'cannot load certificate key "{encrypted}": PEM_read_bio_PrivateKey() failed')
    assert "horse" not in message and "staple" not in message
    assert _error(pki, certificates=certificates).startswith(f'cannot load certificate key "{encrypted}"')


def test_store_keys_load_through_ossl_store(pki: Pki) -> None:
    key = PemSource(kind="store", uri=f"file:{pki.server_ecdsa[1]}", text=f"store:file:{pki.server_ecdsa[1]}")
    with serving(_build(pki, certificates=(CertificatePair(pem_file(pki.server_ecdsa[0]), key),))) as running:
        assert s_client(running.port).handshake_done
    missing = PemSource(kind="store", uri="file:/nonexistent/key.pem", text="store:file:/nonexistent/key.pem")
    message = _error(pki, certificates=(CertificatePair(pem_file(pki.server_ecdsa[0]), missing),))
    assert message.startswith('cannot load certificate key "store:file:/nonexistent/key.pem": OSSL_STORE_')


def test_engine_keys_fail_with_nginxs_words(pki: Pki) -> None:
    unknown = PemSource(kind="engine", engine="nosuchengine", key_id="key1", text="engine:nosuchengine:key1")
    no_id = PemSource(kind="engine", engine="nosuchengine", key_id=None, text="engine:nosuchengine")
    cert = pem_file(pki.server_ecdsa[0])
    assert _error(pki, certificates=(CertificatePair(cert, unknown),)).startswith(
        'cannot load certificate key "engine:nosuchengine:key1": ENGINE_by_id() failed (SSL: '
    )
    assert _error(pki, certificates=(CertificatePair(cert, no_id),)) == (
        'cannot load certificate key "engine:nosuchengine": invalid syntax'
    )


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (
            {"certificates": ()},
            'no "ssl_certificate" is defined for the "listen ... ssl" directive in /etc/mailgate/mail.conf:7',
        ),
        ({"ciphers": "NOPE"}, 'SSL_CTX_set_cipher_list("NOPE") failed (SSL: '),
        ({"ecdh_curve": "nocurve"}, 'SSL_CTX_set1_curves_list("nocurve") failed'),
        ({"conf_commands": (("Bogus", "x"),)}, 'SSL_CONF_cmd("Bogus", "x") failed (SSL: '),
        (
            {"verify_client": VerifyClient.ON},
            "no ssl_client_certificate or ssl_trusted_certificate for ssl_verify_client",
        ),
        ({"dhparam": Path("/nonexistent/dh.pem")}, 'BIO_new_file("/nonexistent/dh.pem") failed (SSL: '),
        (
            {"verify_client": VerifyClient.ON, "client_certificate": Path("/nonexistent/ca.pem")},
            'cannot load certificate "/nonexistent/ca.pem": BIO_new_file() failed (SSL: ',
        ),
    ],
)
def test_configuration_failures_use_nginxs_words(pki: Pki, settings: dict[str, Any], expected: str) -> None:
    assert _error(pki, **settings).startswith(expected)


def test_certificate_and_key_failures_use_nginxs_words(pki: Pki, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cert, key = pki.server_ecdsa
    assert _error(pki, certificates=(pair(tmp_path / "missing.crt", key),)).startswith(
        f'cannot load certificate "{tmp_path / "missing.crt"}": BIO_new_file() failed (SSL: error:'
    )
    assert _error(pki, certificates=(pair(garbage, key),)).startswith(
        f'cannot load certificate "{garbage}": PEM_read_bio_X509_AUX() failed (SSL: error:'
    )
    assert _error(pki, certificates=(pair(cert, garbage),)).startswith(
        f'cannot load certificate key "{garbage}": PEM_read_bio_PrivateKey() failed (SSL: error:'
    )
    mismatch = _error(pki, certificates=(pair(cert, pki.client[1]),))
    assert mismatch.startswith(f'SSL_CTX_use_PrivateKey("{pki.client[1]}") failed (SSL: ')
    assert "key values mismatch" in mismatch


def test_starttls_server_names_the_starttls_directive(pki: Pki) -> None:
    server = server_config(())
    starttls = with_ssl(server, starttls=StartTls.ON, starttls_source=SourceRef("/etc/mailgate/mail.conf", 3))
    starttls = dataclasses.replace(starttls, listens=())
    with pytest.raises(ConfigError) as caught:
        build_server_context(starttls)
    assert (
        str(caught.value)
        == 'no "ssl_certificate" is defined for the "starttls" directive in /etc/mailgate/mail.conf:3'
    )


def test_certificate_compression_is_reported_as_unsupported_on_openssl_3_0(pki: Pki) -> None:
    assert _build(pki).warnings == ()
    assert _build(pki, certificate_compression=True).warnings == (
        '"ssl_certificate_compression" ignored, not supported',
    )


def test_tls1_works_when_listed_and_the_security_level_allows_it(pki: Pki) -> None:
    legacy = "ECDHE-ECDSA-AES128-SHA:@SECLEVEL=0"
    with serving(_build(pki, protocols=frozenset({"TLSv1", "TLSv1.3"}), ciphers=legacy)) as running:
        tls1 = s_client(running.port, "-tls1", "-cipher", legacy)
        tls11 = s_client(running.port, "-tls1_1", "-cipher", legacy)
    assert tls1.protocol == "TLSv1"
    assert not tls11.handshake_done


def test_files_are_named_by_their_full_path_in_messages(pki: Pki, tmp_path: Path) -> None:
    written_relative = PemSource(kind="file", path=tmp_path / "missing.crt", text="missing.crt")
    message = _error(pki, certificates=(CertificatePair(written_relative, pem_file(pki.server_ecdsa[1])),))
    assert message.startswith(f'cannot load certificate "{tmp_path / "missing.crt"}": BIO_new_file() failed')
