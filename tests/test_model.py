import socket
from pathlib import Path

from mailgate.config import model


def _server(listens: tuple[model.Listen, ...], starttls: model.StartTls) -> model.ServerConfig:
    url = model.AuthHttpUrl(socket.AF_INET, "127.0.0.1", 80, "/", "localhost", "127.0.0.1:80")
    return model.ServerConfig(
        source=model.SourceRef("mail.conf", 3),
        protocol=model.Protocol.IMAP,
        listens=listens,
        core=model.CoreSettings(server_name="mx"),
        auth_http=model.AuthHttpSettings(url=url),
        proxy=model.ProxySettings(),
        realip=model.RealIpSettings(),
        ssl=model.SslSettings(starttls=starttls),
        imap=model.ImapSettings(),
        pop3=model.Pop3Settings(),
        smtp=model.SmtpSettings(),
    )


def test_server_needs_tls_only_with_listen_ssl_or_starttls() -> None:
    plain = model.Listen(socket.AF_INET, "127.0.0.1", 143, "127.0.0.1:143", wildcard=False)
    implicit = model.Listen(socket.AF_INET, "127.0.0.1", 993, "127.0.0.1:993", wildcard=False, ssl=True)
    assert not _server((plain,), model.StartTls.OFF).needs_tls
    assert _server((plain,), model.StartTls.ON).needs_tls
    assert _server((plain, implicit), model.StartTls.OFF).needs_tls


def test_key_data_is_masked_in_repr() -> None:
    key = model.PemSource(kind="data", data=b"-----BEGIN PRIVATE KEY-----secret", text="data:...")
    assert "secret" not in repr(key)
    assert str(key) == "data:..."
    assert Path("/x") != key.path
