"""The typed configuration the rest of mailgate reads.

Everything here is produced by `mailgate.config.load` from nginx-syntax text: values are already parsed,
defaulted, inherited from `mail {}` into each `server {}` and validated. Nothing downstream reads raw
directive strings. Times are seconds (float), sizes are bytes (int), paths are absolute.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class SourceRef:
    """Where a directive was written, for `in FILE:LINE` in messages."""

    file: str
    line: int
    command_line: bool = False  # a `-g` directive: nginx says `in command line`

    def __str__(self) -> str:
        if self.command_line:
            return "command line"
        return f"{self.file}:{self.line}"


class Protocol(StrEnum):
    IMAP = "imap"
    POP3 = "pop3"
    SMTP = "smtp"


class StartTls(StrEnum):
    OFF = "off"
    ON = "on"
    ONLY = "only"


class VerifyClient(StrEnum):
    OFF = "off"
    ON = "on"
    OPTIONAL = "optional"
    OPTIONAL_NO_CA = "optional_no_ca"


class ProxyProtocolOut(StrEnum):
    """`proxy_protocol off|on|v2` towards the backend (`on` is version 1)."""

    OFF = "off"
    V1 = "on"
    V2 = "v2"


class ImapAuth(StrEnum):
    PLAIN = "plain"
    LOGIN = "login"
    CRAM_MD5 = "cram-md5"
    EXTERNAL = "external"


class Pop3Auth(StrEnum):
    PLAIN = "plain"
    APOP = "apop"
    CRAM_MD5 = "cram-md5"
    EXTERNAL = "external"


class SmtpAuth(StrEnum):
    PLAIN = "plain"
    LOGIN = "login"
    CRAM_MD5 = "cram-md5"
    EXTERNAL = "external"
    NONE = "none"


class LogLevel(StrEnum):
    """nginx's error_log levels, most severe first."""

    EMERG = "emerg"
    ALERT = "alert"
    CRIT = "crit"
    ERROR = "error"
    WARN = "warn"
    NOTICE = "notice"
    INFO = "info"
    DEBUG = "debug"

    @property
    def severity(self) -> int:
        """0 for emerg ... 7 for debug (syslog numbering)."""
        return _SEVERITIES[self]


_SEVERITIES = {level: number for number, level in enumerate(LogLevel)}


# ---------------------------------------------------------------------------------------------------------
# Main context


@dataclass(frozen=True)
class SyslogTarget:
    """`syslog:server=ADDR[:PORT][,facility=...][,severity=...][,tag=...][,nohostname]`."""

    server_host: str
    server_port: int = 514
    server_path: str | None = None  # `server=unix:/dev/log`
    facility: str = "local7"
    severity: LogLevel | None = None  # None: use the message's own level
    tag: str = "nginx"
    nohostname: bool = False


@dataclass(frozen=True)
class ErrorLogTarget:
    """One `error_log` line: where and from which level up."""

    path: Path | None  # None for stderr and syslog
    level: LogLevel = LogLevel.ERROR
    stderr: bool = False
    syslog: SyslogTarget | None = None
    source: SourceRef | None = None


@dataclass(frozen=True)
class EventsConfig:
    worker_connections: int = 512
    use: str | None = None  # `epoll`, `poll`, `select`; mailgate runs on uvloop whatever the value
    multi_accept: bool = False
    accept_mutex: bool = False


@dataclass(frozen=True)
class MainConfig:
    """Main-context directives (ngx_core_module and friends)."""

    worker_processes: int = 1  # `auto` is resolved to the number of CPUs at load
    worker_processes_auto: bool = False
    worker_rlimit_nofile: int | None = None
    worker_shutdown_timeout: float | None = None
    pid: Path | None = None  # None: `pid off` is not nginx syntax, so this is always set after load
    error_logs: tuple[ErrorLogTarget, ...] = ()
    daemon: bool = True
    master_process: bool = True
    user: str | None = None
    group: str | None = None
    env: tuple[tuple[str, str | None], ...] = ()  # (`NAME`, value or None to keep the inherited one)
    events: EventsConfig = field(default_factory=EventsConfig)


# ---------------------------------------------------------------------------------------------------------
# mail {} and server {}


@dataclass(frozen=True)
class KeepAlive:
    """`so_keepalive=on|off|[idle]:[intvl]:[cnt]` (times in seconds; None keeps the OS default)."""

    enabled: bool
    idle: float | None = None
    interval: float | None = None
    count: int | None = None


@dataclass(frozen=True)
class Listen:
    """One listening address of a server (a hostname or port range yields several)."""

    family: socket.AddressFamily
    host: str  # "0.0.0.0", "::", "127.0.0.1", "::1", or the UNIX socket path
    port: int  # 0 for UNIX sockets
    text: str  # as nginx prints it: "0.0.0.0:993", "127.0.0.1:993", "[::1]:993", "unix:/path"
    wildcard: bool
    ssl: bool = False
    proxy_protocol: bool = False
    bind: bool = False
    backlog: int = 511
    rcvbuf: int | None = None
    sndbuf: int | None = None
    ipv6only: bool = True
    multipath: bool = False
    so_keepalive: KeepAlive | None = None
    source: SourceRef | None = None


@dataclass(frozen=True)
class Resolver:
    """`resolver address ... [valid=time] [ipv4=on|off] [ipv6=on|off] [status_zone=zone]`."""

    servers: tuple[tuple[str, int], ...]  # (ip, port), port default 53
    valid: float | None = None
    ipv4: bool = True
    ipv6: bool = True


@dataclass(frozen=True)
class SessionLogTarget:
    """`session_log FILE|stderr|syslog:... [text|json]` (a mailgate extension): one line per ended session."""

    path: Path | None  # None for stderr and syslog
    stderr: bool = False
    syslog: SyslogTarget | None = None
    json: bool = False
    source: SourceRef | None = None


@dataclass(frozen=True)
class CoreSettings:
    """ngx_mail_core_module per server."""

    server_name: str
    timeout: float = 60.0
    resolver: Resolver | None = None
    resolver_timeout: float = 30.0
    max_errors: int = 5
    error_logs: tuple[ErrorLogTarget, ...] = ()  # empty: inherit the main-level logs
    session_log: SessionLogTarget | None = None  # None: `session_log off` (the default)


@dataclass(frozen=True)
class AuthHttpUrl:
    """Where the auth request goes. `host_header` is the Host header value nginx sends."""

    family: socket.AddressFamily
    host: str  # resolved IP literal, or the UNIX socket path
    port: int  # 0 for UNIX sockets
    uri: str
    host_header: str
    text: str  # the address as nginx logs it: "127.0.0.1:9000" or "unix:/path"


@dataclass(frozen=True)
class AuthHttpSettings:
    url: AuthHttpUrl
    timeout: float = 60.0
    headers: tuple[tuple[str, str], ...] = ()
    pass_client_cert: bool = False


@dataclass(frozen=True)
class ProxySettings:
    enabled: bool = False  # `proxy on|off`: accepted and without effect, as in nginx
    buffer: int = 4096
    pass_error_message: bool = False
    proxy_protocol: ProxyProtocolOut = ProxyProtocolOut.OFF
    smtp_auth: bool = False
    timeout: float = 86400.0
    xclient: bool = True


@dataclass(frozen=True)
class RealIpSettings:
    trusted: tuple[IPNetwork, ...] = ()
    trust_unix: bool = False

    @property
    def enabled(self) -> bool:
        return bool(self.trusted) or self.trust_unix


@dataclass(frozen=True)
class ImapSettings:
    auth: frozenset[ImapAuth] = frozenset({ImapAuth.PLAIN})
    capabilities: tuple[str, ...] = ("IMAP4", "IMAP4rev1", "UIDPLUS")
    client_buffer: int = 4096


@dataclass(frozen=True)
class Pop3Settings:
    auth: frozenset[Pop3Auth] = frozenset({Pop3Auth.PLAIN})
    capabilities: tuple[str, ...] = ("TOP", "USER", "UIDL")
    client_buffer: int = 128  # fixed in nginx; not configurable


@dataclass(frozen=True)
class SmtpSettings:
    auth: frozenset[SmtpAuth] = frozenset({SmtpAuth.PLAIN, SmtpAuth.LOGIN})
    capabilities: tuple[str, ...] = ()
    client_buffer: int = 4096
    greeting_delay: float = 0.0


@dataclass(frozen=True)
class PemSource:
    """A certificate or key: a file, inline `data:` PEM, or (keys only) `engine:name:id` / `store:uri`.

    `data` holds secret material for keys: it is never printed (repr is masked) nor written to disk.
    """

    kind: str  # "file" | "data" | "engine" | "store"
    path: Path | None = None
    data: bytes = field(default=b"", repr=False)
    engine: str | None = None
    key_id: str | None = None
    uri: str | None = None
    text: str = ""  # the value as written (with `data:` contents elided), for messages

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class CertificatePair:
    certificate: PemSource
    key: PemSource


@dataclass(frozen=True)
class SharedCacheZone:
    name: str
    size: int  # bytes


@dataclass(frozen=True)
class SessionCache:
    """`ssl_session_cache off | none | [builtin[:size]] [shared:name:size]`."""

    mode: str = "none"  # "off" | "none" | "cache" (builtin and/or shared)
    builtin: bool = False
    builtin_size: int = 20480
    shared: SharedCacheZone | None = None


SSL_PROTOCOL_NAMES = ("SSLv2", "SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")


@dataclass(frozen=True)
class SslSettings:
    starttls: StartTls = StartTls.OFF
    certificates: tuple[CertificatePair, ...] = ()
    passwords: tuple[bytes, ...] | None = field(default=None, repr=False)  # from ssl_password_file
    password_file: Path | None = None
    certificate_compression: bool = False
    dhparam: Path | None = None
    ecdh_curve: str = "auto"
    # The user's document wins over newer nginx: TLSv1 and TLSv1.1 stay in the default.
    protocols: frozenset[str] = frozenset({"TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"})
    ciphers: str = "HIGH:!aNULL:!MD5"
    prefer_server_ciphers: bool = False
    session_cache: SessionCache = field(default_factory=SessionCache)
    session_tickets: bool = True
    session_ticket_keys: tuple[Path, ...] = ()
    session_timeout: float = 300.0
    verify_client: VerifyClient = VerifyClient.OFF
    verify_depth: int = 1
    client_certificate: Path | None = None
    trusted_certificate: Path | None = None
    crl: Path | None = None
    conf_commands: tuple[tuple[str, str], ...] = ()
    # Where the TLS need came from, for `no "ssl_certificate" is defined for ... in FILE:LINE`.
    starttls_source: SourceRef | None = None


@dataclass(frozen=True)
class ServerConfig:
    """One `server {}` of the mail block, with every value merged from `mail {}` and defaults."""

    source: SourceRef
    protocol: Protocol
    listens: tuple[Listen, ...]
    core: CoreSettings
    auth_http: AuthHttpSettings
    proxy: ProxySettings
    realip: RealIpSettings
    ssl: SslSettings
    imap: ImapSettings
    pop3: Pop3Settings
    smtp: SmtpSettings

    @property
    def needs_tls(self) -> bool:
        """True when the server has a `listen ... ssl` or STARTTLS enabled (nginx builds an SSL_CTX)."""
        return any(listen.ssl for listen in self.listens) or self.ssl.starttls is not StartTls.OFF

    @property
    def name(self) -> str:
        return self.core.server_name


@dataclass(frozen=True)
class MailConfig:
    servers: tuple[ServerConfig, ...]
    source: SourceRef


@dataclass(frozen=True)
class Config:
    """A whole configuration file, loaded."""

    conf_file: Path
    prefix: Path
    main: MainConfig
    mail: MailConfig | None
    files: tuple[Path, ...] = ()  # every file read, main first, in order (for -T)
