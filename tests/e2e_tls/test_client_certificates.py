"""Client certificates through whole sessions: each ssl_verify_client mode meets a good, revoked, expired,
too-deep, untrusted and self-signed certificate (and none), and the client line and the auth request are
nginx's, byte for byte.

The IMAP matrix uses Python's ssl over implicit TLS; POP3 and SMTP use `openssl s_client -cert/-key`, over
implicit TLS and after STARTTLS. A session that passes the check logs in, so the auth request (with
`auth_http_pass_client_cert on`) shows the verify result and the certificate facts nginx sends.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e_tls.support import (
    KINDS,
    REFUSAL,
    Conversation,
    Proxy,
    client_context,
    mail_config,
    running_both,
    s_client,
)
from tests.support.authserver import AuthRequest
from tests.tls.support import Pki

pytestmark = pytest.mark.nginx

TEMPLATE = mail_config(
    """
    auth_http_pass_client_cert on;
    ssl_client_certificate $pki/ca.crt;

    server { listen 127.0.0.1:$imap_on ssl; protocol imap; ssl_verify_client on; }
    server { listen 127.0.0.1:$imap_optional ssl; protocol imap; ssl_verify_client optional; }
    server { listen 127.0.0.1:$imap_no_ca ssl; protocol imap; ssl_verify_client optional_no_ca; }
    server {
        listen 127.0.0.1:$imap_crl_on ssl; protocol imap;
        ssl_verify_client on; ssl_crl $pki/ca.crl;
    }
    server {
        listen 127.0.0.1:$imap_crl_no_ca ssl; protocol imap;
        ssl_verify_client optional_no_ca; ssl_crl $pki/ca.crl;
    }
    server {
        listen 127.0.0.1:$imap_deep ssl; protocol imap;
        ssl_verify_client on; ssl_verify_depth 3; ssl_crl $pki/chain.crl;
    }
    server {
        listen 127.0.0.1:$imap_deep_missing_crl ssl; protocol imap;
        ssl_verify_client on; ssl_verify_depth 3; ssl_crl $pki/ca.crl;
    }

    server {
        listen 127.0.0.1:$pop3_ssl ssl; listen 127.0.0.1:$pop3_starttls; protocol pop3; starttls on;
        ssl_verify_client on; ssl_crl $pki/ca.crl;
    }
    server {
        listen 127.0.0.1:$smtp_ssl ssl; listen 127.0.0.1:$smtp_starttls; protocol smtp; starttls on;
        ssl_verify_client on; ssl_crl $pki/ca.crl;
    }
"""
)

CERT_ERROR = {
    "imap": "* BYE SSL certificate error",
    "pop3": "-ERR SSL certificate error",
    "smtp": "421 4.7.1 SSL certificate error",
}
NO_CERT = {
    "imap": "* BYE No required SSL certificate",
    "pop3": "-ERR No required SSL certificate",
    "smtp": "421 4.7.1 No required SSL certificate",
}
GREETING = b"* OK IMAP4 ready\r\n"
LOGGED_IN = GREETING + f"a NO {REFUSAL}\r\n".encode()


@pytest.fixture(scope="module")
def proxies(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Proxy]]:
    with running_both(TEMPLATE, pki.directory, tmp_path_factory.mktemp("client-certs")) as both:
        yield both


def certificate(pki: Pki, name: str | None) -> tuple[Path, Path] | None:
    return getattr(pki, name) if name else None


@dataclass(frozen=True)
class Observed:
    """What one session showed: everything the client received, and the auth request if one was made."""

    received: bytes
    request: AuthRequest | None

    @property
    def verify(self) -> str | None:
        return self.request.header("Auth-SSL-Verify") if self.request else None


def imap_session(proxy: Proxy, server: str, client: tuple[Path, Path] | None) -> Observed:
    """Implicit TLS with Python's ssl presenting `client`; log in if greeted."""
    before = len(proxy.auth.requests)
    with Conversation.open(proxy.port(server), client_context(certificate=client)) as conversation:
        if conversation.line() == GREETING:
            conversation.send(b"a LOGIN alice secret\r\n")
            conversation.reply("imap", b"a")
        conversation.rest()
    requests = proxy.new_requests(before)
    assert len(requests) <= 1
    return Observed(b"".join(conversation.received), requests[0] if requests else None)


def observed_on_both(proxies: dict[str, Proxy], server: str, client: tuple[Path, Path] | None) -> Observed:
    """mailgate's session, after checking nginx's was the same (lines and the whole auth request)."""
    seen = {kind: imap_session(proxies[kind], server, client) for kind in KINDS}
    mailgate, nginx = seen["mailgate"], seen["nginx"]
    assert mailgate.received == nginx.received
    assert (mailgate.request and mailgate.request.raw) == (nginx.request and nginx.request.raw)
    return mailgate


# (server, client certificate, what the client gets, Auth-SSL-Verify sent when it logs in)
IMAP_CASES = [
    ("imap_on", None, NO_CERT["imap"], None),
    ("imap_on", "client", "logged in", "SUCCESS"),
    ("imap_on", "client_expired", CERT_ERROR["imap"], None),
    ("imap_on", "client_deep", CERT_ERROR["imap"], None),
    ("imap_on", "client_untrusted", CERT_ERROR["imap"], None),
    ("imap_on", "client_self_signed", CERT_ERROR["imap"], None),
    ("imap_optional", None, "logged in", "NONE"),
    ("imap_optional", "client", "logged in", "SUCCESS"),
    ("imap_optional", "client_expired", CERT_ERROR["imap"], None),
    ("imap_optional", "client_untrusted", CERT_ERROR["imap"], None),
    ("imap_optional", "client_self_signed", CERT_ERROR["imap"], None),
    ("imap_no_ca", None, "logged in", "NONE"),
    ("imap_no_ca", "client", "logged in", "SUCCESS"),
    ("imap_no_ca", "client_expired", CERT_ERROR["imap"], None),
    # Past the default ssl_verify_depth 1 the chain stops below the CA: an unknown issuer, tolerated here.
    ("imap_no_ca", "client_deep", "logged in", "FAILED:unable to get local issuer certificate"),
    ("imap_no_ca", "client_untrusted", "logged in", "FAILED:unable to verify the first certificate"),
    ("imap_no_ca", "client_self_signed", "logged in", "FAILED:self-signed certificate"),
    ("imap_crl_on", "client", "logged in", "SUCCESS"),
    ("imap_crl_on", "client_revoked", CERT_ERROR["imap"], None),
    ("imap_crl_no_ca", "client_revoked", CERT_ERROR["imap"], None),
    ("imap_deep", "client_deep", "logged in", "SUCCESS"),
    # CRL checking covers the whole chain: without the intermediates' CRLs the deep chain fails.
    ("imap_deep_missing_crl", "client_deep", CERT_ERROR["imap"], None),
]


@pytest.mark.parametrize("case", IMAP_CASES, ids=[f"{case[0]}-{case[1] or 'none'}" for case in IMAP_CASES])
def test_imap_session_meets_the_client_certificate_as_nginx_does(
    proxies: dict[str, Proxy], pki: Pki, case: tuple[str, str | None, str, str | None]
) -> None:
    server, client, outcome, verify = case
    observed = observed_on_both(proxies, server, certificate(pki, client))
    if outcome == "logged in":
        assert observed.received == LOGGED_IN
        assert observed.verify == verify
    else:
        assert observed.received == f"{outcome}\r\n".encode()
        assert observed.request is None


def test_rejections_are_logged_with_the_verify_error(proxies: dict[str, Proxy], pki: Pki) -> None:
    for server, client in (("imap_on", "client_expired"), ("imap_on", None)):
        observed_on_both(proxies, server, certificate(pki, client))
    logs = {kind: proxies[kind].log_text() for kind in KINDS}
    for expected in (
        "client SSL certificate verify error: (10:certificate has expired)",
        "client sent no required SSL certificate",
    ):
        assert expected in logs["nginx"]
        assert expected in logs["mailgate"]


# --- POP3 and SMTP with s_client -----------------------------------------------------------------------

TYPED = {
    "pop3": b"USER alice\nPASS secret\n",
    "smtp": b"EHLO client.example.org\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\n",
}
REFUSED = {"pop3": f"-ERR {REFUSAL}", "smtp": f"535 5.7.0 {REFUSAL}"}


def s_client_lines(proxy: Proxy, protocol: str, mode: str, client: tuple[Path, Path] | None) -> list[str]:
    """The lines the server sent over TLS (greeting onwards with implicit TLS), `client` presented."""
    arguments: list[str | Path] = ["-brief"]
    if client is not None:
        arguments += ["-cert", client[0], "-key", client[1]]
    if mode == "starttls":
        arguments += ["-starttls", protocol]
    after = "\n" if mode == "ssl" else None
    run = s_client(proxy.port(f"{protocol}_{mode}"), *arguments, typed=TYPED[protocol], after=after)
    assert run.handshake_done, run.output
    return run.lines


@pytest.mark.parametrize("protocol", ["pop3", "smtp"])
@pytest.mark.parametrize("mode", ["ssl", "starttls"])
@pytest.mark.parametrize("client", ["client", "client_revoked", "client_expired", None])
def test_pop3_and_smtp_sessions_meet_the_client_certificate_as_nginx_does(
    proxies: dict[str, Proxy], pki: Pki, protocol: str, mode: str, client: str | None
) -> None:
    before = {kind: len(proxies[kind].auth.requests) for kind in KINDS}
    seen = {kind: s_client_lines(proxies[kind], protocol, mode, certificate(pki, client)) for kind in KINDS}
    requests = {kind: proxies[kind].new_requests(before[kind]) for kind in KINDS}
    assert seen["mailgate"] == seen["nginx"]
    assert [request.raw for request in requests["mailgate"]] == [request.raw for request in requests["nginx"]]
    lines = seen["mailgate"]
    if client == "client":
        assert lines[-1] == REFUSED[protocol]
        assert [request.header("Auth-SSL-Verify") for request in requests["mailgate"]] == ["SUCCESS"]
    else:
        expected = NO_CERT[protocol] if client is None else CERT_ERROR[protocol]
        # After STARTTLS the line is the first thing over TLS; with implicit TLS it replaces the greeting.
        assert lines[-1] == expected
        assert requests["mailgate"] == []
