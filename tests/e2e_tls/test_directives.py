"""Each ngx_mail_ssl_module directive's effect as a client sees it in an IMAP session, the same from mailgate
and from Debian's nginx 1.22: certificates (RSA + ECDSA, `data:`, an encrypted key with `ssl_password_file`),
ciphers and their order, protocols, curves, DH parameters, `ssl_conf_command`, and the CA names a server
sends (`ssl_client_certificate`) or keeps (`ssl_trusted_certificate`).

Verify modes, CRLs and depth are in test_client_certificates.py, the session cache and tickets in
test_sessions.py, `starttls` and `listen ... ssl` in test_starttls.py.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests.e2e_tls.support import (
    KINDS,
    REFUSAL,
    Proxy,
    SClientRun,
    mail_config,
    running,
    running_both,
    s_client,
)
from tests.tls.support import Pki

pytestmark = pytest.mark.nginx

TEMPLATE = mail_config(
    """
    server {
        listen 127.0.0.1:$dual ssl; protocol imap;
        ssl_certificate $pki/server-rsa.crt; ssl_certificate_key $pki/server-rsa.key;
        ssl_certificate $pki/server-ecdsa.crt; ssl_certificate_key $pki/server-ecdsa.key;
    }
    server {
        listen 127.0.0.1:$data ssl; protocol imap;
        ssl_certificate "data:$ecdsa_pem"; ssl_certificate_key "data:$ecdsa_key";
    }
    server {
        listen 127.0.0.1:$encrypted ssl; protocol imap;
        ssl_certificate_key $encrypted_key; ssl_password_file $passwords;
    }
    server { listen 127.0.0.1:$one_cipher ssl; protocol imap; ssl_ciphers ECDHE-RSA-AES128-GCM-SHA256; }
    server {
        listen 127.0.0.1:$server_order ssl; protocol imap;
        ssl_ciphers ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256; ssl_prefer_server_ciphers on;
    }
    server {
        listen 127.0.0.1:$client_order ssl; protocol imap;
        ssl_ciphers ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256; ssl_prefer_server_ciphers off;
    }
    server { listen 127.0.0.1:$tls12 ssl; protocol imap; ssl_protocols TLSv1.2; }
    server { listen 127.0.0.1:$tls13 ssl; protocol imap; ssl_protocols TLSv1.3; }
    server { listen 127.0.0.1:$p384 ssl; protocol imap; ssl_ecdh_curve secp384r1; }
    server {
        listen 127.0.0.1:$dhe ssl; protocol imap;
        ssl_dhparam $dhparam; ssl_ciphers DHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256;
    }
    server {
        listen 127.0.0.1:$no_dhparam ssl; protocol imap;
        ssl_ciphers DHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256;
    }
    server {
        listen 127.0.0.1:$conf_command ssl; protocol imap;
        ssl_conf_command Ciphersuites TLS_CHACHA20_POLY1305_SHA256;
    }
    server {
        listen 127.0.0.1:$ca_names ssl; protocol imap;
        ssl_verify_client optional; ssl_client_certificate $pki/ca.crt;
    }
    server {
        listen 127.0.0.1:$trusted ssl; protocol imap;
        ssl_verify_client optional_no_ca; ssl_trusted_certificate $pki/ca.crt;
    }
"""
)
PASSPHRASE = "the-right-one"


def openssl(*arguments: str | Path) -> None:
    subprocess.run(["openssl", *map(str, arguments)], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def proxies(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Proxy]]:
    directory = tmp_path_factory.mktemp("directives")
    dhparam = directory / "dhparam.pem"
    openssl("genpkey", "-genparam", "-algorithm", "DH", "-pkeyopt", "group:ffdhe2048", "-out", dhparam)
    key = serialization.load_pem_private_key(pki.server_rsa[1].read_bytes(), password=None)
    encrypted_key = directory / "encrypted.key"
    encryption = serialization.BestAvailableEncryption(PASSPHRASE.encode())
    encrypted_key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    passwords = directory / "passwords"
    passwords.write_text(f"not-this-one\n\n{PASSPHRASE}\r\n")
    values: dict[str, object] = {
        "ecdsa_pem": pki.server_ecdsa[0].read_text(),
        "ecdsa_key": pki.server_ecdsa[1].read_text(),
        "encrypted_key": encrypted_key,
        "passwords": passwords,
        "dhparam": dhparam,
    }
    with running_both(TEMPLATE, pki.directory, directory, values=values) as both:
        yield both


@dataclass(frozen=True)
class Outcome:
    """What the client saw: handshake facts from s_client, the session's last line, the auth request's TLS."""

    handshake: bool
    protocol: str | None
    cipher: str | None
    server_key_bits: str | None
    temp_key: str | None
    ca_names: tuple[str, ...]
    last_line: str | None
    auth_ssl: tuple[str | None, str | None, str | None]  # Auth-SSL-Protocol, -Cipher, -Verify


def outcome(run: SClientRun, proxy: Proxy, since: int) -> Outcome:
    key = re.search(r"Server public key is (\d+) bit", run.output)
    temp_key = re.search(r"^Server Temp Key: (.+)$", run.output, re.MULTILINE)
    names = re.search(r"Acceptable client certificate CA names\n((?:[^\n]+\n)*?)Requested", run.output)
    lines = [line for line in run.stdout.splitlines() if line.startswith(("* ", "a "))]
    requests = proxy.new_requests(since)
    auth_ssl: tuple[str | None, str | None, str | None] = (None, None, None)
    if requests:
        header = requests[-1].header
        auth_ssl = (header("Auth-SSL-Protocol"), header("Auth-SSL-Cipher"), header("Auth-SSL-Verify"))
    return Outcome(
        handshake=run.handshake_done,
        protocol=run.protocol if run.handshake_done else None,
        cipher=run.cipher if run.handshake_done else None,
        server_key_bits=key.group(1) if key else None,
        temp_key=temp_key.group(1) if temp_key else None,
        ca_names=tuple(names.group(1).splitlines()) if names else (),
        last_line=lines[-1] if lines else None,
        auth_ssl=auth_ssl,
    )


def session(proxy: Proxy, server: str, *arguments: str | Path) -> Outcome:
    """An IMAP session with s_client: the greeting, then a login (which the auth server refuses)."""
    before = len(proxy.auth.requests)
    run = s_client(proxy.port(server), *arguments, typed=b"a LOGIN alice secret\n", after="* OK IMAP4 ready")
    return outcome(run, proxy, before)


def on_both(proxies: dict[str, Proxy], server: str, *arguments: str | Path) -> Outcome:
    """mailgate's outcome, after checking that nginx's is the same."""
    seen = {kind: session(proxies[kind], server, *arguments) for kind in KINDS}
    assert seen["mailgate"] == seen["nginx"]
    return seen["mailgate"]


LOGGED_IN = f"a NO {REFUSAL}"


@pytest.mark.parametrize(
    ("sigalgs", "bits"),
    [("ECDSA+SHA256", "256"), ("RSA-PSS+SHA256:RSA+SHA256", "2048")],
    ids=["ecdsa", "rsa"],
)
def test_rsa_and_ecdsa_certificates_serve_the_clients_that_want_them(
    proxies: dict[str, Proxy], sigalgs: str, bits: str
) -> None:
    seen = on_both(proxies, "dual", "-sigalgs", sigalgs)
    assert (seen.server_key_bits, seen.last_line) == (bits, LOGGED_IN)


def test_data_certificate_and_key_serve_sessions(proxies: dict[str, Proxy]) -> None:
    seen = on_both(proxies, "data")
    assert (seen.server_key_bits, seen.last_line) == ("256", LOGGED_IN)


def test_encrypted_key_is_opened_with_a_later_line_of_the_password_file(proxies: dict[str, Proxy]) -> None:
    seen = on_both(proxies, "encrypted")
    assert (seen.server_key_bits, seen.last_line) == ("2048", LOGGED_IN)


def test_ssl_ciphers_limits_the_ciphers(proxies: dict[str, Proxy]) -> None:
    chosen = on_both(proxies, "one_cipher", "-tls1_2")
    refused = on_both(proxies, "one_cipher", "-tls1_2", "-cipher", "ECDHE-RSA-AES256-GCM-SHA384")
    assert chosen.cipher == "ECDHE-RSA-AES128-GCM-SHA256"
    assert chosen.auth_ssl == ("TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256", None)
    assert not refused.handshake and refused.last_line is None


@pytest.mark.parametrize(
    ("server", "cipher"),
    [("server_order", "ECDHE-RSA-AES256-GCM-SHA384"), ("client_order", "ECDHE-RSA-AES128-GCM-SHA256")],
)
def test_ssl_prefer_server_ciphers_decides_whose_order_wins(
    proxies: dict[str, Proxy], server: str, cipher: str
) -> None:
    client_order = "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384"
    seen = on_both(proxies, server, "-tls1_2", "-cipher", client_order)
    assert seen.cipher == cipher
    assert seen.auth_ssl[1] == cipher


@pytest.mark.parametrize(
    ("server", "version", "works"),
    [
        ("tls12", "-tls1_2", True),
        ("tls12", "-tls1_3", False),
        ("tls13", "-tls1_3", True),
        ("tls13", "-tls1_2", False),
    ],
)
def test_ssl_protocols_limits_the_versions(
    proxies: dict[str, Proxy], server: str, version: str, works: bool
) -> None:
    seen = on_both(proxies, server, version)
    assert seen.handshake is works
    if works:
        expected = "TLSv1.2" if version == "-tls1_2" else "TLSv1.3"
        assert (seen.protocol, seen.auth_ssl[0], seen.last_line) == (expected, expected, LOGGED_IN)


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_ssl_ecdh_curve_limits_the_groups(proxies: dict[str, Proxy], version: str) -> None:
    p384 = on_both(proxies, "p384", version, "-groups", "secp384r1:X25519")
    x25519_only = on_both(proxies, "p384", version, "-groups", "X25519")
    assert p384.temp_key is not None and p384.temp_key.startswith("ECDH, secp384r1")
    assert p384.last_line == LOGGED_IN
    # No X25519 key exchange: TLS 1.3 fails, TLS 1.2 falls back to a cipher without ECDHE.
    assert x25519_only.temp_key is None
    assert x25519_only.handshake is (version == "-tls1_2")


def test_ssl_dhparam_enables_dhe(proxies: dict[str, Proxy]) -> None:
    with_dhparam = on_both(proxies, "dhe", "-tls1_2", "-cipher", "DHE-RSA-AES128-GCM-SHA256")
    without = on_both(proxies, "no_dhparam", "-tls1_2", "-cipher", "DHE-RSA-AES128-GCM-SHA256")
    assert with_dhparam.cipher == "DHE-RSA-AES128-GCM-SHA256"
    assert with_dhparam.temp_key == "DH, 2048 bits"
    assert with_dhparam.auth_ssl[1] == "DHE-RSA-AES128-GCM-SHA256"
    assert not without.handshake


def test_ssl_conf_command_sets_the_tls13_ciphersuites(proxies: dict[str, Proxy]) -> None:
    seen = on_both(proxies, "conf_command", "-tls1_3")
    assert seen.cipher == "TLS_CHACHA20_POLY1305_SHA256"
    assert seen.auth_ssl == ("TLSv1.3", "TLS_CHACHA20_POLY1305_SHA256", None)


def test_client_certificate_cas_are_named_to_clients_and_trusted_ones_are_not(
    proxies: dict[str, Proxy], pki: Pki
) -> None:
    certificate = ("-cert", pki.client[0], "-key", pki.client[1])
    named = on_both(proxies, "ca_names", *certificate)
    unnamed = on_both(proxies, "trusted", *certificate)
    assert len(named.ca_names) == 1 and named.ca_names[0].startswith("O = Mailgate Test CA")
    assert unnamed.ca_names == ()
    # Either way the certificate is verified against the CA.
    assert named.auth_ssl[2] == unnamed.auth_ssl[2] == "SUCCESS"


def test_trusted_certificate_alone_suffices_for_ssl_verify_client_on(pki: Pki, tmp_path: Path) -> None:
    """mailgate only: nginx accepts this since 1.27.2; Debian's 1.22 still asks for ssl_client_certificate."""
    template = mail_config(
        """
    server {
        listen 127.0.0.1:$trusted_on ssl; protocol imap;
        ssl_verify_client on; ssl_trusted_certificate $pki/ca.crt;
    }
"""
    )
    with running("mailgate", template, pki.directory, tmp_path) as mailgate:
        good = session(mailgate, "trusted_on", "-cert", pki.client[0], "-key", pki.client[1])
        missing = session(mailgate, "trusted_on")
    assert (good.ca_names, good.auth_ssl[2], good.last_line) == ((), "SUCCESS", LOGGED_IN)
    assert missing.last_line == "* BYE No required SSL certificate"


def test_removed_ssl_directive_stops_mailgate_pointing_to_listen_ssl(pki: Pki, tmp_path: Path) -> None:
    """`ssl on` was removed in nginx 1.25.1 (1.22 only warns and turns TLS on for every listen); mailgate
    refuses it with the replacement's name, so a configuration never silently loses its TLS."""
    template = mail_config(
        """
    server { listen 127.0.0.1:$imap; protocol imap; ssl on; }
"""
    )
    with (
        pytest.raises(pytest.fail.Exception) as failure,
        running("mailgate", template, pki.directory, tmp_path),
    ):
        pass
    assert 'the "ssl" directive is no longer supported, use the "listen ... ssl" directive instead' in str(
        failure.value
    )
