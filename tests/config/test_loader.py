"""Reading configurations: statements to directives, includes, `-g`, `-T`, bad files. One error each."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mailgate.config import (
    DEFAULT_PREFIX,
    ConfigError,
    default_conf_path,
    default_conf_text,
    dump,
    load,
    load_text,
)
from tests.config.conftest import EVENTS, MAIL_HEAD, ConfDir, fixed_lookup


def test_unknown_directive_is_reported_with_file_and_line(conf: ConfDir) -> None:
    error = conf.error(EVENTS + "\nfoo bar;\n")
    assert str(error) == f'unknown directive "foo" in {conf.where(3)}'
    assert error.level == "emerg"
    assert not error.syntax_ok


def test_directive_of_another_context_is_not_allowed_here(conf: ConfDir) -> None:
    assert (
        str(conf.error(EVENTS + "listen 143;"))
        == f'"listen" directive is not allowed here in {conf.where(2)}'
    )


def test_http_directive_in_mail_is_not_allowed_here_as_in_nginx(conf: ConfDir) -> None:
    error = conf.error(EVENTS + MAIL_HEAD + "    server { listen 127.0.0.1:143; proxy_pass x; }\n}\n")
    assert str(error) == f'"proxy_pass" directive is not allowed here in {conf.where(4)}'


def test_simple_directive_ended_by_brace_is_not_terminated(conf: ConfDir) -> None:
    assert (
        str(conf.error(EVENTS + "pid x {}")) == f'directive "pid" is not terminated by ";" in {conf.where(2)}'
    )


def test_block_directive_ended_by_semicolon_has_no_opening_brace(conf: ConfDir) -> None:
    assert str(conf.error("events;")) == f'directive "events" has no opening "{{" in {conf.where(1)}'


def test_argument_count_is_checked_from_the_table(conf: ConfDir) -> None:
    error = conf.error(EVENTS + "daemon on off;")
    assert str(error) == f'invalid number of arguments in "daemon" directive in {conf.where(2)}'


def test_block_directive_with_arguments_has_a_wrong_argument_count(conf: ConfDir) -> None:
    error = conf.error(EVENTS + MAIL_HEAD + "server x {}\n}")
    assert str(error) == f'invalid number of arguments in "server" directive in {conf.where(4)}'


def test_error_line_is_the_line_of_the_terminator(conf: ConfDir) -> None:
    assert str(conf.error(EVENTS + "daemon\n\nmaybe\n;")).endswith(f"in {conf.where(5)}")


def test_stray_closing_brace_at_top_level(conf: ConfDir) -> None:
    assert str(conf.error(EVENTS + "}")) == f'unexpected "}}" in {conf.where(2)}'


def test_unterminated_block(conf: ConfDir) -> None:
    assert str(conf.error("events {\n")) == f'unexpected end of file, expecting "}}" in {conf.where(2)}'


def test_missing_events_block(conf: ConfDir) -> None:
    error = conf.error("worker_processes 1;\n")
    assert str(error) == 'no "events" section in configuration'
    assert error.source is None
    assert error.syntax_ok


def test_main_file_that_cannot_be_opened(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path / "none.conf", tmp_path)
    assert str(caught.value) == f'open() "{tmp_path}/none.conf" failed (2: No such file or directory)'


def test_relative_conf_file_is_relative_to_the_prefix(conf: ConfDir) -> None:
    conf.write("conf/m.conf", EVENTS)
    assert load(Path("conf/m.conf"), conf.path).config.conf_file == conf.path / "conf/m.conf"


# -- include ------------------------------------------------------------------------------------------------


def test_include_is_relative_to_the_main_files_directory_even_from_a_subdirectory(conf: ConfDir) -> None:
    conf.write("sub/a.conf", "include b.conf;\n")
    conf.write("b.conf", "worker_processes 3;\n")
    conf.write("sub/b.conf", "worker_processes 4;\n")
    loaded = conf.load(EVENTS + "include sub/a.conf;\n")
    assert loaded.config.main.worker_processes == 3


def test_include_glob_reads_matches_in_sorted_order(conf: ConfDir) -> None:
    conf.write("inc/b.conf", "env B;\n")
    conf.write("inc/a.conf", "env A;\n")
    conf.write("inc/c.txt", "env C;\n")
    loaded = conf.load(EVENTS + "include inc/*.conf;\n")
    assert loaded.config.main.env == (("A", None), ("B", None))


def test_include_glob_matching_nothing_is_fine(conf: ConfDir) -> None:
    assert conf.load(EVENTS + "include nothing/*.conf;\n").config.main.env == ()


def test_include_of_a_missing_file_is_an_open_error_at_the_include(conf: ConfDir) -> None:
    error = conf.error(EVENTS + "\ninclude none.conf;\n")
    assert str(error) == (
        f'open() "{conf.path}/none.conf" failed (2: No such file or directory) in {conf.where(3)}'
    )


def test_errors_in_an_included_file_name_that_file(conf: ConfDir) -> None:
    conf.write("inc/bad.conf", "\n\nbad;\n")
    error = conf.error(EVENTS + "include inc/bad.conf;\n")
    assert str(error) == f'unknown directive "bad" in {conf.where(3, "inc/bad.conf")}'


def test_included_directives_apply_in_the_including_context(conf: ConfDir) -> None:
    conf.write("servers.conf", "server { listen 127.0.0.1:143; }\n")
    loaded = conf.load(EVENTS + MAIL_HEAD + "include servers.conf;\n}\n")
    assert loaded.config.mail is not None
    assert loaded.config.mail.servers[0].listens[0].text == "127.0.0.1:143"


def test_a_block_must_close_in_the_file_that_opened_it(conf: ConfDir) -> None:
    conf.write("open.conf", "mail {\n")
    error = conf.error(EVENTS + "include open.conf;\n}\n")
    assert str(error) == f'unexpected end of file, expecting "}}" in {conf.where(2, "open.conf")}'


def test_a_closing_brace_in_an_included_file_is_unexpected(conf: ConfDir) -> None:
    conf.write("close.conf", "}\n")
    error = conf.error(EVENTS + "mail {\ninclude close.conf;\n")
    assert str(error) == f'unexpected "}}" in {conf.where(1, "close.conf")}'


def test_include_loop_is_one_error_at_the_include(conf: ConfDir) -> None:
    conf.write("a.conf", "include b.conf;\n")
    conf.write("b.conf", "\ninclude a.conf;\n")
    error = conf.error(EVENTS + "include a.conf;\n")
    assert (
        str(error) == f'include loop: "{conf.path}/a.conf" is already being read in {conf.where(2, "b.conf")}'
    )


def test_including_the_same_file_twice_in_a_row_is_not_a_loop(conf: ConfDir) -> None:
    conf.write("env.conf", "env A;\n")
    assert len(conf.load(EVENTS + "include env.conf;\ninclude env.conf;\n").config.main.env) == 2


def test_unreadable_include_is_nginx_pread_error(conf: ConfDir) -> None:
    directory = conf.path / "adir"
    directory.mkdir()
    (directory / "x").write_text("x")
    if os.stat(directory).st_size == 0:
        pytest.skip("this file system reports directories as empty, nginx would read nothing")
    error = conf.error(EVENTS + "include adir;\n")
    assert str(error) == f'pread() "{directory}" failed (21: Is a directory)'
    assert error.level == "crit"


def test_include_without_argument(conf: ConfDir) -> None:
    error = conf.error(EVENTS + "include;\n")
    assert str(error) == f'invalid number of arguments in "include" directive in {conf.where(2)}'


# -- bad bytes --------------------------------------------------------------------------------------------


def test_binary_garbage_is_one_unknown_directive_error(conf: ConfDir) -> None:
    error = conf.error(EVENTS.encode() + b"\x89PNG\x1a\x00\xff\xfe garbage;\n")
    assert str(error) == f'unknown directive "\\x89PNG\x1a" in {conf.where(2)}'


def test_nul_byte_cuts_the_printed_name_as_c_does(conf: ConfDir) -> None:
    assert str(conf.error(EVENTS.encode() + b"pid\x00x y;")) == f'unknown directive "pid" in {conf.where(2)}'


def test_megabyte_line_is_one_error(conf: ConfDir) -> None:
    error = conf.error(EVENTS + "pid " + "z" * 1_000_000 + ";\n")
    assert str(error) == f'too long parameter "zzzzzzzzzz..." started in {conf.where(2)}'


def test_long_unknown_directive_message_is_cut_like_nginx(conf: ConfDir) -> None:
    error = conf.error("x" * 3000 + ";")
    assert len(error.message.encode()) == 1024
    assert error.message.startswith('unknown directive "xxx')


# -- -g ---------------------------------------------------------------------------------------------------


def test_command_line_directives_are_read_before_the_file(conf: ConfDir) -> None:
    error = conf.error(EVENTS + "\nworker_processes 2;\n", extra="worker_processes 1;")
    assert str(error) == f'"worker_processes" directive is duplicate in {conf.where(3)}'


def test_command_line_errors_are_in_command_line(conf: ConfDir) -> None:
    assert str(conf.error(EVENTS, extra="pid a; pid b;")) == '"pid" directive is duplicate in command line'
    assert str(conf.error(EVENTS, extra="foo;")) == 'unknown directive "foo" in command line'
    assert (
        str(conf.error(EVENTS, extra="pid a")) == 'unexpected end of parameter, expecting ";" in command line'
    )


def test_command_line_cannot_open_blocks(conf: ConfDir) -> None:
    error = conf.error(EVENTS, extra="events {}")
    assert str(error) == "block directives are not supported in -g option in command line"


def test_command_line_values_are_applied(conf: ConfDir) -> None:
    assert conf.load(EVENTS, extra="daemon off; master_process off;").config.main.daemon is False


# -- -T, load_text, defaults -------------------------------------------------------------------------------


def test_dump_prints_every_file_once_in_nginx_order(conf: ConfDir) -> None:
    conf.write("a.conf", "include b.conf;\n")
    conf.write("b.conf", "env B;")
    text = EVENTS + "include a.conf;\ninclude b.conf;\n"
    conf.write("main.conf", text)
    expected = (
        f"# configuration file {conf.main}:\n{text}\n"
        f"# configuration file {conf.path}/a.conf:\ninclude b.conf;\n\n"
        f"# configuration file {conf.path}/b.conf:\nenv B;\n"
    )
    assert dump(conf.main, conf.path) == expected


def test_dump_shows_files_included_from_skipped_http_blocks(conf: ConfDir) -> None:
    conf.write("mime.types", "types { text/html html; }\n")
    loaded = conf.load(EVENTS + "http {\n include mime.types;\n server { listen 80; }\n}\n")
    assert [source.name for source in loaded.sources] == [str(conf.main), f"{conf.path}/mime.types"]


def test_http_and_stream_blocks_are_skipped_with_a_notice(conf: ConfDir) -> None:
    loaded = conf.load(EVENTS + "http {\n  server { location / { anything goes; } }\n}\nstream { x; }\n")
    assert [(warning.level, str(warning)) for warning in loaded.warnings] == [
        ("notice", f'the "http" block is skipped: mailgate serves mail only in {conf.where(2)}'),
        ("notice", f'the "stream" block is skipped: mailgate serves mail only in {conf.where(5)}'),
    ]


def test_skipped_block_still_needs_valid_syntax(conf: ConfDir) -> None:
    error = conf.error(EVENTS + "http {\n  server {\n")
    assert str(error) == f'unexpected end of file, expecting "}}" in {conf.where(4)}'


def test_deeply_nested_skipped_blocks_are_read_without_recursion(conf: ConfDir) -> None:
    assert conf.load(EVENTS + "http {" + "a {" * 5000 + "}" * 5001).config.mail is None


def test_warnings_before_an_error_ride_on_the_error(conf: ConfDir) -> None:
    error = conf.error(EVENTS + "http {}\nfoo;")
    assert [str(warning) for warning in error.warnings] == [
        f'the "http" block is skipped: mailgate serves mail only in {conf.where(2)}'
    ]


def test_load_text_names_messages_after_the_given_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_text("events {}\nfoo;", str(tmp_path / "conf/x.conf"), tmp_path)
    assert str(caught.value) == f'unknown directive "foo" in {tmp_path}/conf/x.conf:2'


def test_embedded_default_configuration_loads_with_plain_and_tls_servers_per_protocol() -> None:
    name = str(default_conf_path(DEFAULT_PREFIX))
    loaded = load_text(default_conf_text(), name, DEFAULT_PREFIX, lookup=fixed_lookup)
    config = loaded.config
    assert name == "/var/lib/mailgate/conf/mailgate.conf"
    assert config.main.pid == Path("/var/lib/mailgate/logs/mailgate.pid")
    assert config.mail is not None
    servers = [
        (server.protocol.value, server.listens[0].text, server.listens[0].ssl, server.ssl.starttls.value)
        for server in config.mail.servers
    ]
    assert servers == [
        ("imap", "127.0.0.1:1143", False, "on"),
        ("imap", "127.0.0.1:1993", True, "off"),
        ("pop3", "127.0.0.1:1110", False, "on"),
        ("pop3", "127.0.0.1:1995", True, "off"),
        ("smtp", "127.0.0.1:1587", False, "on"),
        ("smtp", "127.0.0.1:1465", True, "off"),
    ]
    assert loaded.dump().startswith(f"# configuration file {name}:\n# mailgate's embedded default")


def test_config_records_every_file_read(conf: ConfDir) -> None:
    conf.write("x.conf", "")
    config = conf.load(EVENTS + "include x.conf;").config
    assert config.files == (conf.main, conf.path / "x.conf")
    assert config.prefix == conf.path
