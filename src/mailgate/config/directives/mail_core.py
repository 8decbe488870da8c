"""ngx_mail_core_module: `server`, `listen`, `protocol`, `server_name`, `timeout`, `resolver`, ...

`listen` follows nginx 1.31: every parameter of the spec (`ssl`, `proxy_protocol`, `bind`, `backlog=`,
`rcvbuf=`, `sndbuf=`, `ipv6only=`, `multipath`, `so_keepalive=`), one socket per address of a host name
and per port of a range, the protocol guessed from the first port while none is set, and one
address:port per mail block (`duplicate "ADDR" address and port pair`). Unknown parameters give
nginx's text `the invalid "X" parameter` (the spec's `invalid parameter "X"` paraphrases it).
`backlog`, `rcvbuf` and `sndbuf` above 2**31 - 1 are taken as 2**31 - 1 (nginx truncates them to a C int).

`session_log off | FILE | stderr | syslog:... [text | json]` is a mailgate extension (docs/session-log.md):
one line per session when it ends. A server without its own inherits the mail block's; the default is off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mailgate.config.address import SocketAddress, UrlError, parse_url
from mailgate.config.directives import (
    Context,
    Directive,
    DirectiveCall,
    Level,
    MergeContext,
    Shape,
    inherit,
    msec_slot,
    num_slot,
    str_slot,
)
from mailgate.config.directives.core import _parse_syslog, parse_error_log
from mailgate.config.directives.ssl import SslConf
from mailgate.config.errors import ConfigError
from mailgate.config.model import (
    CoreSettings,
    ErrorLogTarget,
    KeepAlive,
    Listen,
    MailConfig,
    Protocol,
    Resolver,
    SessionLogTarget,
    SourceRef,
)
from mailgate.config.values import MAX_C_INT, atoi, parse_size, parse_time, shown

PROTOCOL_PORTS = {
    Protocol.POP3: (110, 995),
    Protocol.IMAP: (143, 993),
    Protocol.SMTP: (25, 465, 587),
}


@dataclass
class MailMainConf:
    """What belongs to the whole mail block (ngx_mail_core_main_conf_t)."""

    servers: list[Level] = field(default_factory=list)
    addresses: list[SocketAddress] = field(default_factory=list)
    end_source: SourceRef | None = None
    config: MailConfig | None = None  # the merged block, once it is closed


@dataclass
class MailCoreConf:
    protocol: Protocol | None = None
    listens: list[Listen] = field(default_factory=list)
    has_listen: bool = False
    server_name: str | None = None
    timeout: float | None = None
    resolver_set: bool = False
    resolver: Resolver | None = None
    resolver_timeout: float | None = None
    max_errors: int | None = None
    error_logs: list[ErrorLogTarget] = field(default_factory=list)
    session_log_set: bool = False
    session_log: SessionLogTarget | None = None


def _server(call: DirectiveCall, mail: Level) -> None:
    conf_types = [conf_type for conf_type in mail.conf_types if conf_type is not MailMainConf]
    server = Level(Context.SERVER, call.source, conf_types, mail)
    mail.conf(MailMainConf).servers.append(server)
    call.loader.parse_block(Context.SERVER, server)
    if not server.conf(MailCoreConf).has_listen:
        raise ConfigError('no "listen" is defined for server', server.source)


# ---------------------------------------------------------------------------------------------------------
# listen


@dataclass
class _ListenOptions:
    ssl: bool = False
    proxy_protocol: bool = False
    bind: bool = False
    backlog: int = 511
    rcvbuf: int | None = None
    sndbuf: int | None = None
    ipv6only: bool = True
    multipath: bool = False
    so_keepalive: KeepAlive | None = None


def _listen(call: DirectiveCall, level: Level) -> None:
    conf = level.conf(MailCoreConf)
    conf.has_listen = True
    try:
        url = parse_url(call.args[0], call.loader.lookup, listen=True)
    except UrlError as error:
        raise call.error(f'{error} in "{shown(call.args[0])}" of the "listen" directive') from None

    if conf.protocol is None:
        for protocol, ports in PROTOCOL_PORTS.items():
            if url.port in ports:
                conf.protocol = protocol

    options = _ListenOptions()
    for parameter in call.args[1:]:
        _apply_listen_parameter(call, parameter, options)
    if options.ssl:
        ssl_conf = level.conf(SslConf)
        ssl_conf.listen_ssl = True
        ssl_conf.tls_source = call.source

    mail_conf = level.parent.conf(MailMainConf) if level.parent is not None else MailMainConf()
    seen: list[SocketAddress] = []
    for address in url.addresses:
        if address in seen:
            continue
        seen.append(address)
        if address in mail_conf.addresses:
            raise call.error(f'duplicate "{shown(address.name)}" address and port pair')
        mail_conf.addresses.append(address)
        conf.listens.append(
            Listen(
                family=address.family,
                host=address.host,
                port=address.port,
                text=address.name,
                wildcard=address.wildcard,
                source=call.source,
                **vars(options),
            )
        )


def _apply_listen_parameter(call: DirectiveCall, parameter: str, options: _ListenOptions) -> None:
    if parameter == "bind":
        options.bind = True
    elif parameter == "ssl":
        options.ssl = True
    elif parameter == "proxy_protocol":
        options.proxy_protocol = True
    elif parameter == "multipath":
        options.multipath = True
        options.bind = True
    elif parameter.startswith("backlog="):
        backlog = atoi(parameter[len("backlog=") :])
        if not backlog:
            raise call.error(f'invalid backlog "{shown(parameter)}"')
        options.backlog = min(backlog, MAX_C_INT)
        options.bind = True
    elif parameter.startswith(("rcvbuf=", "sndbuf=")):
        kind = parameter[:6]
        size = parse_size(parameter[7:])
        if size is None:
            raise call.error(f'invalid {kind} "{shown(parameter)}"')
        setattr(options, kind, min(size, MAX_C_INT))
        options.bind = True
    elif parameter.startswith("ipv6only=o"):
        if parameter[10:] == "n":
            options.ipv6only = True
        elif parameter[10:] == "ff":
            options.ipv6only = False
        else:
            raise call.error(f'invalid ipv6only flags "{shown(parameter[9:])}"')
        options.bind = True
    elif parameter.startswith("so_keepalive="):
        options.so_keepalive = _so_keepalive(call, parameter[len("so_keepalive=") :])
        options.bind = True
    else:
        raise call.error(f'the invalid "{shown(parameter)}" parameter')


def _so_keepalive(call: DirectiveCall, value: str) -> KeepAlive:
    """`on`, `off`, or `[idle]:[intvl]:[cnt]` (times; empty fields keep the system's values)."""
    if value == "on":
        return KeepAlive(enabled=True)
    if value == "off":
        return KeepAlive(enabled=False)
    idle_text, _, rest = value.partition(":")
    interval_text, _, count_text = rest.partition(":")
    idle = parse_time(idle_text, seconds=True) if idle_text else 0
    interval = parse_time(interval_text, seconds=True) if interval_text else 0
    count = atoi(count_text) if count_text else 0
    if idle is None or interval is None or count is None or not (idle or interval or count):
        raise call.error(f'invalid so_keepalive value: "{shown(value)}"')
    return KeepAlive(
        enabled=True,
        idle=float(idle) if idle else None,
        interval=float(interval) if interval else None,
        count=count or None,
    )


# ---------------------------------------------------------------------------------------------------------
# Other directives


def _protocol(call: DirectiveCall, conf: MailCoreConf) -> None:
    try:
        conf.protocol = Protocol(call.args[0])
    except ValueError:
        raise call.error(f'unknown protocol "{shown(call.args[0])}"') from None


def _error_log(call: DirectiveCall, conf: MailCoreConf) -> None:
    conf.error_logs.append(parse_error_log(call))


_SESSION_LOG_FORMATS = {"text": False, "json": True}


def _session_log(call: DirectiveCall, conf: MailCoreConf) -> None:
    """`session_log off | FILE | stderr | syslog:... [text | json]` (mailgate's own directive)."""
    if conf.session_log_set:
        raise call.invalid("is duplicate")
    conf.session_log_set = True
    destination = call.args[0]
    if destination == "off":
        if len(call.args) > 1:
            raise call.invalid("takes no format when off")
        return
    json = False
    if len(call.args) > 1:
        if call.args[1] not in _SESSION_LOG_FORMATS:
            raise call.error(f'unknown session log format "{shown(call.args[1])}"')
        json = _SESSION_LOG_FORMATS[call.args[1]]
    if destination == "stderr":
        conf.session_log = SessionLogTarget(path=None, stderr=True, json=json, source=call.source)
    elif destination.startswith("syslog:"):
        syslog = _parse_syslog(call, destination[len("syslog:") :])
        conf.session_log = SessionLogTarget(path=None, syslog=syslog, json=json, source=call.source)
    elif not destination:
        raise call.invalid("invalid value")
    else:
        path = Path(call.loader.prefix_path(destination))
        conf.session_log = SessionLogTarget(path=path, json=json, source=call.source)


def _resolver(call: DirectiveCall, conf: MailCoreConf) -> None:
    if conf.resolver_set:
        raise call.invalid("is duplicate")
    conf.resolver_set = True
    if call.args[0] == "off":
        conf.resolver = None
        return
    conf.resolver = parse_resolver(call)


def parse_resolver(call: DirectiveCall) -> Resolver:
    """ngx_resolver_create: `address ... [valid=time] [ipv4=on|off] [ipv6=on|off] [status_zone=zone]`.

    `status_zone` is accepted as nginx accepts it; there is no status API for it to feed.
    """
    servers: list[tuple[str, int]] = []
    valid: float | None = None
    families = {"ipv4": True, "ipv6": True}
    for argument in call.args:
        if argument.startswith("valid="):
            seconds = parse_time(argument[len("valid=") :], seconds=True)
            if seconds is None:
                raise call.error(f"invalid parameter: {shown(argument)}")
            valid = float(seconds)
            continue
        if argument.startswith(("ipv4=", "ipv6=")):
            flag = {"on": True, "off": False}.get(argument[5:])
            if flag is None:
                raise call.error(f"invalid parameter: {shown(argument)}")
            families[argument[:4]] = flag
            continue
        if argument.startswith("status_zone="):
            continue
        try:
            url = parse_url(argument, call.loader.lookup, default_port=53)
        except UrlError as error:
            raise call.error(f'{error} in resolver "{shown(argument)}"') from None
        servers.extend((address.host, address.port) for address in url.addresses)
    if not (families["ipv4"] or families["ipv6"]):
        raise call.error('"ipv4" and "ipv6" cannot both be "off"')
    if not servers:
        raise call.error("no name servers defined")
    return Resolver(servers=tuple(servers), valid=valid, ipv4=families["ipv4"], ipv6=families["ipv6"])


_M_S = Context.MAIL_OR_SERVER

DIRECTIVES = (
    Directive("server", Context.MAIL, Shape.BLOCK | Shape.NOARGS, _server),
    Directive("listen", Context.SERVER, Shape.ONE_MORE, _listen),
    Directive("protocol", Context.SERVER, Shape.TAKE1, _protocol, MailCoreConf),
    Directive("timeout", _M_S, Shape.TAKE1, msec_slot("timeout"), MailCoreConf),
    Directive("server_name", _M_S, Shape.TAKE1, str_slot("server_name"), MailCoreConf),
    Directive("error_log", _M_S, Shape.ONE_MORE, _error_log, MailCoreConf),
    Directive("resolver", _M_S, Shape.ONE_MORE, _resolver, MailCoreConf),
    Directive("resolver_timeout", _M_S, Shape.TAKE1, msec_slot("resolver_timeout"), MailCoreConf),
    Directive("max_errors", _M_S, Shape.TAKE1, num_slot("max_errors"), MailCoreConf),
    Directive("session_log", _M_S, Shape.TAKE12, _session_log, MailCoreConf),
)


def merge(context: MergeContext, mail: MailCoreConf, server: MailCoreConf) -> CoreSettings:
    """ngx_mail_core_merge_srv_conf: defaults, machine host name, and the protocol check."""
    if server.protocol is None:
        raise ConfigError("unknown mail protocol for server", context.server_source)
    server_name = inherit(server.server_name, mail.server_name, "") or context.loader.hostname
    return CoreSettings(
        server_name=server_name,
        timeout=inherit(server.timeout, mail.timeout, 60.0),
        resolver=server.resolver if server.resolver_set else mail.resolver,
        resolver_timeout=inherit(server.resolver_timeout, mail.resolver_timeout, 30.0),
        max_errors=inherit(server.max_errors, mail.max_errors, 5),
        error_logs=tuple(server.error_logs or mail.error_logs),
        session_log=server.session_log if server.session_log_set else mail.session_log,
    )
