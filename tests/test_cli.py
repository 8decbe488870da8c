"""The nginx command line: flags, messages, exit codes, -t/-T against nginx's, -s signals, bad input."""

from __future__ import annotations

import os
import platform
import signal
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mailgate
from mailgate import cli
from mailgate.config import DEFAULT_PREFIX
from mailgate.config.model import Config, ErrorLogTarget, LogLevel
from tests.support.nginx import normalize_nginx_line, require_nginx, run_nginx

MAIL = """events {}

mail {
    auth_http 127.0.0.1:9000/auth;
    server {
        listen 127.0.0.1:143;
    }
}
"""


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str], str]:
    """main(argv) in this process: exit code, stderr lines, stdout."""
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.err.splitlines(), captured.out


@pytest.fixture
def prefix(tmp_path: Path) -> Path:
    (tmp_path / "prefix" / "logs").mkdir(parents=True)
    return tmp_path / "prefix"


@pytest.fixture
def conf_file(tmp_path: Path) -> Path:
    path = tmp_path / "conf" / "mail.conf"
    path.parent.mkdir()
    path.write_text(MAIL)
    return path


def as_nginx_would_say(lines: list[str]) -> list[str]:
    return [line.replace("mailgate", "nginx", 1) for line in lines]


# ---------------------------------------------------------------------------------------------------------
# Parsing the flags


def test_combined_flags_set_each_option() -> None:
    options = cli.parse_options(["-tq", "-T"])
    assert options.test_config and options.quiet and options.dump_config
    assert not options.show_version


@pytest.mark.parametrize(
    ("argv", "attribute", "value"),
    [
        (["-cfile.conf"], "conf_file", "file.conf"),
        (["-c", "file.conf"], "conf_file", "file.conf"),
        (["-tc", "file.conf"], "conf_file", "file.conf"),
        (["-p/opt/mg"], "prefix", "/opt/mg"),
        (["-p", "/opt/mg"], "prefix", "/opt/mg"),
        (["-g", "pid x.pid;"], "directives", "pid x.pid;"),
        (["-gpid x.pid;"], "directives", "pid x.pid;"),
        (["-e", "logs/startup.log"], "error_log", "logs/startup.log"),
        (["-e", "stderr"], "error_log", ""),
        (["-sreload"], "signal", "reload"),
        (["-s", "quit"], "signal", "quit"),
    ],
)
def test_valued_flag_takes_the_rest_of_its_word_or_the_next_word(
    argv: list[str], attribute: str, value: str
) -> None:
    assert getattr(cli.parse_options(argv), attribute) == value


def test_a_lone_dash_is_accepted_as_nginx_accepts_it() -> None:
    assert cli.parse_options(["-"]) == cli.Options()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-x"], 'mailgate: invalid option: "x"'),
        (["-tx"], 'mailgate: invalid option: "x"'),
        (["foo"], 'mailgate: invalid option: "foo"'),
        (["-s", "foo"], 'mailgate: invalid option: "-s foo"'),
        (["-c"], 'mailgate: option "-c" requires file name'),
        (["-p"], 'mailgate: option "-p" requires directory name'),
        (["-e"], 'mailgate: option "-e" requires file name'),
        (["-g"], 'mailgate: option "-g" requires parameter'),
        (["-s"], 'mailgate: option "-s" requires parameter'),
        (["-t", "-c"], 'mailgate: option "-c" requires file name'),
    ],
)
def test_bad_command_line_prints_nginx_message_and_exits_1(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_main(argv, capsys) == (1, [message], "")


@pytest.mark.nginx
@pytest.mark.parametrize("argv", [["-x"], ["foo"], ["-s", "foo"], ["-c"], ["-p"], ["-e"], ["-g"], ["-s"]])
def test_bad_command_line_messages_are_nginx_messages(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    nginx = subprocess.run([str(require_nginx()), *argv], capture_output=True, text=True, check=False)
    code, lines, _ = run_main(argv, capsys)
    assert (code, as_nginx_would_say(lines)) == (nginx.returncode, nginx.stderr.splitlines())


# ---------------------------------------------------------------------------------------------------------
# -v, -V, -h


def test_v_prints_the_version_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main(["-v"], capsys) == (0, [f"mailgate version: mailgate/{mailgate.__version__}"], "")


def test_capital_v_adds_python_openssl_sni_and_the_built_in_paths(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, out = run_main(["-V"], capsys)
    prefix = str(DEFAULT_PREFIX).rstrip("/") + "/"
    assert (code, out) == (0, "")
    assert lines == [
        f"mailgate version: mailgate/{mailgate.__version__}",
        f"built by {platform.python_implementation()} {platform.python_version()}",
        f"built with OpenSSL {ssl.OPENSSL_VERSION.removeprefix('OpenSSL ')}",
        "TLS SNI support enabled",
        f"configure arguments: --prefix={prefix} --conf-path=conf/mailgate.conf",
    ]


@pytest.mark.parametrize("flag", ["-h", "-?"])
def test_help_prints_version_and_usage(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, out = run_main([flag], capsys)
    assert (code, out) == (0, "")
    assert lines[0] == f"mailgate version: mailgate/{mailgate.__version__}"
    assert lines[1] == "Usage: mailgate [-?hvVtTq] [-s signal] [-p prefix]"
    assert lines[2] == "                [-e filename] [-c filename] [-g directives]"
    assert "  -c filename   : set configuration file (default: conf/mailgate.conf)" in lines


@pytest.mark.nginx
def test_help_lists_nginx_options_with_nginx_descriptions(capsys: pytest.CaptureFixture[str]) -> None:
    nginx_lines = subprocess.run(
        [str(require_nginx()), "-h"], check=False, capture_output=True, text=True
    ).stderr.splitlines()
    _, lines, _ = run_main(["-h"], capsys)
    # Option lines are the same up to their defaults, which name each program's own paths.
    assert [line.split("(default")[0] for line in lines[3:]] == [
        line.split("(default")[0] for line in nginx_lines[3:]
    ]


def test_version_with_t_goes_on_to_test(
    conf_file: Path, prefix: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines, _ = run_main(["-vt", "-p", str(prefix), "-c", str(conf_file)], capsys)
    assert code == 0
    assert lines == [
        f"mailgate version: mailgate/{mailgate.__version__}",
        f"mailgate: the configuration file {conf_file} syntax is ok",
        f"mailgate: configuration file {conf_file} test is successful",
    ]


# ---------------------------------------------------------------------------------------------------------
# -t, -T, -q


def test_t_success_prints_nginx_two_lines(
    conf_file: Path, prefix: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_main(["-t", "-p", str(prefix), "-c", str(conf_file)], capsys) == (
        0,
        [
            f"mailgate: the configuration file {conf_file} syntax is ok",
            f"mailgate: configuration file {conf_file} test is successful",
        ],
        "",
    )


def test_t_failure_prints_the_emerg_line_and_test_failed(
    conf_file: Path, prefix: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf_file.write_text("events {}\nbogus on;\n")
    assert run_main(["-t", "-p", str(prefix), "-c", str(conf_file)], capsys) == (
        1,
        [
            f'mailgate: [emerg] unknown directive "bogus" in {conf_file}:2',
            f"mailgate: configuration file {conf_file} test failed",
        ],
        "",
    )


def test_q_silences_success_but_not_errors(
    conf_file: Path, prefix: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_main(["-tq", "-p", str(prefix), "-c", str(conf_file)], capsys) == (0, [], "")
    conf_file.write_text("events {}\nbogus on;\n")
    code, lines, _ = run_main(["-tq", "-p", str(prefix), "-c", str(conf_file)], capsys)
    assert code == 1
    assert lines == [
        f'mailgate: [emerg] unknown directive "bogus" in {conf_file}:2',
        f"mailgate: configuration file {conf_file} test failed",
    ]


def test_q_keeps_warnings(conf_file: Path, prefix: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf_file.write_text(MAIL.replace("auth_http", "set_real_ip_from 10.0.0.1/8;\n    auth_http"))
    code, lines, _ = run_main(["-tq", "-p", str(prefix), "-c", str(conf_file)], capsys)
    assert code == 0
    assert lines == [f"mailgate: [warn] low address bits of 10.0.0.1/8 are meaningless in {conf_file}:4"]


def _with_includes(directory: Path) -> Path:
    """A configuration including a glob (two files) and a nested include, as nginx -T dumps them."""
    (directory / "inc").mkdir()
    (directory / "inc" / "mail-a-auth.conf").write_text("auth_http 127.0.0.1:9000/auth;\n")
    (directory / "inc" / "mail-b-server.conf").write_text("server {\n    listen 127.0.0.1:143;\n}\n")
    (directory / "inc" / "main-extra.conf").write_text("include inc/nested.conf;\n")
    (directory / "inc" / "nested.conf").write_text("# nested\nworker_processes 1;\n")
    conf_file = directory / "main.conf"
    conf_file.write_text(
        "include inc/main-extra.conf;\nevents {}\n\nmail {\n    include inc/mail-*.conf;\n}\n"
    )
    return conf_file


@pytest.mark.nginx
@pytest.mark.parametrize("flags", [["-T"], ["-Tq"], ["-t"]])
def test_t_and_capital_t_print_what_nginx_prints(
    flags: list[str], tmp_path: Path, prefix: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf_file = _with_includes(tmp_path)
    nginx = run_nginx(flags, conf_file, prefix)
    assert nginx.ok
    code, lines, out = run_main([*flags, "-p", str(prefix), "-c", str(conf_file)], capsys)
    assert (code, as_nginx_would_say(lines), out) == (nginx.returncode, nginx.lines, nginx.stdout)


def test_capital_t_dumps_every_included_file_once_in_reading_order(
    tmp_path: Path, prefix: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf_file = _with_includes(tmp_path)
    _, _, out = run_main(["-Tq", "-p", str(prefix), "-c", str(conf_file)], capsys)
    headers = [line for line in out.splitlines() if line.startswith("# configuration file ")]
    assert headers == [
        f"# configuration file {tmp_path}/main.conf:",
        f"# configuration file {tmp_path}/inc/main-extra.conf:",
        f"# configuration file {tmp_path}/inc/nested.conf:",
        f"# configuration file {tmp_path}/inc/mail-a-auth.conf:",
        f"# configuration file {tmp_path}/inc/mail-b-server.conf:",
    ]


def test_capital_t_dumps_nothing_when_the_test_fails(
    conf_file: Path, prefix: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf_file.write_text("events {}\nbogus on;\n")
    code, _, out = run_main(["-T", "-p", str(prefix), "-c", str(conf_file)], capsys)
    assert (code, out) == (1, "")


def test_t_creates_an_empty_pid_file_and_keeps_an_existing_one(
    conf_file: Path, prefix: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pid_file = prefix / "logs" / "test.pid"
    assert (
        run_main(["-tq", "-p", str(prefix), "-c", str(conf_file), "-g", "pid logs/test.pid;"], capsys)[0] == 0
    )
    assert pid_file.read_bytes() == b""
    pid_file.write_text("1234\n")
    assert (
        run_main(["-tq", "-p", str(prefix), "-c", str(conf_file), "-g", "pid logs/test.pid;"], capsys)[0] == 0
    )
    assert pid_file.read_text() == "1234\n"


def test_t_fails_when_an_error_log_cannot_be_opened(
    conf_file: Path, prefix: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines, _ = run_main(
        ["-t", "-p", str(prefix), "-c", str(conf_file), "-g", "error_log missing-dir/error.log;"], capsys
    )
    assert code == 1
    assert lines == [
        f"mailgate: the configuration file {conf_file} syntax is ok",
        f'mailgate: [emerg] open() "{prefix}/missing-dir/error.log" failed (2: No such file or directory)',
        f"mailgate: configuration file {conf_file} test failed",
    ]


# ---------------------------------------------------------------------------------------------------------
# -p, -c, -e: where files are looked for


def test_relative_c_is_read_under_the_prefix(prefix: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (prefix / "relative.conf").write_text(MAIL)
    code, lines, _ = run_main(["-t", "-p", str(prefix), "-c", "relative.conf"], capsys)
    assert code == 0
    assert lines[-1] == f"mailgate: configuration file {prefix}/relative.conf test is successful"


@pytest.mark.parametrize("conf_name", ["mail.conf", "missing.conf"])
def test_a_relative_prefix_stays_relative_as_in_nginx(
    conf_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "relative" / "logs").mkdir(parents=True)
    (tmp_path / "relative" / "mail.conf").write_text(MAIL)
    code, lines, _ = run_main(["-t", "-p", "relative/", "-c", conf_name], capsys)
    if conf_name == "mail.conf":
        assert (code, lines[-1]) == (0, "mailgate: configuration file relative/mail.conf test is successful")
    else:
        assert (code, lines) == (
            1,
            [
                'mailgate: [emerg] open() "relative/missing.conf" failed (2: No such file or directory)',
                "mailgate: configuration file relative/missing.conf test failed",
            ],
        )


@pytest.mark.nginx
def test_a_relative_prefix_names_files_as_nginx_names_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "relative" / "logs").mkdir(parents=True)
    (tmp_path / "relative" / "mail.conf").write_text(MAIL.replace("events {}", "events {}\nbogus;"))
    nginx = run_nginx(["-t"], Path("mail.conf"), Path("relative"))
    code, lines, _ = run_main(["-t", "-p", "relative", "-c", "mail.conf"], capsys)
    assert (code, as_nginx_would_say(lines)) == (nginx.returncode, nginx.lines)


def test_without_c_the_prefix_conf_file_is_read(prefix: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (prefix / "conf").mkdir()
    (prefix / "conf" / "mailgate.conf").write_text("events {}\nbogus on;\n")
    code, lines, _ = run_main(["-t", "-p", str(prefix)], capsys)
    assert code == 1
    assert lines[0] == f'mailgate: [emerg] unknown directive "bogus" in {prefix}/conf/mailgate.conf:2'


def test_without_c_or_prefix_conf_file_the_embedded_configuration_is_tested(
    prefix: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines, out = run_main(["-T", "-p", str(prefix)], capsys)
    assert code == 0, lines
    assert lines[-1].endswith("test is successful")
    assert out.startswith("# configuration file ")
    assert "mail {" in out


def test_e_file_gets_the_messages_in_error_log_format(
    conf_file: Path, prefix: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf_file.write_text("events {}\nbogus on;\n")
    code, lines, _ = run_main(
        ["-t", "-p", str(prefix), "-c", str(conf_file), "-e", "logs/startup.log"], capsys
    )
    assert code == 1
    assert lines[0] == f'mailgate: [emerg] unknown directive "bogus" in {conf_file}:2'
    logged = (prefix / "logs" / "startup.log").read_text()
    assert f"[emerg] {os.getpid()}#" in logged
    assert logged.rstrip().endswith(f'unknown directive "bogus" in {conf_file}:2')


def test_e_file_that_cannot_be_opened_is_an_alert_and_stderr_takes_over(
    conf_file: Path, prefix: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines, _ = run_main(
        ["-t", "-p", str(prefix), "-c", str(conf_file), "-e", "missing-dir/e.log"], capsys
    )
    assert code == 1
    assert lines[0] == (
        f'mailgate: [alert] could not open error log file: open() "{prefix}/missing-dir/e.log" failed'
        " (2: No such file or directory)"
    )
    # As nginx: the -e file is also the configuration's default error log, which -t opens.
    assert (
        lines[2]
        == f'mailgate: [emerg] open() "{prefix}/missing-dir/e.log" failed (2: No such file or directory)'
    )


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[Config]:
    """The configurations main() hands to the server, which is replaced by a recorder."""
    configurations: list[Config] = []

    def run(config: Config, log: Callable[[LogLevel, str], None], reload_config: object = None) -> int:
        configurations.append(config)
        return 0

    monkeypatch.setattr("mailgate.server.run.run", run)
    return configurations


def test_without_t_or_s_the_loaded_configuration_is_served(
    conf_file: Path, prefix: Path, capsys: pytest.CaptureFixture[str], served: list[Config]
) -> None:
    assert run_main(["-p", str(prefix), "-c", str(conf_file), "-g", "worker_processes 3;"], capsys) == (
        0,
        [],
        "",
    )
    assert [config.conf_file for config in served] == [conf_file]
    assert served[0].main.worker_processes == 3


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["-e", "logs/startup.log"], ErrorLogTarget(path=Path("logs/startup.log"))),
        (["-e", "stderr"], ErrorLogTarget(path=None, stderr=True)),
        ([], ErrorLogTarget(path=Path("logs/error.log"))),
    ],
)
def test_e_is_the_error_log_of_a_configuration_without_one(
    argv: list[str],
    expected: ErrorLogTarget,
    *,
    conf_file: Path,
    prefix: Path,
    capsys: pytest.CaptureFixture[str],
    served: list[Config],
) -> None:
    assert run_main([*argv, "-p", str(prefix), "-c", str(conf_file)], capsys)[0] == 0
    if expected.path is not None:
        expected = ErrorLogTarget(path=prefix / expected.path)
    assert served[0].main.error_logs == (expected,)


def test_e_leaves_a_written_error_log_alone(
    conf_file: Path, prefix: Path, capsys: pytest.CaptureFixture[str], served: list[Config]
) -> None:
    argv = [
        "-e",
        "logs/startup.log",
        "-p",
        str(prefix),
        "-c",
        str(conf_file),
        "-g",
        "error_log logs/own.log;",
    ]
    assert run_main(argv, capsys)[0] == 0
    assert [target.path for target in served[0].main.error_logs] == [prefix / "logs" / "own.log"]


def test_without_t_or_s_a_bad_configuration_is_not_served(
    conf_file: Path, prefix: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_file.write_text("events {}\nbogus on;\n")
    monkeypatch.setattr("mailgate.server.run.run", lambda *arguments: pytest.fail("served"))
    code, lines, _ = run_main(["-p", str(prefix), "-c", str(conf_file)], capsys)
    assert (code, lines) == (1, [f'mailgate: [emerg] unknown directive "bogus" in {conf_file}:2'])


# ---------------------------------------------------------------------------------------------------------
# -s


SIGNAL_WAITER = """
import signal, sys
wanted = {signal.SIGTERM, signal.SIGQUIT, signal.SIGUSR1, signal.SIGHUP}
signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
print("ready", flush=True)
print(signal.sigwait(wanted), flush=True)
"""


@pytest.fixture
def signal_waiter() -> Iterator[subprocess.Popen[str]]:
    """A process that prints the number of the first signal -s can send it (once it printed `ready`)."""
    waiter = subprocess.Popen([sys.executable, "-c", SIGNAL_WAITER], stdout=subprocess.PIPE, text=True)
    try:
        assert waiter.stdout is not None
        assert waiter.stdout.readline() == "ready\n"
        yield waiter
    finally:
        waiter.kill()
        waiter.wait()
        if waiter.stdout is not None:
            waiter.stdout.close()


@pytest.mark.parametrize(
    ("name", "number"),
    [
        ("stop", signal.SIGTERM),
        ("quit", signal.SIGQUIT),
        ("reopen", signal.SIGUSR1),
        ("reload", signal.SIGHUP),
    ],
)
def test_s_sends_the_named_signal_to_the_pid_file_process(
    name: str,
    number: signal.Signals,
    *,
    signal_waiter: subprocess.Popen[str],
    conf_file: Path,
    prefix: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (prefix / "logs" / "master.pid").write_text(f"{signal_waiter.pid}\n")
    argv = ["-s", name, "-p", str(prefix), "-c", str(conf_file), "-g", "pid logs/master.pid;"]
    assert run_main(argv, capsys) == (0, [], "")
    signal_waiter.wait(timeout=60)  # the waiter exits once it has the signal
    assert signal_waiter.stdout is not None
    assert signal_waiter.stdout.read() == f"{int(number)}\n"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, '[error] open() "{pid}" failed (2: No such file or directory)'),
        ("", '[error] invalid PID number "" in "{pid}"'),
        ("abc\n", '[error] invalid PID number "abc" in "{pid}"'),
        ("12x\r\n", '[error] invalid PID number "12x" in "{pid}"'),
        ("99999999\n", "[alert] kill(99999999, 1) failed (3: No such process)"),
    ],
)
def test_s_reports_a_bad_pid_file_as_nginx(
    content: str | None, expected: str, conf_file: Path, prefix: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pid_file = prefix / "logs" / "master.pid"
    if content is not None:
        pid_file.write_text(content)
    code, lines, _ = run_main(
        ["-s", "reload", "-p", str(prefix), "-c", str(conf_file), "-g", "pid logs/master.pid;"], capsys
    )
    assert (code, lines) == (1, ["mailgate: " + expected.replace("{pid}", str(pid_file))])


def test_s_on_a_directory_pid_file_is_a_critical_read_error(
    conf_file: Path, prefix: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (prefix / "logs" / "master.pid").mkdir()
    code, lines, _ = run_main(
        ["-s", "stop", "-p", str(prefix), "-c", str(conf_file), "-g", "pid logs/master.pid;"], capsys
    )
    assert (code, lines) == (
        1,
        [f'mailgate: [crit] pread() "{prefix}/logs/master.pid" failed (21: Is a directory)'],
    )


@pytest.mark.nginx
@pytest.mark.parametrize("content", [None, "", "abc\n", "99999999\n"])
def test_s_errors_are_nginx_errors(
    content: str | None, conf_file: Path, prefix: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pid_file = prefix / "logs" / "master.pid"
    if content is not None:
        pid_file.write_text(content)
    nginx = run_nginx(["-s", "reload"], conf_file, prefix, directives="pid logs/master.pid;")
    # Debian's nginx logs to stderr, so its notice reaches the terminal; a stock build's stays in the log.
    nginx_lines = [line for line in nginx.lines if not line.startswith("nginx: [notice]")]
    code, lines, _ = run_main(
        ["-s", "reload", "-p", str(prefix), "-c", str(conf_file), "-g", "pid logs/master.pid;"], capsys
    )
    assert (code, as_nginx_would_say(lines)) == (nginx.returncode, nginx_lines)


def test_s_with_a_bad_configuration_reports_it_and_sends_nothing(
    conf_file: Path, prefix: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf_file.write_text("events {}\nbogus on;\n")
    code, lines, _ = run_main(["-s", "stop", "-p", str(prefix), "-c", str(conf_file)], capsys)
    assert (code, lines) == (1, [f'mailgate: [emerg] unknown directive "bogus" in {conf_file}:2'])


# ---------------------------------------------------------------------------------------------------------
# Bad input: one clear line, exit code 1, never a traceback (run as the real console script)


def run_console_script(conf_file: Path, prefix: Path) -> subprocess.CompletedProcess[str]:
    mailgate_script = Path(sys.executable).parent / "mailgate"
    return subprocess.run(
        [str(mailgate_script), "-t", "-p", str(prefix), "-c", str(conf_file)],
        capture_output=True,
        text=True,
        errors="backslashreplace",
        timeout=120,
        check=False,
    )


def bad_input(kind: str, directory: Path) -> Path:
    conf_file = directory / f"{kind}.conf"
    if kind == "binary-garbage":
        conf_file.write_bytes(bytes(range(256)) * 16)
    elif kind == "unterminated-quote":
        conf_file.write_text('events {}\nworker_processes "1;\n')
    elif kind == "unterminated-block":
        conf_file.write_text("events {}\nmail {\n    auth_http 127.0.0.1:9000;\n")
    elif kind == "include-loop":
        (directory / "loop-b.conf").write_text(f"include {conf_file};\n")
        conf_file.write_text(f"events {{}}\ninclude {directory}/loop-b.conf;\n")
    elif kind == "directory":
        conf_file.mkdir()
    elif kind == "dangling-symlink":
        conf_file.symlink_to(directory / "nowhere.conf")
    elif kind == "megabyte-line":
        conf_file.write_text("events {}\nworker_processes " + "a" * 1_000_000 + ";\n")
    return conf_file


BAD_INPUTS = [
    "binary-garbage",
    "unterminated-quote",
    "unterminated-block",
    "include-loop",
    "directory",
    "dangling-symlink",
    "megabyte-line",
]


@pytest.mark.parametrize("kind", BAD_INPUTS)
def test_bad_input_gives_one_clear_line_and_exit_code_1(kind: str, tmp_path: Path, prefix: Path) -> None:
    conf_file = bad_input(kind, tmp_path)
    completed = run_console_script(conf_file, prefix)
    assert "Traceback" not in completed.stderr
    assert completed.returncode == 1
    lines = completed.stderr.splitlines()
    assert len(lines) == 2, completed.stderr
    assert lines[0].startswith(("mailgate: [emerg] ", "mailgate: [crit] ")), lines[0]
    assert str(conf_file) in lines[0] or str(tmp_path) in lines[0]
    assert lines[1] == f"mailgate: configuration file {conf_file} test failed"


# nginx segfaults on an include loop (it recurses until the stack is gone), so there is nothing to compare.
@pytest.mark.nginx
@pytest.mark.parametrize("kind", [kind for kind in BAD_INPUTS if kind != "include-loop"])
def test_bad_input_message_is_nginx_message(kind: str, tmp_path: Path, prefix: Path) -> None:
    conf_file = bad_input(kind, tmp_path)
    nginx = run_nginx(["-t"], conf_file, prefix)
    completed = run_console_script(conf_file, prefix)
    nginx_lines = nginx.lines
    lines = as_nginx_would_say(completed.stderr.splitlines())
    if kind == "binary-garbage":
        # The directive name is raw bytes; compare the message's shape and its location.
        assert lines[0].rsplit(" in ", 1)[1] == nginx_lines[0].rsplit(" in ", 1)[1]
        assert lines[0].startswith('nginx: [emerg] unknown directive "')
        assert lines[1:] == nginx_lines[1:]
    else:
        assert lines == nginx_lines
    assert completed.returncode == nginx.returncode


# Pieces of nginx syntax, so random texts reach the parser's corners rather than stop at the first byte.
SYNTAX_PIECES = [
    "events",
    "mail",
    "server",
    "listen",
    "protocol",
    "auth_http",
    "starttls",
    "include",
    "imap",
    "143",
    "127.0.0.1:9000",
    "{",
    "}",
    ";",
    '"',
    "'",
    "\\",
    "#",
    "$",
    "${",
    "\n",
    " ",
    "\t",
    "\r",
    "x",
    "\x00",
    "\xff",
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(st.sampled_from(SYNTAX_PIECES), max_size=40))
def test_any_text_gets_a_verdict_and_never_a_traceback(
    pieces: list[str], conf_file: Path, prefix: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf_file.write_bytes("".join(pieces).encode("utf-8", "surrogateescape"))
    code, lines, _ = run_main(["-t", "-p", str(prefix), "-c", str(conf_file)], capsys)
    verdict = "test is successful" if code == 0 else "test failed"
    assert code in (0, 1)
    assert lines[-1] == f"mailgate: configuration file {conf_file} {verdict}"


def test_normalize_nginx_line_turns_log_format_into_stderr_format() -> None:
    assert normalize_nginx_line("2026/01/02 03:04:05 [emerg] 12#12: unknown directive") == (
        "nginx: [emerg] unknown directive"
    )
    assert (
        normalize_nginx_line("nginx: configuration file x test failed")
        == "nginx: configuration file x test failed"
    )
