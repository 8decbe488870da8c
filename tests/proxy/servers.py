"""Server configurations and credentials for backend-login tests."""

import socket
from typing import Any

from mailgate.config import model
from mailgate.protocol.credentials import AuthMethod, Credentials


def server_config(
    protocol: model.Protocol, server_name: str = "mail.example.com", **proxy: Any
) -> model.ServerConfig:
    """A server for `protocol` with default settings except the `ProxySettings` fields given."""
    url = model.AuthHttpUrl(socket.AF_INET, "127.0.0.1", 9000, "/auth", "localhost", "127.0.0.1:9000")
    listen = model.Listen(socket.AF_INET, "127.0.0.1", 0, "127.0.0.1:0", wildcard=False)
    return model.ServerConfig(
        source=model.SourceRef("mail.conf", 1),
        protocol=protocol,
        listens=(listen,),
        core=model.CoreSettings(server_name=server_name),
        auth_http=model.AuthHttpSettings(url=url),
        proxy=model.ProxySettings(**proxy),
        realip=model.RealIpSettings(),
        ssl=model.SslSettings(),
        imap=model.ImapSettings(),
        pop3=model.Pop3Settings(),
        smtp=model.SmtpSettings(),
    )


def credentials(
    protocol: model.Protocol, method: AuthMethod = AuthMethod.PLAIN, **fields: Any
) -> Credentials:
    return Credentials(protocol=protocol, method=method, **fields)
