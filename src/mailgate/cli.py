"""The nginx command line: `mailgate [-?hvVtTq] [-s signal] [-p prefix] [-e file] [-c file] [-g directives]`.

Flags, messages and exit codes are nginx's, with `mailgate` where nginx says `nginx`. Relative `-c` and
`-e` paths resolve against the prefix, as nginx resolves them.
"""

from __future__ import annotations

import os
import platform
import signal
import ssl
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import mailgate
from mailgate.config import (
    DEFAULT_CONF_NAME,
    DEFAULT_PREFIX,
    LoadedConfig,
    default_conf_path,
    default_conf_text,
    load,
    load_text,
)
from mailgate.config.errors import ConfigError, ConfigWarning
from mailgate.config.model import Config, ErrorLogTarget, LogLevel
from mailgate.embedded import prepare_embedded_prefix
from mailgate.log import ErrorLog

PROGRAM = "mailgate"

SIGNALS = {
    "stop": signal.SIGTERM,
    "quit": signal.SIGQUIT,
    "reopen": signal.SIGUSR1,
    "reload": signal.SIGHUP,
}

# nginx reads at most NGX_INT64_LEN + 2 bytes of a pid file.
_PID_FILE_READ_SIZE = 22
# pid_t is 32 bits: a larger number cannot name a process.
_MAX_PID = 2**31 - 1


class UsageError(Exception):
    """A command line nginx would refuse; `str()` is nginx's message without the program name."""


@dataclass
class Options:
    """The parsed command line, as nginx's ngx_get_options leaves it."""

    show_help: bool = False
    show_version: bool = False
    show_configure: bool = False
    test_config: bool = False
    dump_config: bool = False
    quiet: bool = False
    prefix: str | None = None
    conf_file: str | None = None
    error_log: str | None = None  # "" means stderr, as `-e stderr`
    directives: str | None = None
    signal: str | None = None


# The flags that take a value, with nginx's message when the value is missing.
_VALUE_FLAGS = {
    "p": 'option "-p" requires directory name',
    "c": 'option "-c" requires file name',
    "e": 'option "-e" requires file name',
    "g": 'option "-g" requires parameter',
    "s": 'option "-s" requires parameter',
}


def parse_options(argv: Sequence[str]) -> Options:
    """Parse arguments exactly as nginx does: combined flags (`-tq`), `-cFILE` and `-c FILE`.

    Raises UsageError with nginx's wording (`invalid option: "x"`, `option "-c" requires file name`).
    """
    options = Options()
    index = 0
    while index < len(argv):
        argument = argv[index]
        if not argument.startswith("-"):
            raise UsageError(f'invalid option: "{argument}"')
        position = 1
        while position < len(argument):
            flag = argument[position]
            position += 1
            if flag in ("?", "h"):
                options.show_version = options.show_help = True
            elif flag == "v":
                options.show_version = True
            elif flag == "V":
                options.show_version = options.show_configure = True
            elif flag == "t":
                options.test_config = True
            elif flag == "T":
                options.test_config = options.dump_config = True
            elif flag == "q":
                options.quiet = True
            elif flag in _VALUE_FLAGS:
                rest = argument[position:]
                if rest:
                    value = rest
                elif index + 1 < len(argv):
                    index += 1
                    value = argv[index]
                else:
                    raise UsageError(_VALUE_FLAGS[flag])
                _set_valued_option(options, flag, value)
                break
            else:
                raise UsageError(f'invalid option: "{flag}"')
        index += 1
    return options


def _set_valued_option(options: Options, flag: str, value: str) -> None:
    if flag == "p":
        options.prefix = value
    elif flag == "c":
        options.conf_file = value
    elif flag == "e":
        options.error_log = "" if value == "stderr" else value
    elif flag == "g":
        options.directives = value
    else:
        if value not in SIGNALS:
            raise UsageError(f'invalid option: "-s {value}"')
        options.signal = value


def _os_error(call: str, path: object, error: OSError) -> str:
    """nginx's text for a failed call on a file: `open() "X" failed (2: No such file or directory)`."""
    return _os_error_text(f'{call} "{path}"', error)


def _os_error_text(what: str, error: OSError) -> str:
    number = error.errno or 0
    return f"{what} failed ({number}: {os.strerror(number)})"


def _write_stderr(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()


class StartupLog:
    """Where messages go before the configuration's own logs are open: stderr and nginx's `-e` file.

    stderr shows `mailgate: [level] message` for warnings and worse; the `-e` file, when given, gets
    every message down to its level in the error_log format.
    """

    def __init__(self, file_log: ErrorLog | None = None) -> None:
        self._file_log = file_log

    @classmethod
    def open(cls, startup_log: ErrorLogTarget | None, level: LogLevel) -> StartupLog:
        """The log for `-e` (`startup_log`; None or stderr: stderr only), down to `level`."""
        error_log = startup_log.path if startup_log is not None else None
        if error_log is None:
            return cls()
        file_log = ErrorLog([ErrorLogTarget(path=error_log, level=level)])
        try:
            file_log.open()
        except OSError as error:
            startup = cls()
            startup.log(
                LogLevel.ALERT, "could not open error log file: " + _os_error("open()", error_log, error)
            )
            return startup
        return cls(file_log)

    def log(self, level: LogLevel, message: str) -> None:
        if self._file_log is not None:
            self._file_log.log(level, message)
        if level.severity <= LogLevel.WARN.severity:
            _write_stderr(f"{PROGRAM}: [{level.value}] {message}\n")

    def close(self) -> None:
        if self._file_log is not None:
            self._file_log.close()


def _show_version_info(options: Options) -> None:
    """`-v`, `-V` and `-h` output, on stderr as nginx prints it."""
    _write_stderr(f"{PROGRAM} version: {PROGRAM}/{mailgate.__version__}\n")
    if options.show_help:
        _write_stderr(_usage())
    if options.show_configure:
        openssl_version = ssl.OPENSSL_VERSION.removeprefix("OpenSSL ")
        sni = "enabled" if ssl.HAS_SNI else "disabled"
        _write_stderr(
            f"built by {platform.python_implementation()} {platform.python_version()}\n"
            f"built with OpenSSL {openssl_version}\n"
            f"TLS SNI support {sni}\n"
            f"configure arguments: --prefix={_default_prefix()} --conf-path={DEFAULT_CONF_NAME}\n"
        )


def _usage() -> str:
    indent = " " * len(f"Usage: {PROGRAM} ")
    return (
        f"Usage: {PROGRAM} [-?hvVtTq] [-s signal] [-p prefix]\n"
        f"{indent}[-e filename] [-c filename] [-g directives]\n"
        "\n"
        "Options:\n"
        "  -?,-h         : this help\n"
        "  -v            : show version and exit\n"
        "  -V            : show version and configure options then exit\n"
        "  -t            : test configuration and exit\n"
        "  -T            : test configuration, dump it and exit\n"
        "  -q            : suppress non-error messages during configuration testing\n"
        "  -s signal     : send signal to a master process: stop, quit, reopen, reload\n"
        f"  -p prefix     : set prefix path (default: {_default_prefix()})\n"
        "  -e filename   : set error log file (default: stderr)\n"
        f"  -c filename   : set configuration file (default: {DEFAULT_CONF_NAME})\n"
        "  -g directives : set global directives out of configuration file\n"
        "\n"
    )


def _default_prefix() -> str:
    """The default prefix as nginx shows it, with its trailing slash."""
    prefix = str(DEFAULT_PREFIX)
    return prefix if prefix.endswith("/") else prefix + "/"


def _under_prefix(prefix: Path, name: str) -> Path:
    """A relative name joined to the prefix; an absolute one as it is (nginx's ngx_conf_full_name)."""
    return Path(name) if os.path.isabs(name) else prefix / name


@dataclass(frozen=True)
class Invocation:
    """The paths a command line resolves to."""

    prefix: Path
    conf_name: Path  # as `-c` (or the default) names it; the loader puts a relative name under the prefix
    conf_file: Path  # the same, joined to the prefix: what messages name
    embedded: bool  # no -c and no conf/mailgate.conf under the prefix: the built-in configuration
    error_log: ErrorLogTarget | None  # `-e`: a file or stderr; None without `-e`


def resolve_paths(options: Options) -> Invocation:
    prefix = Path(options.prefix) if options.prefix is not None else Path(DEFAULT_PREFIX)
    if options.conf_file is not None:
        conf_name = Path(options.conf_file)
        conf_file = _under_prefix(prefix, options.conf_file)
        embedded = False
    else:
        conf_name = Path(DEFAULT_CONF_NAME)
        conf_file = default_conf_path(prefix)
        embedded = not conf_file.exists()
    error_log: ErrorLogTarget | None = None
    if options.error_log == "":
        error_log = ErrorLogTarget(path=None, stderr=True)
    elif options.error_log is not None:
        error_log = ErrorLogTarget(path=_under_prefix(prefix, options.error_log))
    return Invocation(prefix, conf_name, conf_file, embedded, error_log)


def _load(invocation: Invocation, options: Options, log: StartupLog | ErrorLog) -> LoadedConfig:
    """Read, merge and check the configuration, logging its warnings. Raises ConfigError."""
    if invocation.embedded:
        for notice in prepare_embedded_prefix(invocation.prefix):
            log.log(LogLevel.NOTICE, notice)
        name = str(invocation.conf_name)
        loaded = load_text(default_conf_text(), name, invocation.prefix, options.directives)
    else:
        loaded = load(invocation.conf_name, invocation.prefix, options.directives)
    _log_warnings(log, loaded.warnings)
    _check_tls(loaded.config)
    if invocation.error_log is None:
        return loaded
    return replace(loaded, config=_with_default_error_log(loaded.config, invocation.error_log))


def _with_default_error_log(config: Config, error_log: ErrorLogTarget) -> Config:
    """`-e` replaces the built-in default error log (nginx's NGX_ERROR_LOG_PATH), not a written one."""
    if any(target.source is not None for target in config.main.error_logs):
        return config
    return replace(config, main=replace(config.main, error_logs=(error_log,)))


def _log_warnings(log: StartupLog | ErrorLog, warnings: Iterable[ConfigWarning]) -> None:
    for warning in warnings:
        log.log(LogLevel(warning.level), str(warning))


def _log_config_error(log: StartupLog, error: ConfigError) -> None:
    """The warnings nginx printed before it stopped, then the error itself."""
    _log_warnings(log, error.warnings)
    log.log(LogLevel(error.level), str(error))


def _check_tls(config: Config) -> None:
    """Build the TLS context of every server that needs one, as nginx does while reading the file.

    This is where unreadable certificates, wrong key passwords and bad cipher strings are found.
    """
    if config.mail is None or not any(server.needs_tls for server in config.mail.servers):
        return
    # Imported here: OpenSSL's bindings cost a noticeable part of every start without TLS.
    from mailgate.server.generation import build_tls

    build_tls(config)


def _error_log_files(config: Config) -> list[Path]:
    """Every error_log file of the configuration, main level first, each once."""
    targets = list(config.main.error_logs)
    if config.mail is not None:
        for server in config.mail.servers:
            targets.extend(server.core.error_logs)
    files: list[Path] = []
    for target in targets:
        is_file = not target.stderr and target.syslog is None
        if is_file and target.path is not None and target.path not in files:
            files.append(target.path)
    return files


def _open_files(config: Config) -> None:
    """What `nginx -t` does after the syntax check: create the pid file (kept empty) and the error logs.

    Raises ConfigError naming the file that cannot be opened.
    """
    if config.main.pid is not None:
        _touch(config.main.pid, os.O_RDWR)
    for path in _error_log_files(config):
        _touch(path, os.O_WRONLY | os.O_APPEND)


def _touch(path: Path, mode: int) -> None:
    try:
        descriptor = os.open(path, mode | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as error:
        raise ConfigError(_os_error("open()", path, error)) from None
    os.close(descriptor)


def _test_configuration(invocation: Invocation, options: Options, log: StartupLog) -> int:
    """`-t` / `-T`: nginx's two test lines (unless `-q`), then for `-T` the dump on stdout."""
    name = invocation.conf_file
    syntax_ok = f"{PROGRAM}: the configuration file {name} syntax is ok\n"
    try:
        loaded = _load(invocation, options, log)
    except ConfigError as error:
        _log_warnings(log, error.warnings)
        # Errors nginx finds once the whole file is read come after its "syntax is ok".
        if error.syntax_ok and not options.quiet:
            _write_stderr(syntax_ok)
        return _test_failed(name, error, log)
    if not options.quiet:
        _write_stderr(syntax_ok)
    try:
        _open_files(loaded.config)
    except ConfigError as error:
        return _test_failed(name, error, log)
    if not options.quiet:
        _write_stderr(f"{PROGRAM}: configuration file {name} test is successful\n")
    if options.dump_config:
        sys.stdout.flush()
        # The files' own bytes, even where they are not UTF-8.
        sys.stdout.buffer.write(loaded.dump().encode("utf-8", "surrogateescape"))
        sys.stdout.buffer.flush()
    return 0


def _test_failed(name: Path, error: ConfigError, log: StartupLog) -> int:
    log.log(LogLevel(error.level), str(error))
    _write_stderr(f"{PROGRAM}: configuration file {name} test failed\n")
    return 1


def _signal_process(config: Config, name: str, log: StartupLog) -> int:
    """`-s NAME`: send the signal to the process whose id the configuration's pid file holds."""
    log.log(LogLevel.NOTICE, "signal process started")
    pid_file = config.main.pid
    if pid_file is None:
        log.log(LogLevel.ERROR, 'no "pid" file is configured')
        return 1
    try:
        descriptor = os.open(pid_file, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as error:
        log.log(LogLevel.ERROR, _os_error("open()", pid_file, error))
        return 1
    try:
        content = os.read(descriptor, _PID_FILE_READ_SIZE)
    except OSError as error:
        log.log(LogLevel.CRIT, _os_error("pread()", pid_file, error))
        return 1
    finally:
        os.close(descriptor)
    text = content.rstrip(b"\r\n")
    if not (text.isascii() and text.isdigit() and int(text) <= _MAX_PID):
        shown = text.decode("utf-8", errors="backslashreplace")
        log.log(LogLevel.ERROR, f'invalid PID number "{shown}" in "{pid_file}"')
        return 1
    pid = int(text)
    signal_number = SIGNALS[name]
    try:
        os.kill(pid, signal_number)
    except OSError as error:
        log.log(LogLevel.ALERT, _os_error_text(f"kill({pid}, {int(signal_number)})", error))
        return 1
    return 0


def _run_server(loaded: LoadedConfig, invocation: Invocation, options: Options, log: StartupLog) -> int:
    """Start serving the configuration (in the foreground with `daemon off`)."""
    # Imported here: -t, -s, -v and -h start faster without the server and its event loop.
    from mailgate.server.run import run

    def reload_config(error_log: ErrorLog) -> Config:
        """`HUP`: the configuration read as at startup (`-c`, `-p`, `-g`, `-e`), warnings to the error log."""
        return _load(invocation, options, error_log).config

    return run(loaded.config, log.log, reload_config)


def main(argv: list[str] | None = None) -> int:
    """The `mailgate` console script. Returns the process exit code (0 or 1, as nginx)."""
    arguments = sys.argv[1:] if argv is None else argv
    try:
        options = parse_options(arguments)
    except UsageError as error:
        _write_stderr(f"{PROGRAM}: {error}\n")
        return 1

    if options.show_version:
        _show_version_info(options)
        if not options.test_config:
            return 0

    invocation = resolve_paths(options)
    # nginx logs at info while testing, at notice otherwise.
    level = LogLevel.INFO if options.test_config else LogLevel.NOTICE
    log = StartupLog.open(invocation.error_log, level)
    try:
        if options.test_config:
            return _test_configuration(invocation, options, log)
        try:
            loaded = _load(invocation, options, log)
        except ConfigError as error:
            _log_config_error(log, error)
            return 1
        if options.signal is not None:
            return _signal_process(loaded.config, options.signal, log)
        return _run_server(loaded, invocation, options, log)
    finally:
        log.close()


if __name__ == "__main__":
    sys.exit(main())
