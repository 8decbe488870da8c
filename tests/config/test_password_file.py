"""`ssl_password_file`: read once at load, line by line as nginx reads it, from a file or a FIFO."""

from __future__ import annotations

import os
import threading

import pytest

from tests.config.conftest import EVENTS, MAIL_HEAD, ConfDir


def passwords(conf: ConfDir, name: str = "pass") -> tuple[bytes, ...] | None:
    text = EVENTS + MAIL_HEAD + f"ssl_password_file {name};\nserver {{ listen 127.0.0.1:143; }}\n}}\n"
    mail = conf.load(text).config.mail
    assert mail is not None
    return mail.servers[0].ssl.passwords


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"one\ntwo\n", (b"one", b"two")),
        (b"one\r\n\r\n\ntwo", (b"one", b"two")),
        (b"with space \t\n", (b"with space \t",)),
        (b"\n\n", (b"",)),
        (b"", (b"",)),
        (b"x" * 4095 + b"\n", (b"x" * 4095,)),
        (b"\xff\x00binary\n", (b"\xff\x00binary",)),
    ],
)
def test_lines_become_passphrases_in_order(
    conf: ConfDir, content: bytes, expected: tuple[bytes, ...]
) -> None:
    conf.write("pass", content)
    assert passwords(conf) == expected


@pytest.mark.parametrize("content", [b"x" * 4096, b"x" * 4096 + b"\n", b"ok\n" + b"y" * 10000])
def test_a_line_of_4096_bytes_or_more_is_refused(conf: ConfDir, content: bytes) -> None:
    conf.write("pass", content)
    text = EVENTS + MAIL_HEAD + "ssl_password_file pass;\n}\n"
    assert str(conf.error(text)) == f'too long line in "{conf.path}/pass" in {conf.where(4)}'


def test_a_fifo_is_read_to_its_end(conf: ConfDir) -> None:
    fifo = conf.path / "pass"
    os.mkfifo(fifo)

    def write() -> None:
        with open(fifo, "wb") as pipe:
            pipe.write(b"first\n")
            pipe.flush()
            pipe.write(b"second")

    writer = threading.Thread(target=write)
    writer.start()
    try:
        assert passwords(conf) == (b"first", b"second")
    finally:
        writer.join(timeout=10)


def test_the_file_name_is_kept_for_the_tls_module(conf: ConfDir) -> None:
    conf.write("keys/pass", b"p\n")
    text = EVENTS + MAIL_HEAD + "ssl_password_file keys/pass;\nserver { listen 127.0.0.1:143; }\n}\n"
    mail = conf.load(text).config.mail
    assert mail is not None
    assert mail.servers[0].ssl.password_file == conf.path / "keys/pass"


def test_server_without_its_own_file_inherits_the_mail_passphrases(conf: ConfDir) -> None:
    conf.write("a", b"a\n")
    conf.write("b", b"b\n")
    text = EVENTS + MAIL_HEAD + "ssl_password_file a;\n"
    text += "server { listen 127.0.0.1:143; }\nserver { listen 127.0.0.1:110; ssl_password_file b; }\n}\n"
    mail = conf.load(text).config.mail
    assert mail is not None
    assert [server.ssl.passwords for server in mail.servers] == [(b"a",), (b"b",)]
