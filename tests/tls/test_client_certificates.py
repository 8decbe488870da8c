"""ssl_verify_client modes, depth, CA lists and CRLs: the post-handshake decision and the Auth-SSL-* facts."""

import subprocess
from pathlib import Path
from typing import Any

import pytest

from mailgate.config.model import Protocol, SessionCache, VerifyClient
from mailgate.tls import CertStatus, build_server_context
from tests.tls.support import Accepted, Pki, pair, resumes, s_client, server_config, serving, unique_zone

ON, OPTIONAL, NO_CA = VerifyClient.ON, VerifyClient.OPTIONAL, VerifyClient.OPTIONAL_NO_CA


def _connect(pki: Pki, client: tuple[Path, Path] | None, **ssl_settings: Any) -> tuple[Accepted, str]:
    ssl_settings.setdefault("client_certificate", pki.ca_file)
    server = server_config((pair(*pki.server_ecdsa),), **ssl_settings)
    arguments: list[str | Path] = []
    if client is not None:
        arguments = ["-cert", client[0], "-cert_chain", client[0], "-key", client[1]]
    with serving(build_server_context(server)) as running:
        result = s_client(running.port, *arguments)
        accepted = running.next_accepted()
    assert result.handshake_done, result.output
    return accepted, result.output


Case = tuple[str | None, dict[str, object], VerifyClient, CertStatus, str]

CASES: list[Case] = [
    # (client certificate, extra settings, mode, expected status, expected Auth-SSL-Verify)
    ("client", {}, ON, CertStatus.OK, "SUCCESS"),
    ("client", {}, OPTIONAL, CertStatus.OK, "SUCCESS"),
    ("client", {}, NO_CA, CertStatus.OK, "SUCCESS"),
    (None, {}, ON, CertStatus.NO_CERT, "NONE"),
    (None, {}, OPTIONAL, CertStatus.OK, "NONE"),
    (None, {}, NO_CA, CertStatus.OK, "NONE"),
    ("client_expired", {}, ON, CertStatus.CERT_ERROR, "FAILED:certificate has expired"),
    ("client_expired", {}, OPTIONAL, CertStatus.CERT_ERROR, "FAILED:certificate has expired"),
    ("client_expired", {}, NO_CA, CertStatus.CERT_ERROR, "FAILED:certificate has expired"),
    # Past ssl_verify_depth OpenSSL 3.0 stops building the chain below the trust anchor (error 20), which
    # optional_no_ca tolerates, as nginx on the same library does.
    ("client_deep", {}, ON, CertStatus.CERT_ERROR, "FAILED:unable to get local issuer certificate"),
    ("client_deep", {}, NO_CA, CertStatus.OK, "FAILED:unable to get local issuer certificate"),
    ("client_deep", {"verify_depth": 3}, ON, CertStatus.OK, "SUCCESS"),
    ("client_untrusted", {}, ON, CertStatus.CERT_ERROR, "FAILED:unable to verify the first certificate"),
    (
        "client_untrusted",
        {},
        OPTIONAL,
        CertStatus.CERT_ERROR,
        "FAILED:unable to verify the first certificate",
    ),
    ("client_untrusted", {}, NO_CA, CertStatus.OK, "FAILED:unable to verify the first certificate"),
    ("client_self_signed", {}, ON, CertStatus.CERT_ERROR, "FAILED:self-signed certificate"),
    ("client_self_signed", {}, OPTIONAL, CertStatus.CERT_ERROR, "FAILED:self-signed certificate"),
    ("client_self_signed", {}, NO_CA, CertStatus.OK, "FAILED:self-signed certificate"),
    ("client_revoked", {"crl": "crl_file"}, ON, CertStatus.CERT_ERROR, "FAILED:certificate revoked"),
    ("client_revoked", {"crl": "crl_file"}, NO_CA, CertStatus.CERT_ERROR, "FAILED:certificate revoked"),
    ("client", {"crl": "crl_file"}, ON, CertStatus.OK, "SUCCESS"),
    # CRL checking covers the whole chain: the intermediate needs a CRL too.
    (
        "client_deep",
        {"crl": "crl_file", "verify_depth": 3},
        ON,
        CertStatus.CERT_ERROR,
        "FAILED:unable to get certificate CRL",
    ),
    ("client_deep", {"crl": "crl_with_intermediates", "verify_depth": 3}, ON, CertStatus.OK, "SUCCESS"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: f"{case[0]}-{case[2].value}-{case[4]}")
def test_client_certificate_decision_and_verify_value(pki: Pki, case: Case) -> None:
    client, settings, mode, status, verify = case
    resolved = {key: getattr(pki, str(value)) if key == "crl" else value for key, value in settings.items()}
    accepted, _output = _connect(
        pki, getattr(pki, client) if client else None, verify_client=mode, **resolved
    )
    assert accepted.check.status is status
    assert accepted.facts.verify == verify
    if status is CertStatus.CERT_ERROR:
        assert accepted.check.reason == verify.removeprefix("FAILED:")
        assert (
            accepted.check.log_message
            == f"client SSL certificate verify error: ({accepted.check.code}:{accepted.check.reason})"
        )
        assert accepted.check.reply(Protocol.IMAP) == b"* BYE SSL certificate error\r\n"
    if status is CertStatus.NO_CERT:
        assert accepted.check.log_message == "client sent no required SSL certificate"
        assert accepted.check.reply(Protocol.SMTP) == b"421 4.7.1 No required SSL certificate\r\n"


def test_without_verification_no_certificate_is_requested(pki: Pki) -> None:
    accepted, output = _connect(pki, pki.client, verify_client=VerifyClient.OFF)
    assert accepted.check.status is CertStatus.OK
    assert accepted.facts.verify is None
    assert accepted.facts.certificate is None
    assert "Acceptable client certificate CA names" not in output


def test_client_certificate_sends_ca_names_and_trusted_certificate_does_not(pki: Pki) -> None:
    _accepted, sent = _connect(pki, pki.client, verify_client=ON)
    accepted, not_sent = _connect(
        pki, pki.client, verify_client=ON, client_certificate=None, trusted_certificate=pki.ca_file
    )
    assert "Acceptable client certificate CA names\nO = Mailgate Test CA" in sent
    assert "No client certificate CA names sent" in not_sent
    assert accepted.facts.verify == "SUCCESS"


def _openssl_x509(path: Path, *options: str) -> str:
    return subprocess.run(
        ["openssl", "x509", "-in", str(path), "-noout", *options], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_certificate_facts_have_nginx_formats(pki: Pki) -> None:
    accepted, _output = _connect(pki, pki.client, verify_client=ON)
    certificate = accepted.facts.certificate
    assert certificate is not None
    cert_file = pki.client[0]
    assert certificate.subject == _openssl_x509(cert_file, "-subject", "-nameopt", "RFC2253").removeprefix(
        "subject="
    )
    assert certificate.issuer == _openssl_x509(cert_file, "-issuer", "-nameopt", "RFC2253").removeprefix(
        "issuer="
    )
    assert certificate.subject.endswith(",O=Example\\, Inc.") or ",O=Example\\, Inc.," in certificate.subject
    assert certificate.serial == _openssl_x509(cert_file, "-serial").removeprefix("serial=")
    fingerprint = _openssl_x509(cert_file, "-fingerprint", "-sha1").split("=", 1)[1]
    assert certificate.fingerprint == fingerprint.replace(":", "").lower()
    leaf_pem = subprocess.run(
        ["openssl", "x509", "-in", str(cert_file)], capture_output=True, check=True
    ).stdout
    assert certificate.pem == leaf_pem
    assert certificate.common_name == "alice"
    assert certificate.presented_on_this_connection
    assert accepted.facts.verify_code == 0


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_rejected_session_is_removed_from_the_shared_cache(pki: Pki, tmp_path: Path, version: str) -> None:
    server = server_config(
        (pair(*pki.server_ecdsa),),
        verify_client=ON,
        client_certificate=pki.ca_file,
        session_cache=SessionCache(mode="cache", shared=unique_zone()),
        session_tickets=False,
    )
    good: list[str | Path] = ["-cert", pki.client[0], "-key", pki.client[1]]
    expired: list[str | Path] = ["-cert", pki.client_expired[0], "-key", pki.client_expired[1]]
    with serving(build_server_context(server)) as running:
        accepted_resumes = resumes(running.port, version, tmp_path / "good.pem", *good)
        rejected_resumes = resumes(running.port, version, tmp_path / "expired.pem", *expired)
        statuses = [running.next_accepted().check.status for _ in range(4)]
    assert accepted_resumes
    assert not rejected_resumes
    assert statuses == [CertStatus.OK, CertStatus.OK, CertStatus.CERT_ERROR, CertStatus.CERT_ERROR]


def test_resumed_session_carries_the_original_certificate_and_verify_result(pki: Pki, tmp_path: Path) -> None:
    server = server_config(
        (pair(*pki.server_ecdsa),),
        verify_client=ON,
        client_certificate=pki.ca_file,
        session_cache=SessionCache(mode="cache", builtin=True),
    )
    client: list[str | Path] = ["-cert", pki.client[0], "-key", pki.client[1]]
    with serving(build_server_context(server)) as running:
        assert resumes(running.port, "-tls1_2", tmp_path / "session.pem", *client)
        first, second = running.next_accepted(), running.next_accepted()
    assert second.facts.resumed and second.check.ok
    assert second.facts.verify == "SUCCESS"
    assert second.facts.certificate is not None and first.facts.certificate is not None
    assert second.facts.certificate.fingerprint == first.facts.certificate.fingerprint
    assert first.facts.certificate.presented_on_this_connection
    assert not second.facts.certificate.presented_on_this_connection
