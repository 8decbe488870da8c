"""Main-context and `events {}` directives (nginx's ngx_core_module, ngx_errlog_module, ngx_events_module).

Decisions for nginx main-context directives mailgate cannot honour — each is refused with
`"NAME" directive is not supported by mailgate` rather than accepted and ignored:

* `lock_file`, `accept_mutex_delay`: mailgate has no accept mutex lock file or delay to tune.
* `timer_resolution`, `worker_priority`, `worker_cpu_affinity`, `worker_rlimit_core`, `working_directory`,
  `debug_points`, `google_perftools_profiles`: process tuning the Python workers do not implement.
* `thread_pool`: mailgate has no thread pools (nginx uses them for http file I/O only).
* `ssl_engine`: TLS runs on the default OpenSSL provider; engine-backed keys remain possible per key
  (`ssl_certificate_key engine:...`).
* `pcre_jit`: mailgate has no regular expressions.
* `debug_connection`, `worker_aio_requests`, `epoll_events` (events): tuning of nginx's own event loop.

Accepted with effect: `daemon`, `master_process`, `pid`, `worker_processes` (`auto` is the number of
online CPUs), `worker_rlimit_nofile`, `worker_shutdown_timeout`, `user`, `env`, `error_log` (files,
`stderr`, `syslog:`; several allowed; `memory:` is refused), `events { worker_connections; use;
multi_accept; accept_mutex; }`. `load_module` is accepted and records nothing (mailgate has its mail
modules built in; existing files load nginx's mail module this way). `http {}` and `stream {}` are
read (their `include`s too, so that `-T` shows what nginx shows) but not interpreted: a `notice` says so.

nginx quirks kept: `user NAME` without a group uses the group named NAME; syslog `severity=` has no
effect on `error_log` (nginx sends each message with its own level); `error_log ""` means stderr.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
from dataclasses import dataclass, field
from pathlib import Path

from mailgate.config.address import UrlError, parse_url
from mailgate.config.directives import (
    Context,
    Directive,
    DirectiveCall,
    Level,
    LoadContext,
    Shape,
    flag_slot,
    msec_slot,
    num_slot,
    str_slot,
    unsupported,
)
from mailgate.config.errors import ConfigError
from mailgate.config.model import ErrorLogTarget, EventsConfig, LogLevel, MainConfig, SyslogTarget
from mailgate.config.values import atoi, shown

DEFAULT_PID = "logs/mailgate.pid"
DEFAULT_ERROR_LOG = "logs/error.log"

_DEBUG_LEVELS = frozenset(
    {"debug_core", "debug_alloc", "debug_mutex", "debug_event", "debug_http", "debug_mail", "debug_stream"}
)
_FACILITIES = [
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "intern",
    "lpr",
    "news",
    "uucp",
    "clock",
    "authpriv",
    "ftp",
    "ntp",
    "audit",
    "alert",
    "cron",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
]
_SEVERITIES = ("emerg", "alert", "crit", "error", "warn", "notice", "info", "debug")
_EVENT_METHODS = ("epoll", "poll", "select")


@dataclass
class CoreConf:
    """The main level (ngx_core_conf_t and the blocks it owns)."""

    daemon: bool | None = None
    master_process: bool | None = None
    pid: str | None = None
    worker_processes: int | None = None
    worker_processes_auto: bool = False
    worker_rlimit_nofile: int | None = None
    worker_shutdown_timeout: float | None = None
    user: str | None = None
    group: str | None = None
    env: list[tuple[str, str | None]] = field(default_factory=list)
    error_logs: list[ErrorLogTarget] = field(default_factory=list)
    events: Level | None = None
    mail: Level | None = None
    skipped_blocks: set[str] = field(default_factory=set)


@dataclass
class EventsConf:
    worker_connections: int | None = None
    use: str | None = None
    multi_accept: bool | None = None
    accept_mutex: bool | None = None


# ---------------------------------------------------------------------------------------------------------
# error_log (shared with the mail modules' error_log)


def parse_error_log(call: DirectiveCall) -> ErrorLogTarget:
    """ngx_log_set_log: `error_log FILE|stderr|syslog:... [LEVEL ...]`."""
    target = call.args[0]
    path: Path | None = None
    stderr = False
    syslog: SyslogTarget | None = None
    if target in ("stderr", ""):
        stderr = True
    elif target.startswith("memory:"):
        raise call.error('the "memory:" error log is not supported by mailgate')
    elif target.startswith("syslog:"):
        syslog = _parse_syslog(call, target[len("syslog:") :])
    else:
        path = Path(call.loader.prefix_path(target))
    return ErrorLogTarget(
        path=path, level=_parse_levels(call, call.args[1:]), stderr=stderr, syslog=syslog, source=call.source
    )


def _parse_levels(call: DirectiveCall, words: list[str]) -> LogLevel:
    level: LogLevel | None = None
    debug_only = False
    for word in words:
        if word in _SEVERITIES:
            if level is not None or debug_only:
                raise call.error(f'duplicate log level "{shown(word)}"')
            level = LogLevel(word)
        elif word in _DEBUG_LEVELS and level is None:
            debug_only = True
        else:
            raise call.error(f'invalid log level "{shown(word)}"')
    if debug_only:
        return LogLevel.DEBUG
    return level or LogLevel.ERROR


def _parse_syslog(call: DirectiveCall, parameters: str) -> SyslogTarget:
    """ngx_syslog_process_conf: `server=ADDR[:PORT]|unix:PATH,facility=,severity=,tag=,nohostname`."""
    server: tuple[str, int, str | None] | None = None
    facility: str | None = None
    severity_seen = False
    tag: str | None = None
    nohostname = False
    for parameter in parameters.split(","):
        if parameter.startswith("server="):
            if server is not None:
                raise call.error('duplicate syslog "server"')
            server = _syslog_server(call, parameter[len("server=") :])
        elif parameter.startswith("facility="):
            if facility is not None:
                raise call.error('duplicate syslog "facility"')
            facility = parameter[len("facility=") :]
            if facility not in _FACILITIES:
                raise call.error(f'unknown syslog facility "{shown(facility)}"')
        elif parameter.startswith("severity="):
            if severity_seen:
                raise call.error('duplicate syslog "severity"')
            severity_seen = True
            if parameter[len("severity=") :] not in _SEVERITIES:
                raise call.error(f'unknown syslog severity "{shown(parameter[len("severity=") :])}"')
        elif parameter.startswith("tag="):
            if tag is not None:
                raise call.error('duplicate syslog "tag"')
            tag = parameter[len("tag=") :]
            if len(tag.encode("utf-8", "surrogateescape")) > 32:
                raise call.error("syslog tag length exceeds 32")
            if not all(char.isascii() and (char.isalnum() or char == "_") for char in tag):
                raise call.error('syslog "tag" only allows alphanumeric characters and underscore')
        elif parameter == "nohostname":
            nohostname = True
        else:
            raise call.error(f'unknown syslog parameter "{shown(parameter)}"')
    if server is None:
        raise call.error("no syslog server specified")
    host, port, unix_path = server
    return SyslogTarget(
        server_host=host,
        server_port=port,
        server_path=unix_path,
        facility=facility or "local7",
        tag=tag if tag is not None else "nginx",
        nohostname=nohostname,
    )


def _syslog_server(call: DirectiveCall, url: str) -> tuple[str, int, str | None]:
    try:
        parsed = parse_url(url, call.loader.lookup, default_port=514)
    except UrlError as error:
        raise call.error(f'{error} in syslog server "{shown(url)}"') from None
    address = parsed.addresses[0]
    if address.family == socket.AF_UNIX:
        return "", 0, address.host
    return address.host, address.port, None


# ---------------------------------------------------------------------------------------------------------
# Main-context handlers


def _worker_processes(call: DirectiveCall, conf: CoreConf) -> None:
    if conf.worker_processes is not None:
        raise call.invalid("is duplicate")
    if call.args[0] == "auto":
        conf.worker_processes = os.sysconf("SC_NPROCESSORS_ONLN")
        conf.worker_processes_auto = True
        return
    value = atoi(call.args[0])
    if value is None:
        raise call.invalid("invalid value")
    conf.worker_processes = value


def _user(call: DirectiveCall, conf: CoreConf) -> None:
    if conf.user is not None:
        raise call.invalid("is duplicate")
    if os.geteuid() != 0:
        call.warn(
            'the "user" directive makes sense only if the master process runs with super-user privileges, '
            "ignored"
        )
        return
    user = call.args[0]
    group = call.args[1] if len(call.args) == 2 else user
    try:
        pwd.getpwnam(user)
    except (KeyError, ValueError, UnicodeError):
        raise call.error(f'getpwnam("{shown(user)}") failed') from None
    try:
        grp.getgrnam(group)
    except (KeyError, ValueError, UnicodeError):
        raise call.error(f'getgrnam("{shown(group)}") failed') from None
    conf.user = user
    conf.group = group


def _env(call: DirectiveCall, conf: CoreConf) -> None:
    name, equals, value = call.args[0].partition("=")
    conf.env.append((name, value if equals else None))


def _error_log(call: DirectiveCall, conf: CoreConf) -> None:
    conf.error_logs.append(parse_error_log(call))


def _load_module(call: DirectiveCall, conf: CoreConf) -> None:
    if call.loader.blocks_seen:
        raise call.invalid("is specified too late")


def _events(call: DirectiveCall, level: Level) -> None:
    conf = level.conf(CoreConf)
    if conf.events is not None:
        raise call.invalid("is duplicate")
    conf.events = Level(Context.EVENTS, call.source, [EventsConf], level)
    call.loader.parse_block(Context.EVENTS, conf.events)


def _skipped_block(call: DirectiveCall, level: Level) -> None:
    conf = level.conf(CoreConf)
    if call.name in conf.skipped_blocks:
        raise call.invalid("is duplicate")
    conf.skipped_blocks.add(call.name)
    call.warn(f'the "{call.name}" block is skipped: mailgate serves mail only', level="notice")
    call.loader.skip_block()


def _worker_connections(call: DirectiveCall, conf: EventsConf) -> None:
    if conf.worker_connections is not None:
        raise call.invalid("is duplicate")
    value = atoi(call.args[0])
    if value is None:
        raise call.error(f'invalid number "{shown(call.args[0])}"')
    conf.worker_connections = value


def _use(call: DirectiveCall, conf: EventsConf) -> None:
    if conf.use is not None:
        raise call.invalid("is duplicate")
    if call.args[0] not in _EVENT_METHODS:
        raise call.error(f'invalid event type "{shown(call.args[0])}"')
    conf.use = call.args[0]


_MAIN = Context.MAIN
_EVENTS = Context.EVENTS

DIRECTIVES = (
    Directive("daemon", _MAIN, Shape.FLAG, flag_slot("daemon"), CoreConf),
    Directive("master_process", _MAIN, Shape.FLAG, flag_slot("master_process"), CoreConf),
    Directive("pid", _MAIN, Shape.TAKE1, str_slot("pid"), CoreConf),
    Directive("worker_processes", _MAIN, Shape.TAKE1, _worker_processes, CoreConf),
    Directive("worker_rlimit_nofile", _MAIN, Shape.TAKE1, num_slot("worker_rlimit_nofile"), CoreConf),
    Directive("worker_shutdown_timeout", _MAIN, Shape.TAKE1, msec_slot("worker_shutdown_timeout"), CoreConf),
    Directive("user", _MAIN, Shape.TAKE12, _user, CoreConf),
    Directive("env", _MAIN, Shape.TAKE1, _env, CoreConf),
    Directive("error_log", _MAIN, Shape.ONE_MORE, _error_log, CoreConf),
    Directive("load_module", _MAIN, Shape.TAKE1, _load_module, CoreConf),
    Directive("events", _MAIN, Shape.BLOCK | Shape.NOARGS, _events),
    Directive("http", _MAIN, Shape.BLOCK | Shape.NOARGS, _skipped_block),
    Directive("stream", _MAIN, Shape.BLOCK | Shape.NOARGS, _skipped_block),
    Directive("lock_file", _MAIN, Shape.TAKE1, unsupported),
    Directive("timer_resolution", _MAIN, Shape.TAKE1, unsupported),
    Directive("debug_points", _MAIN, Shape.TAKE1, unsupported),
    Directive("worker_priority", _MAIN, Shape.TAKE1, unsupported),
    Directive("worker_cpu_affinity", _MAIN, Shape.ONE_MORE, unsupported),
    Directive("worker_rlimit_core", _MAIN, Shape.TAKE1, unsupported),
    Directive("working_directory", _MAIN, Shape.TAKE1, unsupported),
    Directive("thread_pool", _MAIN, Shape.TAKE23, unsupported),
    Directive("ssl_engine", _MAIN, Shape.TAKE1, unsupported),
    Directive("pcre_jit", _MAIN, Shape.FLAG, unsupported),
    Directive("google_perftools_profiles", _MAIN, Shape.TAKE1, unsupported),
    Directive("worker_connections", _EVENTS, Shape.TAKE1, _worker_connections, EventsConf),
    Directive("use", _EVENTS, Shape.TAKE1, _use, EventsConf),
    Directive("multi_accept", _EVENTS, Shape.FLAG, flag_slot("multi_accept"), EventsConf),
    Directive("accept_mutex", _EVENTS, Shape.FLAG, flag_slot("accept_mutex"), EventsConf),
    Directive("accept_mutex_delay", _EVENTS, Shape.TAKE1, unsupported),
    Directive("debug_connection", _EVENTS, Shape.TAKE1, unsupported),
    Directive("worker_aio_requests", _EVENTS, Shape.TAKE1, unsupported),
    Directive("epoll_events", _EVENTS, Shape.TAKE1, unsupported),
)


def build_main(main: Level, loader: LoadContext) -> MainConfig:
    """The main context after parsing (ngx_core_module_init_conf, ngx_event_init_conf)."""
    conf = main.conf(CoreConf)
    if conf.events is None:
        raise ConfigError('no "events" section in configuration', syntax_ok=True)
    events = conf.events.conf(EventsConf)
    error_logs = conf.error_logs or [ErrorLogTarget(path=Path(loader.prefix_path(DEFAULT_ERROR_LOG)))]
    return MainConfig(
        worker_processes=conf.worker_processes if conf.worker_processes is not None else 1,
        worker_processes_auto=conf.worker_processes_auto,
        worker_rlimit_nofile=conf.worker_rlimit_nofile,
        worker_shutdown_timeout=conf.worker_shutdown_timeout,
        pid=Path(loader.prefix_path(conf.pid if conf.pid is not None else DEFAULT_PID)),
        error_logs=tuple(error_logs),
        daemon=conf.daemon if conf.daemon is not None else True,
        master_process=conf.master_process if conf.master_process is not None else True,
        user=conf.user,
        group=conf.group,
        env=tuple(conf.env),
        events=EventsConfig(
            worker_connections=events.worker_connections if events.worker_connections is not None else 512,
            use=events.use,
            multi_accept=bool(events.multi_accept),
            accept_mutex=bool(events.accept_mutex),
        ),
    )
