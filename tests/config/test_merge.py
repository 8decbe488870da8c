"""Defaults, `mail {}` -> `server {}` inheritance, and the checks nginx makes when the mail block closes."""

from __future__ import annotations

import socket

import pytest

from mailgate.config.directives.ssl import certificate_compression_available
from mailgate.config.model import (
    AuthHttpUrl,
    CoreSettings,
    ImapAuth,
    ImapSettings,
    Pop3Settings,
    ProxySettings,
    RealIpSettings,
    ServerConfig,
    SessionCache,
    SharedCacheZone,
    SmtpAuth,
    SmtpSettings,
    SslSettings,
)
from tests.config.conftest import EVENTS, ConfDir

CERT = "ssl_certificate c.pem; ssl_certificate_key k.pem;"


def mail_servers(conf: ConfDir, mail_body: str) -> tuple[ServerConfig, ...]:
    mail = conf.load(EVENTS + "mail {\n" + mail_body + "\n}\n").config.mail
    assert mail is not None
    return mail.servers


def test_defaults_of_a_bare_server(conf: ConfDir) -> None:
    (server,) = mail_servers(conf, "auth_http 127.0.0.1; server { listen 127.0.0.1:143; }")
    assert server.core == CoreSettings(server_name=socket.gethostname().lower())
    assert server.auth_http.url == AuthHttpUrl(
        socket.AF_INET, "127.0.0.1", 80, "/", "127.0.0.1", "127.0.0.1:80"
    )
    assert (server.auth_http.timeout, server.auth_http.headers, server.auth_http.pass_client_cert) == (
        60.0,
        (),
        False,
    )
    assert server.proxy == ProxySettings()
    assert server.realip == RealIpSettings()
    assert server.imap == ImapSettings()
    assert server.pop3 == Pop3Settings()
    assert server.smtp == SmtpSettings()
    assert server.ssl == SslSettings()
    assert not server.needs_tls


def test_server_value_replaces_the_mail_value(conf: ConfDir) -> None:
    body = "auth_http 127.0.0.1; timeout 10s; server { listen 127.0.0.1:143; timeout 20s; }"
    body += "server { listen 127.0.0.1:110; }"
    assert [server.core.timeout for server in mail_servers(conf, body)] == [20.0, 10.0]


def test_bitmask_of_a_server_replaces_rather_than_extends(conf: ConfDir) -> None:
    body = "auth_http 127.0.0.1; imap_auth cram-md5; server { listen 127.0.0.1:143; imap_auth login; }"
    assert mail_servers(conf, body)[0].imap.auth == frozenset({ImapAuth.LOGIN})


def test_bitmask_repeated_at_one_level_accumulates_and_warns_on_repeats(conf: ConfDir) -> None:
    body = "auth_http 127.0.0.1; server { listen 127.0.0.1:25;\nsmtp_auth plain; smtp_auth cram-md5 plain; }"
    loaded = conf.load(EVENTS + "mail {\n" + body + "\n}\n")
    assert loaded.config.mail is not None
    assert loaded.config.mail.servers[0].smtp.auth == frozenset({SmtpAuth.PLAIN, SmtpAuth.CRAM_MD5})
    assert [(w.level, str(w)) for w in loaded.warnings] == [
        ("warn", f'duplicate value "plain" in {conf.where(4)}')
    ]


@pytest.mark.parametrize(
    ("directive", "get"),
    [
        ("imap_capabilities A", lambda server: server.imap.capabilities),
        ("pop3_capabilities A", lambda server: server.pop3.capabilities),
        ("smtp_capabilities A", lambda server: server.smtp.capabilities),
        ("auth_http_header A", lambda server: [name for name, _ in server.auth_http.headers]),
        ("ssl_conf_command A", lambda server: [name for name, _ in server.ssl.conf_commands]),
        ("ssl_session_ticket_key A", lambda server: [path.name for path in server.ssl.session_ticket_keys]),
        (
            "ssl_certificate A",
            lambda server: [pair.certificate.path.name for pair in server.ssl.certificates],
        ),
        ("set_real_ip_from 10.0.0.", lambda server: [str(net)[:8] for net in server.realip.trusted]),
    ],
)
def test_lists_are_inherited_whole_and_replaced_whole(conf: ConfDir, directive: str, get: object) -> None:
    suffix = " v;" if directive.split(maxsplit=1)[0] in ("auth_http_header", "ssl_conf_command") else ";"
    first = f"{directive}1{suffix} {directive}2{suffix}"
    own = f"{directive}3{suffix}"
    keys = "ssl_certificate_key k1; ssl_certificate_key k2; ssl_certificate_key k3;"
    servers = f"server {{ listen 127.0.0.1:143; }} server {{ listen 127.0.0.1:110; {own} }}"
    body = f"auth_http 127.0.0.1; {keys} {first} {servers}"
    inherited, replaced = mail_servers(conf, body)
    assert callable(get)
    assert [str(item)[-1] for item in get(inherited)] == ["1", "2"]
    assert [str(item)[-1] for item in get(replaced)] == ["3"]


def test_session_cache_parts_inherit_independently(conf: ConfDir) -> None:
    body = (
        "auth_http 127.0.0.1; ssl_session_cache shared:MAIL:1m;"
        " server { listen 127.0.0.1:143; ssl_session_cache builtin:1000; }"
        " server { listen 127.0.0.1:110; }"
        " server { listen 127.0.0.1:25; ssl_session_cache none; }"
    )
    builtin, inherited, none = (server.ssl.session_cache for server in mail_servers(conf, body))
    zone = SharedCacheZone("MAIL", 1048576)
    assert builtin == SessionCache(mode="cache", builtin=True, builtin_size=1000, shared=zone)
    assert inherited == SessionCache(mode="cache", builtin=False, shared=zone)
    assert none == SessionCache(mode="none")


def test_a_shared_zone_may_serve_several_servers_with_one_size(conf: ConfDir) -> None:
    body = (
        "auth_http 127.0.0.1;"
        " server { listen 127.0.0.1:143; ssl_session_cache shared:S:1m; }"
        " server { listen 127.0.0.1:110; ssl_session_cache shared:S:1m; }"
    )
    assert {server.ssl.session_cache.shared for server in mail_servers(conf, body)} == {
        SharedCacheZone("S", 1048576)
    }


def test_error_logs_of_mail_are_inherited(conf: ConfDir) -> None:
    body = "auth_http 127.0.0.1; error_log stderr info; server { listen 127.0.0.1:143; }"
    assert [log.stderr for log in mail_servers(conf, body)[0].core.error_logs] == [True]


# -- checks when the mail block closes -------------------------------------------------------------------


def test_server_without_listen_names_the_server_line(conf: ConfDir) -> None:
    error = conf.error(EVENTS + "mail {\n server\n {\n protocol imap; }\n}\n")
    assert str(error) == f'no "listen" is defined for server in {conf.where(4)}'


def test_server_without_listen_is_reported_before_later_servers_are_read(conf: ConfDir) -> None:
    error = conf.error(EVENTS + "mail {\n server { }\n server { bogus; }\n}\n")
    assert str(error) == f'no "listen" is defined for server in {conf.where(3)}'


def test_unknown_protocol_of_a_server(conf: ConfDir) -> None:
    error = conf.error(EVENTS + "mail {\n auth_http 127.0.0.1;\n server {\n listen 127.0.0.1:1000; }\n}\n")
    assert str(error) == f"unknown mail protocol for server in {conf.where(4)}"


def test_server_without_auth_http(conf: ConfDir) -> None:
    error = conf.error(EVENTS + "mail {\n server {\n listen 127.0.0.1:143; }\n}\n")
    assert str(error) == f'no "auth_http" is defined for server in {conf.where(3)}'


def test_merge_errors_come_module_by_module_like_nginx(conf: ConfDir) -> None:
    # The core module (protocol) is merged for every server before auth_http is looked at.
    body = "server { listen 127.0.0.1:143; }\nserver {\n listen 127.0.0.1:1000; }\n"
    error = conf.error(EVENTS + "mail {\n" + body + "}\n")
    assert str(error) == f"unknown mail protocol for server in {conf.where(4)}"


def test_merge_errors_come_before_anything_after_the_mail_block(conf: ConfDir) -> None:
    error = conf.error(EVENTS + "mail { server { listen 127.0.0.1:143; } }\nbogus;\n")
    assert str(error).startswith('no "auth_http" is defined for server')


def test_listen_ssl_without_certificate_names_the_last_listen_ssl(conf: ConfDir) -> None:
    body = "auth_http 127.0.0.1; server {\n starttls on;\n listen 127.0.0.1:993 ssl;\n"
    body += " listen 127.0.0.1:994 ssl; }"
    error = conf.error(EVENTS + "mail {\n" + body + "\n}\n")
    assert (
        str(error) == f'no "ssl_certificate" is defined for the "listen ... ssl" directive in {conf.where(6)}'
    )


def test_starttls_after_listen_ssl_does_not_move_the_location(conf: ConfDir) -> None:
    body = "auth_http 127.0.0.1; server {\n listen 127.0.0.1:993 ssl;\n starttls on; }"
    error = conf.error(EVENTS + "mail {\n" + body + "\n}\n")
    assert (
        str(error) == f'no "ssl_certificate" is defined for the "listen ... ssl" directive in {conf.where(4)}'
    )


def test_starttls_without_certificate_names_the_servers_starttls(conf: ConfDir) -> None:
    body = "auth_http 127.0.0.1; starttls off; server {\n listen 127.0.0.1:143;\n starttls only; }"
    error = conf.error(EVENTS + "mail {\n" + body + "\n}\n")
    assert str(error) == f'no "ssl_certificate" is defined for the "starttls" directive in {conf.where(5)}'


def test_inherited_starttls_without_certificate_names_the_mail_starttls(conf: ConfDir) -> None:
    body = "auth_http 127.0.0.1;\n starttls on;\n server { listen 127.0.0.1:143; }"
    error = conf.error(EVENTS + "mail {\n" + body + "\n}\n")
    assert str(error) == f'no "ssl_certificate" is defined for the "starttls" directive in {conf.where(4)}'


def test_certificate_without_any_key(conf: ConfDir) -> None:
    body = "auth_http 127.0.0.1; server {\n listen 127.0.0.1:993 ssl; ssl_certificate c.pem; }"
    error = conf.error(EVENTS + "mail {\n" + body + "\n}\n")
    assert (
        str(error)
        == f'no "ssl_certificate_key" is defined for the "listen ... ssl" directive in {conf.where(4)}'
    )


def test_fewer_keys_than_certificates_names_the_last_certificate(conf: ConfDir) -> None:
    body = "auth_http 127.0.0.1; starttls on; ssl_certificate a.pem; ssl_certificate_key a.key;"
    body += ' ssl_certificate "data:SECRET"; server { listen 127.0.0.1:143; }'
    error = conf.error(EVENTS + "mail {\n" + body + "\n}\n")
    assert str(error) == (
        'no "ssl_certificate_key" is defined for certificate "data:..." and the "starttls" directive'
        f" in {conf.where(3)}"
    )
    assert "SECRET" not in str(error)


def test_extra_keys_are_ignored(conf: ConfDir) -> None:
    body = (
        f"auth_http 127.0.0.1; {CERT} ssl_certificate_key extra.key; server {{ listen 127.0.0.1:993 ssl; }}"
    )
    assert len(mail_servers(conf, body)[0].ssl.certificates) == 1


def test_servers_without_tls_ignore_incomplete_ssl_settings(conf: ConfDir) -> None:
    body = "auth_http 127.0.0.1; ssl_certificate only.pem; ssl_verify_client on;"
    body += " server { listen 127.0.0.1:143; }"
    assert not mail_servers(conf, body)[0].needs_tls


@pytest.mark.parametrize("mode", ["on", "optional"])
def test_verify_client_needs_a_ca(conf: ConfDir, mode: str) -> None:
    body = f"auth_http 127.0.0.1; server {{ listen 127.0.0.1:993 ssl; {CERT} ssl_verify_client {mode}; }}"
    error = conf.error(EVENTS + "mail {\n" + body + "\n}\n")
    assert str(error) == "no ssl_client_certificate or ssl_trusted_certificate for ssl_verify_client"
    assert error.source is None


@pytest.mark.parametrize("ca", ["ssl_client_certificate ca.pem;", "ssl_trusted_certificate ca.pem;", ""])
def test_verify_client_is_satisfied_by_either_ca_or_by_optional_no_ca(conf: ConfDir, ca: str) -> None:
    mode = "optional_no_ca" if not ca else "on"
    body = (
        f"auth_http 127.0.0.1; server {{ listen 127.0.0.1:993 ssl; {CERT} ssl_verify_client {mode}; {ca} }}"
    )
    assert mail_servers(conf, body)[0].ssl.verify_client.value == mode


def test_ticket_key_files_must_be_48_or_80_bytes(conf: ConfDir) -> None:
    conf.write("good48.key", b"k" * 48)
    conf.write("good80.key", b"k" * 80)
    conf.write("bad.key", b"k" * 50)
    keys = "ssl_session_ticket_key good48.key; ssl_session_ticket_key good80.key;"
    body = f"auth_http 127.0.0.1; server {{ listen 127.0.0.1:993 ssl; {CERT} {keys} }}"
    assert len(mail_servers(conf, body)[0].ssl.session_ticket_keys) == 2
    bad = f"auth_http 127.0.0.1; server {{ listen 127.0.0.1:993 ssl; {CERT}"
    bad += " ssl_session_ticket_key bad.key; }\n"
    error = conf.error(EVENTS + "mail {\n" + bad + "\n\n}\n")
    assert str(error) == f'"{conf.path}/bad.key" must be 48 or 80 bytes in {conf.where(6)}'


def test_missing_ticket_key_file_is_an_open_error_at_the_mail_block_end(conf: ConfDir) -> None:
    body = (
        f"auth_http 127.0.0.1; server {{ listen 127.0.0.1:993 ssl; {CERT} ssl_session_ticket_key no.key; }}"
    )
    error = conf.error(EVENTS + "mail {\n" + body + "\n}\n")
    assert (
        str(error) == f'open() "{conf.path}/no.key" failed (2: No such file or directory) in {conf.where(4)}'
    )


def test_ticket_keys_of_servers_without_tls_are_not_read(conf: ConfDir) -> None:
    body = "auth_http 127.0.0.1; ssl_session_ticket_key no.key; server { listen 127.0.0.1:143; }"
    assert mail_servers(conf, body)[0].ssl.session_ticket_keys == (conf.path / "no.key",)


@pytest.mark.skipif(certificate_compression_available(), reason="this OpenSSL has certificate compression")
def test_certificate_compression_on_a_tls_server_needs_openssl_3_2(conf: ConfDir) -> None:
    body = "auth_http 127.0.0.1;\nssl_certificate_compression on;\n"
    body += f"server {{ listen 127.0.0.1:993 ssl; {CERT} }}"
    error = conf.error(EVENTS + "mail {\n" + body + "\n}\n")
    assert "it needs OpenSSL 3.2 or newer" in str(error)
    assert str(error).startswith('"ssl_certificate_compression" is not supported by OpenSSL')
    assert str(error).endswith(f"in {conf.where(4)}")


def test_certificate_compression_without_tls_servers_is_accepted(conf: ConfDir) -> None:
    body = "auth_http 127.0.0.1; ssl_certificate_compression on; server { listen 127.0.0.1:143; }"
    assert mail_servers(conf, body)[0].ssl.certificate_compression


def test_low_address_bits_warn_and_are_cleared(conf: ConfDir) -> None:
    body = "auth_http 127.0.0.1; server { listen 127.0.0.1:143;\n set_real_ip_from 10.1.2.3/8; }"
    loaded = conf.load(EVENTS + "mail {\n" + body + "\n}\n")
    assert [str(warning) for warning in loaded.warnings] == [
        f"low address bits of 10.1.2.3/8 are meaningless in {conf.where(4)}"
    ]
    assert loaded.config.mail is not None
    assert str(loaded.config.mail.servers[0].realip.trusted[0]) == "10.0.0.0/8"


def test_starttls_source_is_recorded_for_the_tls_module(conf: ConfDir) -> None:
    body = f"auth_http 127.0.0.1; server {{ listen 127.0.0.1:143;\n starttls on; {CERT} }}"
    (server,) = mail_servers(conf, body)
    assert str(server.ssl.starttls_source) == conf.where(4)


def test_mail_block_source_and_server_sources(conf: ConfDir) -> None:
    mail = conf.load(
        EVENTS + "mail\n{\nauth_http 127.0.0.1;\nserver {\nlisten 127.0.0.1:143; }\n}\n"
    ).config.mail
    assert mail is not None
    assert (mail.source.line, mail.servers[0].source.line) == (3, 5)


def test_imap_auth_values_are_typed(conf: ConfDir) -> None:
    body = "auth_http 127.0.0.1; server { listen 127.0.0.1:143; imap_auth PLAIN Login; }"
    assert mail_servers(conf, body)[0].imap.auth == frozenset({ImapAuth.PLAIN, ImapAuth.LOGIN})
