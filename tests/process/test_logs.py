"""error_log lines as nginx writes them, to every kind of target; the session log's two formats."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
from pathlib import Path

from mailgate.config.model import ErrorLogTarget, LogLevel, SessionLogTarget, SyslogTarget
from mailgate.log import ErrorLog, LogContext, SessionLog, SessionLogEntry, route_python_logger

_LINE = re.compile(
    r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[(?P<level>[a-z]+)\] (?P<pid>\d+)#(?P<tid>\d+): (?P<rest>.*)$"
)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_a_line_has_nginx_layout_with_connection_action_and_session_context(tmp_path: Path) -> None:
    log = ErrorLog([ErrorLogTarget(path=tmp_path / "error.log", level=LogLevel.INFO)])
    log.open()
    context = LogContext(
        client="192.0.2.1", server="*:143", starttls=True, login="alice", upstream="10.0.0.1:143"
    )
    log.log(LogLevel.INFO, "client logged in", connection=7, action="proxying", context=context)
    log.close()
    (line,) = _lines(tmp_path / "error.log")
    match = _LINE.match(line)
    assert match is not None
    assert (match["level"], match["pid"], match["tid"]) == (
        "info",
        str(os.getpid()),
        str(threading.get_native_id()),
    )
    assert match["rest"] == (
        "*7 client logged in while proxying, client: 192.0.2.1 using starttls, server: *:143, "
        'login: "alice", upstream: 10.0.0.1:143'
    )


def test_each_target_keeps_its_own_level(tmp_path: Path) -> None:
    log = ErrorLog(
        [
            ErrorLogTarget(path=tmp_path / "all.log", level=LogLevel.DEBUG),
            ErrorLogTarget(path=tmp_path / "errors.log", level=LogLevel.ERROR),
        ]
    )
    log.open()
    for level in LogLevel:
        log.log(level, f"at {level.value}")
    log.close()
    assert [line.split("] ")[0][20:] for line in _lines(tmp_path / "all.log")] == [
        f"[{lv.value}" for lv in LogLevel
    ]
    assert [line.rsplit(": ", 1)[1] for line in _lines(tmp_path / "errors.log")] == [
        "at emerg",
        "at alert",
        "at crit",
        "at error",
    ]


def test_a_line_longer_than_nginxs_buffer_is_cut_at_2047_bytes(tmp_path: Path) -> None:
    log = ErrorLog([ErrorLogTarget(path=tmp_path / "error.log", level=LogLevel.INFO)])
    log.open()
    log.log(LogLevel.INFO, "x" * 5000, context=LogContext(client="192.0.2.1", server="*:143"))
    log.close()
    assert len((tmp_path / "error.log").read_bytes()) == 2048
    assert (tmp_path / "error.log").read_bytes().endswith(b"xx\n")


def test_syslog_gets_the_whole_line_after_an_rfc3164_header() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(5)
        port = receiver.getsockname()[1]
        named = SyslogTarget(server_host="127.0.0.1", server_port=port, tag="mgx")
        bare = SyslogTarget(server_host="127.0.0.1", server_port=port, facility="mail", nohostname=True)
        log = ErrorLog(
            [
                ErrorLogTarget(path=None, level=LogLevel.INFO, syslog=named),
                ErrorLogTarget(path=None, level=LogLevel.INFO, syslog=bare),
            ]
        )
        log.open()
        log.log(LogLevel.NOTICE, "reopening logs")
        first, second = (receiver.recv(4096).decode() for _ in range(2))
        log.close()
    header = r"[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d"
    nginx_line = r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[notice\] \d+#\d+: reopening logs"
    # local7 (23) * 8 + notice (5) = 189; mail (2) * 8 + 5 = 21; nginx's default tag is "nginx".
    assert re.fullmatch(rf"<189>{header} {re.escape(socket.gethostname())} mgx: {nginx_line}", first), first
    assert re.fullmatch(rf"<21>{header} nginx: {nginx_line}", second), second


def test_reopen_writes_to_a_new_file_after_the_old_one_was_moved(tmp_path: Path) -> None:
    path = tmp_path / "error.log"
    log = ErrorLog([ErrorLogTarget(path=path, level=LogLevel.INFO)])
    log.open()
    log.log(LogLevel.INFO, "before")
    path.rename(tmp_path / "error.log.1")
    log.log(LogLevel.INFO, "still to the moved file")
    assert log.reopen() == []
    log.log(LogLevel.INFO, "after")
    log.close()
    assert [line.rsplit(": ", 1)[1] for line in _lines(tmp_path / "error.log.1")] == [
        "before",
        "still to the moved file",
    ]
    assert [line.rsplit(": ", 1)[1] for line in _lines(path)] == ["after"]


def test_the_tls_loggers_records_go_to_the_error_log_at_nginx_levels(tmp_path: Path) -> None:
    log = ErrorLog([ErrorLogTarget(path=tmp_path / "error.log", level=LogLevel.INFO)])
    log.open()
    route_python_logger("mailgate.tls", log)
    logging.getLogger("mailgate.tls").warning(
        'could not allocate new session in SSL session shared cache "%s"', "S"
    )
    logging.getLogger("mailgate.tls").error("password is truncated to %d bytes", 4096)
    logging.getLogger("mailgate.tls").debug("not at info")
    log.close()
    assert [line.split(": ", 1)[0][20:].split(" ")[0] for line in _lines(tmp_path / "error.log")] == [
        "[warn]",
        "[error]",
    ]
    assert _lines(tmp_path / "error.log")[0].endswith(
        'could not allocate new session in SSL session shared cache "S"'
    )


ENTRY = SessionLogEntry(
    connection=12,
    client="192.0.2.1:50000",
    server="*:993",
    protocol="imap",
    tls="implicit",
    tls_protocol="TLSv1.3",
    tls_cipher="TLS_AES_256_GCM_SHA384",
    tls_resumed=False,
    login='eve" end="forged\nx',
    auth="rejected",
    upstream=None,
    bytes_from_client=0,
    bytes_to_client=0,
    duration=0.25,
    end="auth rejected",
)


def test_text_session_line_quotes_what_could_forge_a_field(tmp_path: Path) -> None:
    log = SessionLog(SessionLogTarget(path=tmp_path / "sessions.log"))
    log.open()
    log.write(ENTRY)
    log.close()
    (line,) = _lines(tmp_path / "sessions.log")
    assert line[20:] == (
        "*12 client=192.0.2.1:50000 server=*:993 protocol=imap tls=implicit tls_protocol=TLSv1.3 "
        'tls_cipher=TLS_AES_256_GCM_SHA384 tls_resumed=no login="eve\\" end=\\"forged\\x0Ax" auth=rejected '
        'upstream=- bytes_from_client=0 bytes_to_client=0 duration=0.250 end="auth rejected"'
    )


def test_json_session_line_is_one_object_with_every_field(tmp_path: Path) -> None:
    log = SessionLog(SessionLogTarget(path=tmp_path / "sessions.log", json=True))
    log.open()
    log.write(ENTRY)
    log.close()
    (line,) = _lines(tmp_path / "sessions.log")
    record = json.loads(line)
    assert record.pop("time")
    assert record == {
        "connection": 12,
        "client": "192.0.2.1:50000",
        "server": "*:993",
        "protocol": "imap",
        "tls": "implicit",
        "tls_protocol": "TLSv1.3",
        "tls_cipher": "TLS_AES_256_GCM_SHA384",
        "tls_resumed": False,
        "login": 'eve" end="forged\nx',
        "auth": "rejected",
        "upstream": None,
        "bytes_from_client": 0,
        "bytes_to_client": 0,
        "duration": 0.25,
        "end": "auth rejected",
    }
