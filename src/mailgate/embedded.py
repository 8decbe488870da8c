"""What the embedded default configuration needs on its first start: its directories and a certificate.

nginx needs an operator to create these; mailgate's built-in configuration is meant to run at once on a fresh
machine, so the prefix's `conf/` and `logs/` directories are created and a self-signed certificate for
`localhost` (RSA-2048, the widest client support) is generated when none is there yet. An existing
certificate is never replaced.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

CERTIFICATE_NAME = "mailgate-selfsigned.crt"
KEY_NAME = "mailgate-selfsigned.key"
_VALIDITY = datetime.timedelta(days=825)  # the longest validity clients accept for a server certificate


def prepare_embedded_prefix(prefix: Path) -> list[str]:
    """Create what the embedded configuration names under `prefix`; return notices of what was made."""
    conf_dir = prefix / "conf"
    for directory in (conf_dir, prefix / "logs"):
        directory.mkdir(parents=True, exist_ok=True)
    certificate, key = conf_dir / CERTIFICATE_NAME, conf_dir / KEY_NAME
    if certificate.exists() and key.exists():
        return []
    _write_self_signed(certificate, key)
    return [f'generated a self-signed certificate for "localhost" in "{certificate}"']


def _write_self_signed(certificate_path: Path, key_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    alternative_names = x509.SubjectAlternativeName(
        [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(alternative_names, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_private(key_path, key_bytes)
    _write_private(certificate_path, certificate.public_bytes(serialization.Encoding.PEM), mode=0o644)


def _write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write atomically with `mode` from the start, so a key is never readable by others, even briefly."""
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    descriptor = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.write(descriptor, data)
    finally:
        os.close(descriptor)
    os.replace(staging, path)
