"""The benchmark's fixed world: ports, certificates, and the one mail {} configuration both servers run.

nginx and mailgate read the same configuration text (mailgate accepts load_module and events {}), so
"equivalent configurations" is literal: only the listening ports differ, one base port per server.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

MAIL_MODULE = "/usr/lib/nginx/modules/ngx_mail_module.so"

# Listener roles: one server {} block each; the port is the server's base port plus the offset.
PORT_OFFSETS = {
    "imaps_ecdsa": 0,  # implicit TLS, ECDSA P-256, session cache + tickets
    "imaps_rsa": 1,  # implicit TLS, RSA-2048
    "imaps_stateful": 2,  # implicit TLS, ECDSA, tickets off: resumption through the session cache only
    "imap_starttls": 3,
    "pop3_starttls": 4,
    "smtp_starttls": 5,
    "imaps_bigbuf": 6,  # implicit TLS, ECDSA, proxy_buffer equal to mailgate's read size
}

# mailgate's relay (mailgate/_io.c) reads up to 256 KiB per recv(); nginx's proxy_buffer defaults to one
# page (4 KiB).
EQUAL_PROXY_BUFFER = "256k"

# nginx 1.22's mail module offers only TLSv1 to TLSv1.2 by default (TLSv1.3 joined the default in 1.23.4), so
# the configuration names both versions the scenarios use.
WORKERS = 2
WORKER_CONNECTIONS = 12000
RLIMIT_NOFILE = 16384  # below the hard limit of an unprivileged container (20,000 here)


@dataclass(frozen=True)
class Ports:
    auth: int
    imap_backend: int
    pop3_backend: int
    smtp_backend: int

    def responder_args(self) -> list[str]:
        return [str(p) for p in (self.auth, self.imap_backend, self.pop3_backend, self.smtp_backend)]


def make_certificates(directory: Path) -> None:
    """Self-signed ECDSA P-256 and RSA-2048 certificates (kept between runs: only made when missing)."""
    directory.mkdir(parents=True, exist_ok=True)
    keys = {"ecdsa": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"], "rsa": ["-newkey", "rsa:2048"]}
    for name, key in keys.items():
        if (directory / f"{name}.crt").exists():
            continue
        subprocess.run(
            ["openssl", "req", "-x509", *key, "-nodes", "-days", "3650", "-subj", "/CN=bench.example",
             "-keyout", str(directory / f"{name}.key"), "-out", str(directory / f"{name}.crt")],
            check=True,
            capture_output=True,
        )  # fmt: skip


def mail_config(base_port: int, ports: Ports, certificates: Path) -> str:
    """The whole configuration file for a server listening from `base_port` on."""
    ecdsa = f"ssl_certificate {certificates}/ecdsa.crt; ssl_certificate_key {certificates}/ecdsa.key;"
    rsa = f"ssl_certificate {certificates}/rsa.crt; ssl_certificate_key {certificates}/rsa.key;"

    def port(role: str) -> int:
        return base_port + PORT_OFFSETS[role]

    return f"""load_module {MAIL_MODULE};
worker_processes {WORKERS};
worker_rlimit_nofile {RLIMIT_NOFILE};
events {{ worker_connections {WORKER_CONNECTIONS}; }}
mail {{
    auth_http 127.0.0.1:{ports.auth}/auth;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:BENCH:20m;
    ssl_session_timeout 10m;
    {ecdsa}
    server {{ listen 127.0.0.1:{port("imaps_ecdsa")} ssl; protocol imap; }}
    server {{ listen 127.0.0.1:{port("imaps_rsa")} ssl; protocol imap; {rsa} }}
    server {{ listen 127.0.0.1:{port("imaps_stateful")} ssl; protocol imap; ssl_session_tickets off; }}
    server {{ listen 127.0.0.1:{port("imap_starttls")}; protocol imap; starttls on; }}
    server {{ listen 127.0.0.1:{port("pop3_starttls")}; protocol pop3; starttls on; }}
    server {{ listen 127.0.0.1:{port("smtp_starttls")}; protocol smtp; starttls on; smtp_auth plain; }}
    server {{
        listen 127.0.0.1:{port("imaps_bigbuf")} ssl; protocol imap; proxy_buffer {EQUAL_PROXY_BUFFER};
    }}
}}
"""
