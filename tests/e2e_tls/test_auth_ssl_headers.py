"""The Auth-SSL-* headers of the auth request equal nginx's, whatever the TLS version, cipher, verify mode and
certificate, and have nginx's formats (checked against `openssl x509` and the certificate itself).

s_client pins the protocol version and the cipher (`-tls1_2 -cipher`, `-tls1_3 -ciphersuites`) so both
servers negotiate the same. A certificate with an awkward subject (escapes, UTF-8, a multi-valued RDN, a
high-bit serial) shows the DN and serial formats.
"""

from __future__ import annotations

import datetime
import hashlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.e2e_tls.support import KINDS, Conversation, Proxy, mail_config, running_both, s_client
from tests.support.authserver import AuthRequest
from tests.tls.support import Pki

pytestmark = pytest.mark.nginx

TEMPLATE = mail_config(
    """
    ssl_client_certificate $cas;

    server { listen 127.0.0.1:$imap_off ssl; protocol imap; auth_http_pass_client_cert on; }
    server {
        listen 127.0.0.1:$imap_on ssl; protocol imap;
        ssl_verify_client on; auth_http_pass_client_cert on;
    }
    server { listen 127.0.0.1:$imap_optional ssl; protocol imap; ssl_verify_client optional; }
    server { listen 127.0.0.1:$imap_no_ca ssl; protocol imap; ssl_verify_client optional_no_ca; }
    server {
        listen 127.0.0.1:$pop3_on; protocol pop3; starttls on;
        ssl_verify_client on; auth_http_pass_client_cert on;
    }
    server {
        listen 127.0.0.1:$smtp_on; protocol smtp; starttls on;
        ssl_verify_client optional; auth_http_pass_client_cert on;
    }
"""
)

# What the user types once the session is up (any login: the auth server refuses it).
TYPED = {
    "imap": b"a LOGIN alice secret\n",
    "pop3": b"USER alice\nPASS secret\n",
    "smtp": b"EHLO client.example.org\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\n",
}


@dataclass(frozen=True)
class OddCertificate:
    """A client certificate whose subject needs every escape, and its CA."""

    cert: Path
    key: Path
    ca: Path


def odd_certificate(directory: Path) -> OddCertificate:
    ca = trustme.CA(organization_name="Ünïcode CA, Inc.")
    ca_certificate = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COUNTRY_NAME, "NZ")]),
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example, Inc.")]),
            x509.RelativeDistinguishedName(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, 'José "Q" <x>;+\\'),
                    x509.NameAttribute(NameOID.USER_ID, "jq"),
                ]
            ),
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "#lead ")]),
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.EMAIL_ADDRESS, "jose@example.com")]),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(0x80_00_00_00_00_00_00_00_0F)  # high bit set: nginx prints the magnitude bytes
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    odd = OddCertificate(directory / "odd.crt", directory / "odd.key", directory / "odd-ca.crt")
    odd.cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    odd.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    odd.ca.write_bytes(ca.cert_pem.bytes())
    return odd


@pytest.fixture(scope="module")
def odd(tmp_path_factory: pytest.TempPathFactory) -> OddCertificate:
    return odd_certificate(tmp_path_factory.mktemp("odd-certificate"))


@pytest.fixture(scope="module")
def proxies(
    pki: Pki, odd: OddCertificate, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Proxy]]:
    directory = tmp_path_factory.mktemp("auth-ssl")
    cas = directory / "cas.crt"
    cas.write_bytes(pki.ca_file.read_bytes() + odd.ca.read_bytes())
    with running_both(TEMPLATE, pki.directory, directory, values={"cas": cas}) as both:
        yield both


def auth_request(proxy: Proxy, server: str, *arguments: str | Path) -> AuthRequest:
    """The auth request of one s_client session that logs in on `server`."""
    protocol = server.partition("_")[0]
    before = len(proxy.auth.requests)
    implicit = protocol == "imap"
    starttls = [] if implicit else ["-starttls", protocol]
    after = "\n" if implicit else None
    run = s_client(proxy.port(server), "-brief", *starttls, *arguments, typed=TYPED[protocol], after=after)
    assert run.handshake_done, run.output
    requests = proxy.new_requests(before)
    assert len(requests) == 1, run.output
    return requests[0]


def same_on_both(proxies: dict[str, Proxy], server: str, *arguments: str | Path) -> AuthRequest:
    """mailgate's auth request, after checking it is nginx's byte for byte."""
    requests = {kind: auth_request(proxies[kind], server, *arguments) for kind in KINDS}
    assert requests["mailgate"].raw == requests["nginx"].raw
    return requests["mailgate"]


def ssl_headers(request: AuthRequest) -> dict[str, str]:
    return {name: value for name, value in request.headers if name.startswith("Auth-SSL")}


PINS = [
    ("-tls1_2", "-cipher", "ECDHE-RSA-AES256-GCM-SHA384", "TLSv1.2"),
    ("-tls1_2", "-cipher", "ECDHE-RSA-CHACHA20-POLY1305", "TLSv1.2"),
    ("-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256", "TLSv1.3"),
    ("-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256", "TLSv1.3"),
]


@pytest.mark.parametrize("pin", PINS, ids=[pin[2] for pin in PINS])
@pytest.mark.parametrize("server", ["imap_off", "imap_on"])
def test_protocol_and_cipher_headers_name_what_was_negotiated(
    proxies: dict[str, Proxy], pki: Pki, server: str, pin: tuple[str, str, str, str]
) -> None:
    version, option, cipher, protocol = pin
    client = ["-cert", str(pki.client[0]), "-key", str(pki.client[1])]
    request = same_on_both(proxies, server, version, option, cipher, *client)
    headers = ssl_headers(request)
    assert (headers["Auth-SSL"], headers["Auth-SSL-Protocol"], headers["Auth-SSL-Cipher"]) == (
        "on",
        protocol,
        cipher,
    )
    if server == "imap_off":
        # ssl_verify_client off: the certificate is not even asked for, so nothing about it is sent.
        assert list(headers) == ["Auth-SSL", "Auth-SSL-Protocol", "Auth-SSL-Cipher"]
    else:
        assert headers["Auth-SSL-Verify"] == "SUCCESS"
        assert "Auth-SSL-Cert" in headers


# (server, with the client certificate, Auth-SSL-* header names sent)
PRESENCE = [
    ("imap_optional", False, ["Verify"]),
    ("imap_optional", True, ["Verify", "Subject", "Issuer", "Serial", "Fingerprint"]),
    ("imap_no_ca", True, ["Verify", "Subject", "Issuer", "Serial", "Fingerprint"]),
    ("pop3_on", True, ["Verify", "Subject", "Issuer", "Serial", "Fingerprint", "Cert"]),
    ("smtp_on", False, ["Verify"]),
    ("smtp_on", True, ["Verify", "Subject", "Issuer", "Serial", "Fingerprint", "Cert"]),
]


@pytest.mark.parametrize(
    "case", PRESENCE, ids=[f"{case[0]}-{'cert' if case[1] else 'none'}" for case in PRESENCE]
)
def test_certificate_headers_follow_the_mode_and_auth_http_pass_client_cert(
    proxies: dict[str, Proxy], pki: Pki, case: tuple[str, bool, list[str]]
) -> None:
    server, with_certificate, names = case
    client = ["-cert", str(pki.client[0]), "-key", str(pki.client[1])] if with_certificate else []
    request = same_on_both(proxies, server, *client)
    headers = ssl_headers(request)
    expected = ["Auth-SSL", "Auth-SSL-Protocol", "Auth-SSL-Cipher", *(f"Auth-SSL-{name}" for name in names)]
    assert list(headers) == expected
    assert headers["Auth-SSL-Verify"] == ("SUCCESS" if with_certificate else "NONE")


def openssl_x509(path: Path, *options: str) -> str:
    command = ["openssl", "x509", "-in", str(path), "-noout", *options]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()


def escaped(data: bytes) -> str:
    """nginx's escaping of Auth-User, Auth-Pass and Auth-SSL-Cert: control bytes, space and % as %XX."""
    return "".join(f"%{byte:02X}" if byte <= 0x20 or byte == 0x25 else chr(byte) for byte in data)


def test_certificate_headers_have_nginxs_formats(proxies: dict[str, Proxy], odd: OddCertificate) -> None:
    request = same_on_both(proxies, "imap_on", "-cert", str(odd.cert), "-key", str(odd.key))
    headers = ssl_headers(request)
    certificate = x509.load_pem_x509_certificate(odd.cert.read_bytes())
    der = certificate.public_bytes(serialization.Encoding.DER)
    rfc2253 = ("-nameopt", "RFC2253")
    assert headers["Auth-SSL-Verify"] == "SUCCESS"
    assert headers["Auth-SSL-Subject"] == openssl_x509(odd.cert, "-subject", *rfc2253).removeprefix(
        "subject="
    )
    assert headers["Auth-SSL-Subject"].startswith("emailAddress=jose@example.com,OU=\\#lead\\ ,")
    assert 'CN=Jos\\C3\\A9 \\"Q\\" \\<x\\>\\;\\+\\\\+UID=jq' in headers["Auth-SSL-Subject"]
    assert headers["Auth-SSL-Issuer"] == openssl_x509(odd.cert, "-issuer", *rfc2253).removeprefix("issuer=")
    assert headers["Auth-SSL-Serial"] == "80000000000000000F"
    assert headers["Auth-SSL-Serial"] == openssl_x509(odd.cert, "-serial").removeprefix("serial=")
    assert headers["Auth-SSL-Fingerprint"] == hashlib.sha1(der).hexdigest()
    assert headers["Auth-SSL-Cert"] == escaped(odd.cert.read_bytes())


def test_plaintext_session_sends_no_ssl_headers(proxies: dict[str, Proxy]) -> None:
    """On a STARTTLS server a client that never starts TLS gets no Auth-SSL header at all."""
    before = {kind: len(proxies[kind].auth.requests) for kind in KINDS}
    for kind in KINDS:
        with Conversation.open(proxies[kind].port("pop3_on")) as conversation:
            conversation.line()
            conversation.send(b"USER alice\r\nPASS secret\r\n")
            conversation.rest()
    requests = {kind: proxies[kind].new_requests(before[kind]) for kind in KINDS}
    assert [request.raw for request in requests["mailgate"]] == [request.raw for request in requests["nginx"]]
    assert [ssl_headers(request) for request in requests["mailgate"]] == [{}]
