"""No secret reaches a log: mailgate runs with `error_log ... debug` (master and worker) and a session log,
with key material given inline (`data:`), an encrypted key and its `ssl_password_file`, a ticket key file, and
whole sessions in IMAP, POP3 and SMTP whose passwords travel in every form (LOGIN, USER/PASS, AUTH PLAIN,
AUTH LOGIN) and whose backend password comes from the auth server. Then the error log, the session log and
stderr are searched for every secret in every spelling (raw, hex, base64). Configurations that fail to load
(a broken `data:` key, passphrases that do not fit) must not print them either.
"""

from __future__ import annotations

import base64
import binascii
import imaplib
import os
import poplib
import smtplib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from string import Template

import pytest
from cryptography.hazmat.primitives import serialization

from tests.e2e_tls.support import MAIL_HEAD, Proxy, client_context, mail_config, running
from tests.support.authserver import AuthReply, AuthRequest
from tests.support.dovecot import Dovecot
from tests.support.loopback import IPV4_LOOPBACK, wait_until
from tests.support.mailgate import mailgate_command
from tests.support.mailstore import MailUser
from tests.support.postfix import Postfix
from tests.tls.support import Pki

TIMEOUT = 20.0
CLIENT_PASSWORD = "client-pass-Qz7wX2"
WRONG_PASSPHRASE = "wrong-phrase-Jk4sT9"
RIGHT_PASSPHRASE = "right-phrase-Hv8mN3"

TEMPLATE = mail_config(
    """
    session_log $dir/session.log json;

    server {
        listen 127.0.0.1:$imap_ssl ssl; protocol imap;
        ssl_certificate "data:$certificate_pem";
        ssl_certificate_key "data:$key_pem";
        ssl_session_ticket_key $ticket_key;
    }
    server {
        listen 127.0.0.1:$pop3_ssl ssl; protocol pop3;
        ssl_certificate_key $encrypted_key;
        ssl_password_file $passwords;
    }
    server {
        listen 127.0.0.1:$smtp_on; protocol smtp; starttls on; smtp_auth plain login;
        ssl_certificate_key $encrypted_key;
        ssl_password_file $passwords;
    }
"""
)


@dataclass(frozen=True)
class Secrets:
    certificate_pem: bytes  # given inline with data:, with its key
    key_pem: bytes
    encrypted_key: Path
    passwords: Path
    ticket_key: Path

    def values(self) -> dict[str, object]:
        """The template's values."""
        return {
            "certificate_pem": self.certificate_pem.decode(),
            "key_pem": self.key_pem.decode(),
            "encrypted_key": self.encrypted_key,
            "passwords": self.passwords,
            "ticket_key": self.ticket_key,
        }


def make_secrets(pki: Pki, directory: Path) -> Secrets:
    key = serialization.load_pem_private_key(pki.server_rsa[1].read_bytes(), password=None)
    encrypted = directory / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(RIGHT_PASSPHRASE.encode()),
        )
    )
    passwords = directory / "passwords"
    passwords.write_text(f"{WRONG_PASSPHRASE}\n{RIGHT_PASSPHRASE}\n")
    ticket_key = directory / "ticket.key"
    ticket_key.write_bytes(os.urandom(80))
    certificate, key_file = pki.server_ecdsa
    return Secrets(certificate.read_bytes(), key_file.read_bytes(), encrypted, passwords, ticket_key)


def spellings(secret: bytes) -> list[bytes]:
    """The ways a secret could show up in a log: raw, hex (both cases), base64."""
    hexed = binascii.hexlify(secret)
    return [secret, hexed, hexed.upper(), base64.b64encode(secret)]


def key_lines(pem: bytes) -> list[bytes]:
    """The base64 body lines of a PEM block (any one of them in a log leaks key material)."""
    return [line for line in pem.splitlines() if line and not line.startswith(b"-----")]


def assert_nothing_secret_in(texts: dict[str, bytes], secrets: dict[str, list[bytes]]) -> None:
    for where, text in texts.items():
        for name, needles in secrets.items():
            for needle in needles:
                assert needle not in text, f"{name} ({needle[:20]!r}...) found in {where}"


@pytest.fixture(scope="module")
def secrets(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Secrets:
    return make_secrets(pki, tmp_path_factory.mktemp("secrets"))


@dataclass
class Deployment:
    proxy: Proxy
    backend_user: MailUser


@pytest.fixture(scope="module")
def deployment(
    pki: Pki,
    secrets: Secrets,
    dovecot: Dovecot,
    postfix: Postfix,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployment]:
    backend_user = dovecot.add_user()
    backends = {"imap": dovecot.imap_port, "pop3": dovecot.pop3_port, "smtp": postfix.smtp_port}

    def route(request: AuthRequest) -> AuthReply:
        # The client's password is not the backend's: the auth server maps both user and password.
        protocol = request.header("Auth-Protocol") or ""
        return AuthReply.ok(
            IPV4_LOOPBACK, backends[protocol], user=backend_user.name, password=backend_user.password
        )

    directory = tmp_path_factory.mktemp("secrets-run")
    with running(
        "mailgate",
        TEMPLATE,
        pki.directory,
        directory,
        log_level="debug",
        reply=route,
        values=secrets.values(),
        master_process=True,
    ) as proxy:
        yield Deployment(proxy, backend_user)


def run_sessions(deployment: Deployment) -> None:
    proxy, user = deployment.proxy, deployment.backend_user
    imap = imaplib.IMAP4_SSL(
        IPV4_LOOPBACK, proxy.port("imap_ssl"), ssl_context=client_context(), timeout=TIMEOUT
    )
    try:
        imap.login(user.name, CLIENT_PASSWORD)
        imap.select("INBOX")
    finally:
        imap.logout()
    pop3 = poplib.POP3_SSL(IPV4_LOOPBACK, proxy.port("pop3_ssl"), context=client_context(), timeout=TIMEOUT)
    try:
        pop3.user(user.name)
        pop3.pass_(CLIENT_PASSWORD)
        pop3.stat()
        pop3.quit()
    finally:
        pop3.close()
    for mechanism in ("PLAIN", "LOGIN"):
        smtp = smtplib.SMTP(IPV4_LOOPBACK, proxy.port("smtp_on"), timeout=TIMEOUT, local_hostname="c.example")
        try:
            smtp.starttls(context=client_context())
            smtp.ehlo()
            smtp.user, smtp.password = user.name, CLIENT_PASSWORD
            authenticate = smtp.auth_plain if mechanism == "PLAIN" else smtp.auth_login
            code, _ = smtp.auth(mechanism, authenticate)
            assert code == 235
            smtp.quit()
        finally:
            smtp.close()


def test_no_secret_reaches_the_logs_of_a_debug_run(
    deployment: Deployment, secrets: Secrets, pki: Pki
) -> None:
    run_sessions(deployment)
    proxy, user = deployment.proxy, deployment.backend_user
    assert len(proxy.auth.requests) == 4
    passwords = [line.encode() for line in (WRONG_PASSPHRASE, RIGHT_PASSPHRASE)]
    found = {
        "client password": spellings(CLIENT_PASSWORD.encode()),
        "client AUTH PLAIN": [base64.b64encode(f"\0{user.name}\0{CLIENT_PASSWORD}".encode())],
        "backend password": spellings(user.password.encode()),
        "data: key": key_lines(secrets.key_pem),
        "encrypted key": key_lines(secrets.encrypted_key.read_bytes()),
        "unencrypted key": key_lines(pki.server_rsa[1].read_bytes()),
        "ssl_password_file lines": [spelling for line in passwords for spelling in spellings(line)],
        "ticket key": spellings(secrets.ticket_key.read_bytes()),
    }
    session_log = proxy.directory / "session.log"
    # Each session's line is written when it ends, which may be just after the client's last reply.
    assert wait_until(lambda: session_log.read_bytes().count(b"\n") >= 4, TIMEOUT)
    logs = {
        "error log": proxy.error_log.read_bytes(),
        "session log": session_log.read_bytes(),
        "stderr": (proxy.directory / "stderr.log").read_bytes(),
    }
    # The run did log: the debug error log and a session line per session.
    assert logs["error log"].count(b"client logged in") == 4
    assert_nothing_secret_in(logs, found)


def failed_start(conf_text: str, directory: Path) -> bytes:
    """stderr of `mailgate -t` on `conf_text` (nothing is started)."""
    directory.mkdir(parents=True, exist_ok=True)
    conf_file = directory / "mailgate.conf"
    conf_file.write_text(conf_text)
    global_directives = f"error_log {directory}/error.log debug; pid {directory}/mailgate.pid;"
    command = [*mailgate_command(directory, conf_file, "-t", "-g", global_directives)]
    result = subprocess.run(command, capture_output=True, timeout=60, check=False, stdin=subprocess.DEVNULL)
    assert result.returncode != 0, result.stderr
    error_log = directory / "error.log"
    return result.stdout + result.stderr + (error_log.read_bytes() if error_log.exists() else b"")


def test_configurations_that_fail_on_secrets_do_not_print_them(
    pki: Pki, secrets: Secrets, tmp_path: Path
) -> None:
    broken_key = secrets.key_pem.replace(b"\n", b"\nAAAA", 3).decode()
    only_wrong = tmp_path / "wrong-passwords"
    only_wrong.write_text(f"{WRONG_PASSPHRASE}\n")
    servers = {
        "broken data: key": f'ssl_certificate_key "data:{broken_key}";',
        "wrong passphrase": f"ssl_certificate_key {secrets.encrypted_key}; ssl_password_file {only_wrong};",
    }
    head = Template(MAIL_HEAD).substitute(auth="127.0.0.1:9/auth", pki=pki.directory)
    outputs = {
        name: failed_start(
            head + f"    server {{ listen 127.0.0.1:1143 ssl; protocol imap; {server} }}\n}}\n",
            tmp_path / str(index),
        )
        for index, (name, server) in enumerate(servers.items())
    }
    assert b"cannot load certificate key" in outputs["broken data: key"]
    assert b"cannot load certificate key" in outputs["wrong passphrase"]
    assert_nothing_secret_in(
        outputs,
        {
            "data: key": key_lines(broken_key.encode()),
            "passphrase": spellings(WRONG_PASSPHRASE.encode()),
        },
    )
