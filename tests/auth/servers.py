"""ServerConfig builders for the auth tests (the configuration loader is not involved)."""

from __future__ import annotations

import dataclasses
import socket

from mailgate.config import model


def auth_url(
    host: str = "127.0.0.1", port: int = 9000, uri: str = "/auth", host_header: str = "localhost"
) -> model.AuthHttpUrl:
    return model.AuthHttpUrl(socket.AF_INET, host, port, uri, host_header, f"{host}:{port}")


def unix_auth_url(path: str, uri: str = "/") -> model.AuthHttpUrl:
    return model.AuthHttpUrl(socket.AF_UNIX, path, 0, uri, "localhost", f"unix:{path}")


def server_config(
    protocol: model.Protocol = model.Protocol.IMAP,
    *,
    url: model.AuthHttpUrl | None = None,
    timeout: float = 5.0,
    headers: tuple[tuple[str, str], ...] = (),
    pass_client_cert: bool = False,
    verify_client: model.VerifyClient = model.VerifyClient.OFF,
    resolver: model.Resolver | None = None,
    resolver_timeout: float = 2.0,
    core_timeout: float = 60.0,
) -> model.ServerConfig:
    listen = model.Listen(socket.AF_INET, "127.0.0.1", 143, "127.0.0.1:143", wildcard=False)
    return model.ServerConfig(
        source=model.SourceRef("mail.conf", 3),
        protocol=protocol,
        listens=(listen,),
        core=model.CoreSettings(
            server_name="mail.example.com",
            timeout=core_timeout,
            resolver=resolver,
            resolver_timeout=resolver_timeout,
        ),
        auth_http=model.AuthHttpSettings(
            url=url or auth_url(), timeout=timeout, headers=headers, pass_client_cert=pass_client_cert
        ),
        proxy=model.ProxySettings(),
        realip=model.RealIpSettings(),
        ssl=model.SslSettings(verify_client=verify_client),
        imap=model.ImapSettings(),
        pop3=model.Pop3Settings(),
        smtp=model.SmtpSettings(),
    )


def with_auth_url(server: model.ServerConfig, url: model.AuthHttpUrl) -> model.ServerConfig:
    return dataclasses.replace(server, auth_http=dataclasses.replace(server.auth_http, url=url))
