"""Every directive of the tables: valid forms and their typed values, invalid forms and nginx's messages.

A case is a directive text placed in its context of a minimal configuration; `MAIL_OR_SERVER` cases run
twice, written in `mail {}` (and inherited by the server) and written in the server.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from mailgate.config.loader import DIRECTIVE_INDEX
from mailgate.config.model import (
    Config,
    ImapAuth,
    LogLevel,
    Pop3Auth,
    ProxyProtocolOut,
    ServerConfig,
    SharedCacheZone,
    SmtpAuth,
    StartTls,
    SyslogTarget,
    VerifyClient,
)
from tests.config.conftest import MAIL_HEAD, ConfDir

FIRST = "first"  # main context, before any block (load_module)
MAIN = "main"
EVENTS_CTX = "events"
MAIL = "mail"
SERVER = "server"
MAIL_OR_SERVER = "mail or server"

# Line of the case's text in each context (see `text_in`).
LINE = {FIRST: 1, MAIN: 2, EVENTS_CTX: 2, MAIL: 4, SERVER: 7}


def text_in(context: str, directive: str) -> str:
    if context == FIRST:
        return f"{directive}\nevents {{}}\n"
    if context == MAIN:
        return f"events {{}}\n{directive}\n"
    if context == EVENTS_CTX:
        return f"events {{\n{directive}\n}}\n"
    if context == MAIL:
        return f"events {{}}\n{MAIL_HEAD}{directive}\nserver {{ listen 127.0.0.1:143; }}\n}}\n"
    return f"events {{}}\n{MAIL_HEAD}server {{\nlisten 127.0.0.1:143;\n\n{directive}\n}}\n}}\n"


def server(config: Config) -> ServerConfig:
    assert config.mail is not None
    return config.mail.servers[0]


@dataclass(frozen=True)
class Valid:
    directive: str
    context: str
    get: Callable[[Config], Any]
    expected: Any


@dataclass(frozen=True)
class Invalid:
    directive: str
    context: str
    message: str  # without ` in FILE:LINE`; the line is the directive's


T = TypeVar("T")


def present(value: T | None) -> T:
    """A setting the directive under test must have set."""
    assert value is not None
    return value


def _syslog_target(target: SyslogTarget) -> tuple[int, str]:
    return target.server_port, target.tag


def s(get: Callable[[ServerConfig], Any]) -> Callable[[Config], Any]:
    return lambda config: get(server(config))


ROOT = os.geteuid() == 0

VALID = [
    # -- main ---------------------------------------------------------------------------------------------
    Valid("daemon off;", MAIN, lambda c: c.main.daemon, False),
    Valid("daemon ON;", MAIN, lambda c: c.main.daemon, True),
    Valid("master_process off;", MAIN, lambda c: c.main.master_process, False),
    Valid("pid run/m.pid;", MAIN, lambda c: c.main.pid, "{prefix}/run/m.pid"),
    Valid("pid /abs/m.pid;", MAIN, lambda c: c.main.pid, Path("/abs/m.pid")),
    Valid(
        "worker_processes 4;",
        MAIN,
        lambda c: (c.main.worker_processes, c.main.worker_processes_auto),
        (4, False),
    ),
    Valid(
        "worker_processes auto;",
        MAIN,
        lambda c: (c.main.worker_processes, c.main.worker_processes_auto),
        (os.sysconf("SC_NPROCESSORS_ONLN"), True),
    ),
    Valid("worker_rlimit_nofile 4096;", MAIN, lambda c: c.main.worker_rlimit_nofile, 4096),
    Valid('worker_shutdown_timeout "1m 30s";', MAIN, lambda c: c.main.worker_shutdown_timeout, 90.0),
    Valid("worker_shutdown_timeout 250ms;", MAIN, lambda c: c.main.worker_shutdown_timeout, 0.25),
    Valid("env TZ=UTC;", MAIN, lambda c: c.main.env, (("TZ", "UTC"),)),
    Valid("env HOME; env A=b=c;", MAIN, lambda c: c.main.env, (("HOME", None), ("A", "b=c"))),
    Valid(
        "error_log stderr info;",
        MAIN,
        lambda c: [(t.stderr, t.path, t.level) for t in c.main.error_logs],
        [(True, None, LogLevel.INFO)],
    ),
    Valid(
        "error_log logs/a.log; error_log /b.log debug_mail;",
        MAIN,
        lambda c: [(t.path, t.level) for t in c.main.error_logs],
        [("{prefix}/logs/a.log", LogLevel.ERROR), (Path("/b.log"), LogLevel.DEBUG)],
    ),
    Valid(
        "error_log syslog:server=unix:/dev/log;",
        MAIN,
        lambda c: c.main.error_logs[0].syslog,
        SyslogTarget("", 0, "/dev/log"),
    ),
    Valid('error_log "";', MAIN, lambda c: c.main.error_logs[0].stderr, True),
    Valid(
        "error_log syslog:server=127.0.0.1:5140,facility=mail,severity=info,tag=mg_1,nohostname warn;",
        MAIN,
        lambda c: (c.main.error_logs[0].syslog, c.main.error_logs[0].level),
        (SyslogTarget("127.0.0.1", 5140, None, "mail", None, "mg_1", True), LogLevel.WARN),
    ),
    Valid("load_module modules/ngx_mail_module.so;", FIRST, lambda c: c.mail, None),
    # -- events ------------------------------------------------------------------------------------------
    Valid("worker_connections 2048;", EVENTS_CTX, lambda c: c.main.events.worker_connections, 2048),
    Valid("use epoll;", EVENTS_CTX, lambda c: c.main.events.use, "epoll"),
    Valid("multi_accept on;", EVENTS_CTX, lambda c: c.main.events.multi_accept, True),
    Valid("accept_mutex on;", EVENTS_CTX, lambda c: c.main.events.accept_mutex, True),
    # -- mail core ---------------------------------------------------------------------------------------
    Valid("protocol pop3;", SERVER, s(lambda v: v.protocol.value), "pop3"),
    Valid(
        "listen [::1]:1110 bind;",
        SERVER,
        s(lambda v: [(listen.text, listen.bind) for listen in v.listens]),
        [("127.0.0.1:143", False), ("[::1]:1110", True)],
    ),
    Valid("timeout 2m;", MAIL_OR_SERVER, s(lambda v: v.core.timeout), 120.0),
    Valid("timeout 5;", MAIL_OR_SERVER, s(lambda v: v.core.timeout), 5.0),
    Valid("server_name mx.example.org;", MAIL_OR_SERVER, s(lambda v: v.core.server_name), "mx.example.org"),
    Valid('server_name "";', MAIL_OR_SERVER, s(lambda v: v.core.server_name), socket.gethostname().lower()),
    Valid(
        "error_log stderr notice;",
        MAIL_OR_SERVER,
        s(lambda v: [(t.stderr, t.level) for t in v.core.error_logs]),
        [(True, LogLevel.NOTICE)],
    ),
    Valid(
        "session_log logs/sessions.log json;",
        MAIL_OR_SERVER,
        s(lambda v: (present(v.core.session_log).path, present(v.core.session_log).json)),
        ("{prefix}/logs/sessions.log", True),
    ),
    Valid(
        "session_log syslog:server=127.0.0.1:5140,tag=sessions text;",
        MAIL_OR_SERVER,
        s(lambda v: _syslog_target(present(present(v.core.session_log).syslog))),
        (5140, "sessions"),
    ),
    Valid("session_log off;", MAIL_OR_SERVER, s(lambda v: v.core.session_log), None),
    Valid("resolver off;", MAIL_OR_SERVER, s(lambda v: v.core.resolver), None),
    Valid(
        "resolver 127.0.0.53 [::1]:5353 dual.test valid=30s ipv6=off;",
        MAIL_OR_SERVER,
        s(lambda v: v.core.resolver),
        "resolver",
    ),
    Valid(
        "resolver 10.0.0.1 status_zone=z;",
        MAIL_OR_SERVER,
        s(lambda v: present(v.core.resolver).servers),
        (("10.0.0.1", 53),),
    ),
    Valid("resolver_timeout 5s;", MAIL_OR_SERVER, s(lambda v: v.core.resolver_timeout), 5.0),
    Valid("max_errors 2;", MAIL_OR_SERVER, s(lambda v: v.core.max_errors), 2),
    # -- auth_http ---------------------------------------------------------------------------------------
    Valid(
        "auth_http http://auth.test:8080/mail/auth?x=1;",
        MAIL_OR_SERVER,
        s(lambda v: v.auth_http.url),
        "auth_http",
    ),
    Valid(
        "auth_http [::1]/a;",
        MAIL_OR_SERVER,
        s(
            lambda v: (
                v.auth_http.url.host,
                v.auth_http.url.port,
                v.auth_http.url.host_header,
                v.auth_http.url.text,
            )
        ),
        ("::1", 80, "[::1]", "[::1]:80"),
    ),
    Valid(
        "auth_http unix:/run/auth.sock:/check;",
        MAIL_OR_SERVER,
        s(
            lambda v: (
                v.auth_http.url.family,
                v.auth_http.url.host,
                v.auth_http.url.uri,
                v.auth_http.url.host_header,
            )
        ),
        (socket.AF_UNIX, "/run/auth.sock", "/check", "localhost"),
    ),
    Valid("auth_http_timeout 7s;", MAIL_OR_SERVER, s(lambda v: v.auth_http.timeout), 7.0),
    Valid(
        'auth_http_header X-Auth-Key "secret key"; auth_http_header X-B b;',
        MAIL_OR_SERVER,
        s(lambda v: v.auth_http.headers),
        (("X-Auth-Key", "secret key"), ("X-B", "b")),
    ),
    Valid("auth_http_pass_client_cert on;", MAIL_OR_SERVER, s(lambda v: v.auth_http.pass_client_cert), True),
    # -- proxy -------------------------------------------------------------------------------------------
    Valid("proxy on;", MAIL_OR_SERVER, s(lambda v: v.proxy.enabled), True),
    Valid("proxy_buffer 16k;", MAIL_OR_SERVER, s(lambda v: v.proxy.buffer), 16384),
    Valid("proxy_pass_error_message on;", MAIL_OR_SERVER, s(lambda v: v.proxy.pass_error_message), True),
    Valid("proxy_protocol on;", MAIL_OR_SERVER, s(lambda v: v.proxy.proxy_protocol), ProxyProtocolOut.V1),
    Valid("proxy_protocol V2;", MAIL_OR_SERVER, s(lambda v: v.proxy.proxy_protocol), ProxyProtocolOut.V2),
    Valid("proxy_smtp_auth on;", MAIL_OR_SERVER, s(lambda v: v.proxy.smtp_auth), True),
    Valid("proxy_timeout 1h;", MAIL_OR_SERVER, s(lambda v: v.proxy.timeout), 3600.0),
    Valid("xclient off;", MAIL_OR_SERVER, s(lambda v: v.proxy.xclient), False),
    # -- realip ------------------------------------------------------------------------------------------
    Valid(
        "set_real_ip_from 10.0.0.0/8; set_real_ip_from 2001:db8::/32; set_real_ip_from 192.0.2.1;",
        MAIL_OR_SERVER,
        s(lambda v: v.realip.trusted),
        (
            ipaddress.ip_network("10.0.0.0/8"),
            ipaddress.ip_network("2001:db8::/32"),
            ipaddress.ip_network("192.0.2.1/32"),
        ),
    ),
    Valid(
        "set_real_ip_from dual.test; set_real_ip_from unix:;",
        MAIL_OR_SERVER,
        s(lambda v: (v.realip.trusted, v.realip.trust_unix)),
        ((ipaddress.ip_network("127.0.0.2/32"), ipaddress.ip_network("::1/128")), True),
    ),
    # -- imap, pop3, smtp --------------------------------------------------------------------------------
    Valid("imap_client_buffer 8k;", MAIL_OR_SERVER, s(lambda v: v.imap.client_buffer), 8192),
    Valid(
        'imap_capabilities IMAP4rev1 "SASL-IR"; imap_capabilities ID;',
        MAIL_OR_SERVER,
        s(lambda v: v.imap.capabilities),
        ("IMAP4rev1", "SASL-IR", "ID"),
    ),
    Valid(
        "imap_auth login CRAM-MD5; imap_auth external;",
        MAIL_OR_SERVER,
        s(lambda v: v.imap.auth),
        frozenset({ImapAuth.LOGIN, ImapAuth.CRAM_MD5, ImapAuth.EXTERNAL}),
    ),
    Valid("pop3_capabilities TOP;", MAIL_OR_SERVER, s(lambda v: v.pop3.capabilities), ("TOP",)),
    Valid(
        "pop3_auth apop plain;",
        MAIL_OR_SERVER,
        s(lambda v: v.pop3.auth),
        frozenset({Pop3Auth.APOP, Pop3Auth.PLAIN}),
    ),
    Valid("smtp_client_buffer 1m;", MAIL_OR_SERVER, s(lambda v: v.smtp.client_buffer), 1048576),
    Valid("smtp_greeting_delay 500ms;", MAIL_OR_SERVER, s(lambda v: v.smtp.greeting_delay), 0.5),
    Valid(
        'smtp_capabilities "SIZE 10485760" 8BITMIME;',
        MAIL_OR_SERVER,
        s(lambda v: v.smtp.capabilities),
        ("SIZE 10485760", "8BITMIME"),
    ),
    Valid("smtp_auth none;", MAIL_OR_SERVER, s(lambda v: v.smtp.auth), frozenset({SmtpAuth.NONE})),
    # -- ssl ---------------------------------------------------------------------------------------------
    Valid(
        "starttls only; ssl_certificate c.pem; ssl_certificate_key k.pem;",
        MAIL_OR_SERVER,
        s(lambda v: (v.ssl.starttls, v.needs_tls)),
        (StartTls.ONLY, True),
    ),
    Valid(
        "ssl_certificate rsa.pem; ssl_certificate_key rsa.key;"
        " ssl_certificate /ec.pem; ssl_certificate_key /ec.key;",
        MAIL_OR_SERVER,
        s(lambda v: [(p.certificate.path, p.key.path) for p in v.ssl.certificates]),
        [("{dir}/rsa.pem", "{dir}/rsa.key"), (Path("/ec.pem"), Path("/ec.key"))],
    ),
    Valid(
        'ssl_certificate "data:-----BEGIN CERTIFICATE-----\\nMII\\n";'
        " ssl_certificate_key engine:pkcs11:slot_0-id_1;",
        MAIL_OR_SERVER,
        s(
            lambda v: (
                v.ssl.certificates[0].certificate.kind,
                v.ssl.certificates[0].certificate.data,
                str(v.ssl.certificates[0].certificate),
                v.ssl.certificates[0].key.engine,
                v.ssl.certificates[0].key.key_id,
            )
        ),
        ("data", b"-----BEGIN CERTIFICATE-----\nMII\n", "data:...", "pkcs11", "slot_0-id_1"),
    ),
    Valid(
        "ssl_certificate c.pem; ssl_certificate_key store:file:/k.pem;",
        MAIL_OR_SERVER,
        s(lambda v: (v.ssl.certificates[0].key.kind, v.ssl.certificates[0].key.uri)),
        ("store", "file:/k.pem"),
    ),
    Valid(
        "ssl_certificate c.pem; ssl_certificate_key engine:nocolon;",
        MAIL_OR_SERVER,
        s(lambda v: (v.ssl.certificates[0].key.engine, v.ssl.certificates[0].key.key_id)),
        ("nocolon", None),
    ),
    Valid(
        "ssl_password_file pass.txt;",
        MAIL_OR_SERVER,
        s(lambda v: (v.ssl.passwords, v.ssl.password_file)),
        ((b"first", b"second"), "{dir}/pass.txt"),
    ),
    Valid(
        "ssl_certificate_compression off;", MAIL_OR_SERVER, s(lambda v: v.ssl.certificate_compression), False
    ),
    Valid("ssl_dhparam dh.pem;", MAIL_OR_SERVER, s(lambda v: v.ssl.dhparam), "{dir}/dh.pem"),
    Valid(
        "ssl_ecdh_curve X25519:prime256v1;",
        MAIL_OR_SERVER,
        s(lambda v: v.ssl.ecdh_curve),
        "X25519:prime256v1",
    ),
    Valid(
        "ssl_protocols tlsv1.2 TLSv1.3;",
        MAIL_OR_SERVER,
        s(lambda v: v.ssl.protocols),
        frozenset({"TLSv1.2", "TLSv1.3"}),
    ),
    Valid("ssl_ciphers ECDHE+AESGCM;", MAIL_OR_SERVER, s(lambda v: v.ssl.ciphers), "ECDHE+AESGCM"),
    Valid("ssl_prefer_server_ciphers on;", MAIL_OR_SERVER, s(lambda v: v.ssl.prefer_server_ciphers), True),
    Valid(
        "ssl_session_cache builtin:1000 shared:CacheA:1m;",
        MAIL_OR_SERVER,
        s(lambda v: v.ssl.session_cache),
        "session_cache",
    ),
    Valid("ssl_session_cache off;", MAIL_OR_SERVER, s(lambda v: v.ssl.session_cache.mode), "off"),
    Valid(
        "ssl_session_cache shared:CacheB:32k;",
        MAIL_OR_SERVER,
        s(lambda v: (v.ssl.session_cache.mode, v.ssl.session_cache.builtin, v.ssl.session_cache.shared)),
        ("cache", False, SharedCacheZone("CacheB", 32768)),
    ),
    Valid(
        "ssl_session_cache builtin;",
        MAIL_OR_SERVER,
        s(lambda v: (v.ssl.session_cache.builtin, v.ssl.session_cache.builtin_size)),
        (True, 20480),
    ),
    Valid("ssl_session_tickets off;", MAIL_OR_SERVER, s(lambda v: v.ssl.session_tickets), False),
    Valid(
        "ssl_session_ticket_key t1.key; ssl_session_ticket_key /t2.key;",
        MAIL_OR_SERVER,
        s(lambda v: v.ssl.session_ticket_keys),
        ("{dir}/t1.key", Path("/t2.key")),
    ),
    Valid("ssl_session_timeout 1d;", MAIL_OR_SERVER, s(lambda v: v.ssl.session_timeout), 86400.0),
    Valid(
        "ssl_verify_client optional_no_ca;",
        MAIL_OR_SERVER,
        s(lambda v: v.ssl.verify_client),
        VerifyClient.OPTIONAL_NO_CA,
    ),
    Valid("ssl_verify_depth 3;", MAIL_OR_SERVER, s(lambda v: v.ssl.verify_depth), 3),
    Valid(
        "ssl_client_certificate ca.pem;",
        MAIL_OR_SERVER,
        s(lambda v: v.ssl.client_certificate),
        "{dir}/ca.pem",
    ),
    Valid(
        "ssl_trusted_certificate ta.pem;",
        MAIL_OR_SERVER,
        s(lambda v: v.ssl.trusted_certificate),
        "{dir}/ta.pem",
    ),
    Valid("ssl_crl crl.pem;", MAIL_OR_SERVER, s(lambda v: v.ssl.crl), "{dir}/crl.pem"),
    Valid(
        "ssl_conf_command Options PrioritizeChaCha; ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256;",
        MAIL_OR_SERVER,
        s(lambda v: v.ssl.conf_commands),
        (("Options", "PrioritizeChaCha"), ("Ciphersuites", "TLS_AES_128_GCM_SHA256")),
    ),
]

if ROOT:
    VALID += [
        Valid("user root;", MAIN, lambda c: (c.main.user, c.main.group), ("root", "root")),
        Valid("user nobody nogroup;", MAIN, lambda c: (c.main.user, c.main.group), ("nobody", "nogroup")),
    ]

# Structured expectations too long for one line.
EXPECTED_BY_NAME: dict[str, Callable[[Any], bool]] = {
    "resolver": lambda r: (
        r.servers == (("127.0.0.53", 53), ("::1", 5353), ("127.0.0.2", 53), ("::1", 53))
        and r.valid == 30.0
        and r.ipv4
        and not r.ipv6
    ),
    "auth_http": lambda u: (
        (u.family, u.host, u.port, u.uri, u.host_header, u.text)
        == (socket.AF_INET, "192.0.2.10", 8080, "/mail/auth?x=1", "auth.test", "192.0.2.10:8080")
    ),
    "session_cache": lambda cache: (
        (cache.mode, cache.builtin, cache.builtin_size, cache.shared)
        == ("cache", True, 1000, SharedCacheZone("CacheA", 1048576))
    ),
}


def _expected(value: Any, conf: ConfDir) -> Any:
    if isinstance(value, str) and value.startswith("{prefix}"):
        return Path(value.replace("{prefix}", str(conf.path)))
    if isinstance(value, str) and value.startswith("{dir}"):
        return Path(value.replace("{dir}", str(conf.path)))
    if isinstance(value, tuple | list):
        return type(value)(_expected(item, conf) for item in value)
    return value


def _contexts(context: str) -> list[str]:
    return [MAIL, SERVER] if context == MAIL_OR_SERVER else [context]


VALID_RUNS = [(case, where) for case in VALID for where in _contexts(case.context)]


@pytest.mark.parametrize(
    ("case", "where"), VALID_RUNS, ids=[f"{c.directive[:60]}@{w}" for c, w in VALID_RUNS]
)
def test_valid_form_gives_its_typed_value(conf: ConfDir, case: Valid, where: str) -> None:
    conf.write("pass.txt", "first\r\n\nsecond\n")
    value = case.get(conf.load(text_in(where, case.directive)).config)
    if isinstance(case.expected, str) and case.expected in EXPECTED_BY_NAME:
        assert EXPECTED_BY_NAME[case.expected](value), value
    else:
        assert value == _expected(case.expected, conf)


INVALID = [
    # -- generic setters --------------------------------------------------------------------------------
    Invalid("daemon yes;", MAIN, 'invalid value "yes" in "daemon" directive, it must be "on" or "off"'),
    Invalid("daemon on; daemon off;", MAIN, '"daemon" directive is duplicate'),
    Invalid(
        "master_process 1;", MAIN, 'invalid value "1" in "master_process" directive, it must be "on" or "off"'
    ),
    Invalid("pid a; pid b;", MAIN, '"pid" directive is duplicate'),
    Invalid("pid;", MAIN, 'invalid number of arguments in "pid" directive'),
    Invalid("worker_processes many;", MAIN, '"worker_processes" directive invalid value'),
    Invalid("worker_processes -1;", MAIN, '"worker_processes" directive invalid value'),
    Invalid("worker_rlimit_nofile 1k;", MAIN, '"worker_rlimit_nofile" directive invalid number'),
    Invalid("worker_shutdown_timeout 1y;", MAIN, '"worker_shutdown_timeout" directive invalid value'),
    Invalid("user a b c;", MAIN, 'invalid number of arguments in "user" directive'),
    Invalid("env;", MAIN, 'invalid number of arguments in "env" directive'),
    Invalid("error_log stderr loud;", MAIN, 'invalid log level "loud"'),
    Invalid("session_log stderr yaml;", MAIL_OR_SERVER, 'unknown session log format "yaml"'),
    Invalid("session_log off json;", MAIL_OR_SERVER, '"session_log" directive takes no format when off'),
    Invalid("session_log off; session_log stderr;", MAIL_OR_SERVER, '"session_log" directive is duplicate'),
    Invalid("session_log syslog:tag=x;", MAIL_OR_SERVER, "no syslog server specified"),
    Invalid("error_log stderr info warn;", MAIN, 'duplicate log level "warn"'),
    Invalid("error_log stderr debug_mail info;", MAIN, 'duplicate log level "info"'),
    Invalid("error_log stderr info debug_mail;", MAIN, 'invalid log level "debug_mail"'),
    Invalid("error_log memory:32m debug;", MAIN, 'the "memory:" error log is not supported by mailgate'),
    Invalid("error_log syslog:tag=x;", MAIN, "no syslog server specified"),
    Invalid("error_log syslog:server=;", MAIN, 'no host in syslog server ""'),
    Invalid(
        "error_log syslog:server=nohost.invalid;", MAIN, 'host not found in syslog server "nohost.invalid"'
    ),
    Invalid("error_log syslog:server=1.2.3.4/x;", MAIN, 'invalid host in syslog server "1.2.3.4/x"'),
    Invalid("error_log syslog:server=a,server=b;", MAIN, 'host not found in syslog server "a"'),
    Invalid("error_log syslog:server=1.2.3.4,server=b;", MAIN, 'duplicate syslog "server"'),
    Invalid("error_log syslog:server=1.2.3.4,facility=x;", MAIN, 'unknown syslog facility "x"'),
    Invalid(
        "error_log syslog:server=1.2.3.4,facility=mail,facility=mail;", MAIN, 'duplicate syslog "facility"'
    ),
    Invalid("error_log syslog:server=1.2.3.4,severity=loud;", MAIN, 'unknown syslog severity "loud"'),
    Invalid(
        "error_log syslog:server=1.2.3.4,severity=info,severity=info;", MAIN, 'duplicate syslog "severity"'
    ),
    Invalid(
        "error_log syslog:server=1.2.3.4,tag=a-b;",
        MAIN,
        'syslog "tag" only allows alphanumeric characters and underscore',
    ),
    Invalid("error_log syslog:server=1.2.3.4,tag=" + "a" * 33 + ";", MAIN, "syslog tag length exceeds 32"),
    Invalid("error_log syslog:server=1.2.3.4,tag=a,tag=b;", MAIN, 'duplicate syslog "tag"'),
    Invalid("error_log syslog:server=1.2.3.4,bogus;", MAIN, 'unknown syslog parameter "bogus"'),
    Invalid("events {}", MAIN, '"events" directive is duplicate'),
    Invalid("mail {} mail {}", MAIN, '"mail" directive is duplicate'),
    Invalid("http {} http {}", MAIN, '"http" directive is duplicate'),
    Invalid("load_module x.so;", MAIN, '"load_module" directive is specified too late'),
    # -- refused nginx directives -----------------------------------------------------------------------
    Invalid("lock_file /run/x.lock;", MAIN, '"lock_file" directive is not supported by mailgate'),
    Invalid("timer_resolution 100ms;", MAIN, '"timer_resolution" directive is not supported by mailgate'),
    Invalid("debug_points abort;", MAIN, '"debug_points" directive is not supported by mailgate'),
    Invalid("worker_priority -5;", MAIN, '"worker_priority" directive is not supported by mailgate'),
    Invalid(
        "worker_cpu_affinity auto;", MAIN, '"worker_cpu_affinity" directive is not supported by mailgate'
    ),
    Invalid("worker_rlimit_core 1m;", MAIN, '"worker_rlimit_core" directive is not supported by mailgate'),
    Invalid("working_directory /tmp;", MAIN, '"working_directory" directive is not supported by mailgate'),
    Invalid("thread_pool default threads=4;", MAIN, '"thread_pool" directive is not supported by mailgate'),
    Invalid("ssl_engine pkcs11;", MAIN, '"ssl_engine" directive is not supported by mailgate'),
    Invalid("pcre_jit on;", MAIN, '"pcre_jit" directive is not supported by mailgate'),
    Invalid(
        "google_perftools_profiles /tmp/p;",
        MAIN,
        '"google_perftools_profiles" directive is not supported by mailgate',
    ),
    Invalid(
        "accept_mutex_delay 100ms;", EVENTS_CTX, '"accept_mutex_delay" directive is not supported by mailgate'
    ),
    Invalid(
        "debug_connection 127.0.0.1;", EVENTS_CTX, '"debug_connection" directive is not supported by mailgate'
    ),
    Invalid(
        "worker_aio_requests 32;", EVENTS_CTX, '"worker_aio_requests" directive is not supported by mailgate'
    ),
    Invalid("epoll_events 512;", EVENTS_CTX, '"epoll_events" directive is not supported by mailgate'),
    # -- events ------------------------------------------------------------------------------------------
    Invalid("worker_connections many;", EVENTS_CTX, 'invalid number "many"'),
    Invalid(
        "worker_connections 1; worker_connections 2;",
        EVENTS_CTX,
        '"worker_connections" directive is duplicate',
    ),
    Invalid("use kqueue;", EVENTS_CTX, 'invalid event type "kqueue"'),
    Invalid("use poll; use select;", EVENTS_CTX, '"use" directive is duplicate'),
    Invalid(
        "multi_accept maybe;",
        EVENTS_CTX,
        'invalid value "maybe" in "multi_accept" directive, it must be "on" or "off"',
    ),
    Invalid(
        "accept_mutex 2;",
        EVENTS_CTX,
        'invalid value "2" in "accept_mutex" directive, it must be "on" or "off"',
    ),
    Invalid("pid x;", EVENTS_CTX, '"pid" directive is not allowed here'),
    # -- mail core ---------------------------------------------------------------------------------------
    Invalid("server x {}", MAIL, 'invalid number of arguments in "server" directive'),
    Invalid("server;", MAIL, 'directive "server" has no opening "{"'),
    Invalid("listen 127.0.0.1:110;", MAIL, '"listen" directive is not allowed here'),
    Invalid("protocol imap;", MAIL, '"protocol" directive is not allowed here'),
    Invalid("protocol IMAP;", SERVER, 'unknown protocol "IMAP"'),
    Invalid("protocol;", SERVER, 'invalid number of arguments in "protocol" directive'),
    Invalid("timeout 1M;", MAIL_OR_SERVER, '"timeout" directive invalid value'),
    Invalid("timeout 10s 5s;", MAIL_OR_SERVER, 'invalid number of arguments in "timeout" directive'),
    Invalid("timeout 1; timeout 2;", MAIL_OR_SERVER, '"timeout" directive is duplicate'),
    Invalid("server_name a b;", MAIL_OR_SERVER, 'invalid number of arguments in "server_name" directive'),
    Invalid("server_name a; server_name b;", MAIL_OR_SERVER, '"server_name" directive is duplicate'),
    Invalid("error_log;", MAIL_OR_SERVER, 'invalid number of arguments in "error_log" directive'),
    Invalid("resolver off; resolver 1.2.3.4;", MAIL_OR_SERVER, '"resolver" directive is duplicate'),
    Invalid("resolver valid=x 1.2.3.4;", MAIL_OR_SERVER, "invalid parameter: valid=x"),
    Invalid("resolver 1.2.3.4 ipv4=no;", MAIL_OR_SERVER, "invalid parameter: ipv4=no"),
    Invalid("resolver 1.2.3.4 ipv4=off ipv6=off;", MAIL_OR_SERVER, '"ipv4" and "ipv6" cannot both be "off"'),
    Invalid("resolver valid=10s;", MAIL_OR_SERVER, "no name servers defined"),
    Invalid("resolver 1.2.3.4:0;", MAIL_OR_SERVER, 'invalid port in resolver "1.2.3.4:0"'),
    Invalid("resolver nohost.invalid;", MAIL_OR_SERVER, 'host not found in resolver "nohost.invalid"'),
    Invalid("resolver_timeout 5x;", MAIL_OR_SERVER, '"resolver_timeout" directive invalid value'),
    Invalid("max_errors -1;", MAIL_OR_SERVER, '"max_errors" directive invalid number'),
    # -- listen ------------------------------------------------------------------------------------------
    Invalid("listen 127.0.0.1:144 reuseport;", SERVER, 'the invalid "reuseport" parameter'),
    Invalid("listen 127.0.0.1:144 default_server;", SERVER, 'the invalid "default_server" parameter'),
    Invalid("listen 127.0.0.1:144 ipv6only=maybe;", SERVER, 'the invalid "ipv6only=maybe" parameter'),
    Invalid("listen [::1]:144 ipv6only=of;", SERVER, 'invalid ipv6only flags "of"'),
    Invalid("listen 127.0.0.1:144 backlog=0;", SERVER, 'invalid backlog "backlog=0"'),
    Invalid("listen 127.0.0.1:144 backlog=x;", SERVER, 'invalid backlog "backlog=x"'),
    Invalid("listen 127.0.0.1:144 rcvbuf=1g;", SERVER, 'invalid rcvbuf "rcvbuf=1g"'),
    Invalid("listen 127.0.0.1:144 sndbuf=;", SERVER, 'invalid sndbuf "sndbuf="'),
    Invalid("listen 127.0.0.1:144 so_keepalive=yes;", SERVER, 'invalid so_keepalive value: "yes"'),
    Invalid("listen 127.0.0.1:144 so_keepalive=::;", SERVER, 'invalid so_keepalive value: "::"'),
    Invalid("listen 127.0.0.1:144 so_keepalive=0:0:0;", SERVER, 'invalid so_keepalive value: "0:0:0"'),
    Invalid("listen 127.0.0.1:144 so_keepalive=1ms::;", SERVER, 'invalid so_keepalive value: "1ms::"'),
    Invalid("listen 127.0.0.1:144 so_keepalive=1:2:x;", SERVER, 'invalid so_keepalive value: "1:2:x"'),
    Invalid("listen 127.0.0.1:0;", SERVER, 'invalid port in "127.0.0.1:0" of the "listen" directive'),
    Invalid("listen 70000;", SERVER, 'invalid port in "70000" of the "listen" directive'),
    Invalid("listen 1145-1144;", SERVER, 'invalid port range in "1145-1144" of the "listen" directive'),
    Invalid("listen 127.0.0.1:1-0;", SERVER, 'invalid port in "127.0.0.1:1-0" of the "listen" directive'),
    Invalid("listen :144;", SERVER, 'no host in ":144" of the "listen" directive'),
    Invalid("listen 1.2.3.4/x:144;", SERVER, 'invalid host in "1.2.3.4/x:144" of the "listen" directive'),
    Invalid("listen [::1;", SERVER, 'invalid host in "[::1" of the "listen" directive'),
    Invalid("listen [::1]x;", SERVER, 'invalid host in "[::1]x" of the "listen" directive'),
    Invalid("listen []:144;", SERVER, 'no host in "[]:144" of the "listen" directive'),
    Invalid("listen [zz]:144;", SERVER, 'invalid IPv6 address in "[zz]:144" of the "listen" directive'),
    Invalid(
        "listen unix:;", SERVER, 'no path in the unix domain socket in "unix:" of the "listen" directive'
    ),
    Invalid(
        "listen unix:/" + "p" * 107 + ";",
        SERVER,
        'too long path in the unix domain socket in "unix:/' + "p" * 107 + '" of the "listen" directive',
    ),
    Invalid(
        "listen nohost.invalid:144;",
        SERVER,
        'host not found in "nohost.invalid:144" of the "listen" directive',
    ),
    Invalid("listen 127.0.0.1:143;", SERVER, 'duplicate "127.0.0.1:143" address and port pair'),
    Invalid("listen localhost:143;", SERVER, 'duplicate "127.0.0.1:143" address and port pair'),
    Invalid("listen *:144; listen 0.0.0.0:144;", SERVER, 'duplicate "0.0.0.0:144" address and port pair'),
    Invalid("listen [::]:144; listen [0::0]:144;", SERVER, 'duplicate "[::]:144" address and port pair'),
    Invalid("listen unix:/s; listen unix:/s;", SERVER, 'duplicate "unix:/s" address and port pair'),
    Invalid("listen;", SERVER, 'invalid number of arguments in "listen" directive'),
    # -- auth_http ---------------------------------------------------------------------------------------
    Invalid(
        "auth_http https://auth.test/;", MAIL_OR_SERVER, 'invalid port in auth_http "https://auth.test/"'
    ),
    Invalid("auth_http http://127.0.0.1:0/x;", MAIL_OR_SERVER, 'invalid port in auth_http "127.0.0.1:0/x"'),
    Invalid("auth_http nohost.invalid/;", MAIL_OR_SERVER, 'host not found in auth_http "nohost.invalid/"'),
    Invalid("auth_http unix:;", MAIL_OR_SERVER, 'no path in the unix domain socket in auth_http "unix:"'),
    Invalid("auth_http [::1/x;", MAIL_OR_SERVER, 'invalid host in auth_http "[::1/x"'),
    Invalid("auth_http_timeout 1y;", MAIL_OR_SERVER, '"auth_http_timeout" directive invalid value'),
    Invalid(
        "auth_http_header X-A;", MAIL_OR_SERVER, 'invalid number of arguments in "auth_http_header" directive'
    ),
    Invalid(
        "auth_http_pass_client_cert 1;",
        MAIL_OR_SERVER,
        'invalid value "1" in "auth_http_pass_client_cert" directive, it must be "on" or "off"',
    ),
    # -- proxy -------------------------------------------------------------------------------------------
    Invalid(
        "proxy maybe;", MAIL_OR_SERVER, 'invalid value "maybe" in "proxy" directive, it must be "on" or "off"'
    ),
    Invalid("proxy_buffer 1g;", MAIL_OR_SERVER, '"proxy_buffer" directive invalid value'),
    Invalid("proxy_buffer 4k; proxy_buffer 8k;", MAIL_OR_SERVER, '"proxy_buffer" directive is duplicate'),
    Invalid(
        "proxy_pass_error_message 0;",
        MAIL_OR_SERVER,
        'invalid value "0" in "proxy_pass_error_message" directive, it must be "on" or "off"',
    ),
    Invalid("proxy_protocol v3;", MAIL_OR_SERVER, 'invalid value "v3"'),
    Invalid(
        "proxy_protocol on; proxy_protocol v2;", MAIL_OR_SERVER, '"proxy_protocol" directive is duplicate'
    ),
    Invalid(
        "proxy_smtp_auth yes;",
        MAIL_OR_SERVER,
        'invalid value "yes" in "proxy_smtp_auth" directive, it must be "on" or "off"',
    ),
    Invalid("proxy_timeout 1h1h;", MAIL_OR_SERVER, '"proxy_timeout" directive invalid value'),
    Invalid(
        "xclient of;", MAIL_OR_SERVER, 'invalid value "of" in "xclient" directive, it must be "on" or "off"'
    ),
    # -- realip ------------------------------------------------------------------------------------------
    Invalid(
        "set_real_ip_from 10.0.0.0/33;", MAIL_OR_SERVER, 'host not found in set_real_ip_from "10.0.0.0/33"'
    ),
    Invalid("set_real_ip_from ::1/129;", MAIL_OR_SERVER, 'host not found in set_real_ip_from "::1/129"'),
    Invalid(
        "set_real_ip_from a b;", MAIL_OR_SERVER, 'invalid number of arguments in "set_real_ip_from" directive'
    ),
    # -- imap, pop3, smtp --------------------------------------------------------------------------------
    Invalid("imap_client_buffer big;", MAIL_OR_SERVER, '"imap_client_buffer" directive invalid value'),
    Invalid(
        "imap_capabilities;", MAIL_OR_SERVER, 'invalid number of arguments in "imap_capabilities" directive'
    ),
    Invalid("imap_auth plain apop;", MAIL_OR_SERVER, 'invalid value "apop"'),
    Invalid(
        "pop3_capabilities;", MAIL_OR_SERVER, 'invalid number of arguments in "pop3_capabilities" directive'
    ),
    Invalid("pop3_auth login;", MAIL_OR_SERVER, 'invalid value "login"'),
    Invalid("pop3_client_buffer 1k;", MAIL_OR_SERVER, 'unknown directive "pop3_client_buffer"'),
    Invalid("smtp_client_buffer 1x;", MAIL_OR_SERVER, '"smtp_client_buffer" directive invalid value'),
    Invalid("smtp_greeting_delay 1M;", MAIL_OR_SERVER, '"smtp_greeting_delay" directive invalid value'),
    Invalid(
        "smtp_capabilities;", MAIL_OR_SERVER, 'invalid number of arguments in "smtp_capabilities" directive'
    ),
    Invalid("smtp_auth apop;", MAIL_OR_SERVER, 'invalid value "apop"'),
    # -- ssl ---------------------------------------------------------------------------------------------
    Invalid(
        "ssl on;",
        MAIL_OR_SERVER,
        'the "ssl" directive is no longer supported, use the "listen ... ssl" directive instead',
    ),
    Invalid("starttls yes;", MAIL_OR_SERVER, 'invalid value "yes"'),
    Invalid("starttls on; starttls off;", MAIL_OR_SERVER, '"starttls" directive is duplicate'),
    Invalid(
        "ssl_certificate a b;", MAIL_OR_SERVER, 'invalid number of arguments in "ssl_certificate" directive'
    ),
    Invalid(
        "ssl_certificate_key;",
        MAIL_OR_SERVER,
        'invalid number of arguments in "ssl_certificate_key" directive',
    ),
    Invalid(
        "ssl_password_file none.txt;",
        MAIL_OR_SERVER,
        'open() "{dir}/none.txt" failed (2: No such file or directory)',
    ),
    Invalid("ssl_password_file long.txt;", MAIL_OR_SERVER, 'too long line in "{dir}/long.txt"'),
    Invalid(
        "ssl_password_file pass.txt; ssl_password_file pass.txt;",
        MAIL_OR_SERVER,
        '"ssl_password_file" directive is duplicate',
    ),
    Invalid("ssl_password_file adir;", MAIL_OR_SERVER, 'read() "{dir}/adir" failed (21: Is a directory)'),
    Invalid(
        "ssl_certificate_compression yes;",
        MAIL_OR_SERVER,
        'invalid value "yes" in "ssl_certificate_compression" directive, it must be "on" or "off"',
    ),
    Invalid("ssl_dhparam a; ssl_dhparam b;", MAIL_OR_SERVER, '"ssl_dhparam" directive is duplicate'),
    Invalid(
        "ssl_ecdh_curve a b;", MAIL_OR_SERVER, 'invalid number of arguments in "ssl_ecdh_curve" directive'
    ),
    Invalid("ssl_protocols TLSv1.2 TLSv1.4;", MAIL_OR_SERVER, 'invalid value "TLSv1.4"'),
    Invalid("ssl_protocols;", MAIL_OR_SERVER, 'invalid number of arguments in "ssl_protocols" directive'),
    Invalid("ssl_ciphers a; ssl_ciphers b;", MAIL_OR_SERVER, '"ssl_ciphers" directive is duplicate'),
    Invalid(
        "ssl_prefer_server_ciphers y;",
        MAIL_OR_SERVER,
        'invalid value "y" in "ssl_prefer_server_ciphers" directive, it must be "on" or "off"',
    ),
    Invalid("ssl_session_cache foo;", MAIL_OR_SERVER, 'invalid session cache "foo"'),
    Invalid("ssl_session_cache builtin:;", MAIL_OR_SERVER, 'invalid session cache "builtin:"'),
    Invalid("ssl_session_cache builtin:x;", MAIL_OR_SERVER, 'invalid session cache "builtin:x"'),
    Invalid("ssl_session_cache shared:X;", MAIL_OR_SERVER, 'invalid session cache "shared:X"'),
    Invalid("ssl_session_cache shared::1m;", MAIL_OR_SERVER, 'invalid session cache "shared::1m"'),
    Invalid("ssl_session_cache shared:X:1g;", MAIL_OR_SERVER, 'invalid session cache "shared:X:1g"'),
    Invalid("ssl_session_cache shared:X:31k;", MAIL_OR_SERVER, 'session cache "shared:X:31k" is too small'),
    Invalid(
        "ssl_session_cache off none builtin;",
        MAIL_OR_SERVER,
        'invalid number of arguments in "ssl_session_cache" directive',
    ),
    Invalid(
        "ssl_session_cache shared:Z:1m; ssl_session_cache shared:Z:2m;",
        MAIL_OR_SERVER,
        'the size 2097152 of shared memory zone "Z" conflicts with already declared size 1048576',
    ),
    Invalid(
        "ssl_session_tickets 1;",
        MAIL_OR_SERVER,
        'invalid value "1" in "ssl_session_tickets" directive, it must be "on" or "off"',
    ),
    Invalid(
        "ssl_session_ticket_key;",
        MAIL_OR_SERVER,
        'invalid number of arguments in "ssl_session_ticket_key" directive',
    ),
    Invalid("ssl_session_timeout 10ms;", MAIL_OR_SERVER, '"ssl_session_timeout" directive invalid value'),
    Invalid("ssl_verify_client sometimes;", MAIL_OR_SERVER, 'invalid value "sometimes"'),
    Invalid("ssl_verify_depth deep;", MAIL_OR_SERVER, '"ssl_verify_depth" directive invalid number'),
    Invalid(
        "ssl_client_certificate a; ssl_client_certificate b;",
        MAIL_OR_SERVER,
        '"ssl_client_certificate" directive is duplicate',
    ),
    Invalid(
        "ssl_trusted_certificate a; ssl_trusted_certificate b;",
        MAIL_OR_SERVER,
        '"ssl_trusted_certificate" directive is duplicate',
    ),
    Invalid("ssl_crl a; ssl_crl b;", MAIL_OR_SERVER, '"ssl_crl" directive is duplicate'),
    Invalid(
        "ssl_conf_command Options;",
        MAIL_OR_SERVER,
        'invalid number of arguments in "ssl_conf_command" directive',
    ),
    Invalid("ssl_stapling on;", MAIL_OR_SERVER, '"ssl_stapling" directive is not allowed here'),
]

INVALID_RUNS = [(case, where) for case in INVALID for where in _contexts(case.context)]


@pytest.mark.parametrize(
    ("case", "where"), INVALID_RUNS, ids=[f"{c.directive[:60]}@{w}" for c, w in INVALID_RUNS]
)
def test_invalid_form_gives_nginx_message_at_its_line(conf: ConfDir, case: Invalid, where: str) -> None:
    conf.write("pass.txt", "first\n")
    conf.write("long.txt", "x" * 4096 + "\n")
    (conf.path / "adir").mkdir()
    error = conf.error(text_in(where, case.directive))
    assert str(error) == f"{case.message.replace('{dir}', str(conf.path))} in {conf.where(LINE[where])}"


def test_every_directive_of_the_tables_has_valid_and_invalid_cases() -> None:
    def names(cases: list[Valid] | list[Invalid]) -> set[str]:
        return {word.rstrip(";") for case in cases for word in case.directive.split()} & set(DIRECTIVE_INDEX)

    # include, http, stream and the blocks are covered by test_loader.
    structural = {"include", "http", "stream", "events", "mail", "server"}
    refused = {case.directive.split()[0] for case in INVALID if "not supported by mailgate" in case.message}
    everything = set(DIRECTIVE_INDEX) - structural
    assert everything - refused - {"ssl"} <= names(VALID)
    assert everything <= names(INVALID)
