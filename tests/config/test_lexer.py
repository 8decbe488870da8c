"""nginx's tokenizer: every syntax rule, and its exact error texts and lines."""

from __future__ import annotations

import pytest

from mailgate.config.errors import ConfigError
from mailgate.config.lexer import CONF_BUFFER, Terminator, TokenReader, unescape


def statements(text: str | bytes, name: str | None = "t.conf") -> list[tuple[str, list[str]]]:
    data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    reader = TokenReader(data, name)
    result = []
    while True:
        terminator, words = reader.read()
        result.append((terminator.value, [word.decode("utf-8", "surrogateescape") for word in words]))
        if terminator is Terminator.END_OF_INPUT:
            return result


def error_of(text: str | bytes, name: str | None = "t.conf") -> str:
    with pytest.raises(ConfigError) as caught:
        statements(text, name)
    return str(caught.value)


def test_words_are_split_on_spaces_tabs_and_newlines() -> None:
    assert statements("a b\tc\r\nd;") == [(";", ["a", "b", "c", "d"]), ("", [])]


def test_semicolon_brace_and_closing_brace_end_statements() -> None:
    assert statements("a {\n b c;\n}\n") == [("{", ["a"]), (";", ["b", "c"]), ("}", []), ("", [])]


def test_semicolon_and_brace_end_a_word_without_space() -> None:
    assert statements("a b;c{}") == [(";", ["a", "b"]), ("{", ["c"]), ("}", []), ("", [])]


def test_comment_runs_to_end_of_line() -> None:
    assert statements("# one ; {\na b; # two }\n#three") == [(";", ["a", "b"]), ("", [])]


def test_hash_inside_a_word_is_part_of_it() -> None:
    assert statements("a b#c;") == [(";", ["a", "b#c"]), ("", [])]


def test_closing_brace_inside_a_word_is_part_of_it() -> None:
    assert statements("a b}c;") == [(";", ["a", "b}c"]), ("", [])]


def test_double_and_single_quotes_keep_spaces_and_specials() -> None:
    assert statements("a \"b c;{}#\" 'd e';") == [(";", ["a", "b c;{}#", "d e"]), ("", [])]


def test_quotes_in_the_middle_of_a_word_are_literal() -> None:
    assert statements('a b"c"d;') == [(";", ["a", 'b"c"d']), ("", [])]


def test_empty_quoted_word() -> None:
    assert statements('a "";') == [(";", ["a", ""]), ("", [])]


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (r'"a\"b"', 'a"b'),
        (r"'a\'b'", "a'b"),
        (r'"a\\b"', "a\\b"),
        (r'"a\tb"', "a\tb"),
        (r'"a\rb"', "a\rb"),
        (r'"a\nb"', "a\nb"),
        (r'"a\xb"', "a\\xb"),
        (r'"a\$b"', "a\\$b"),
        (r"a\;b", "a\\;b"),
        (r"a\ b", "a\\ b"),
        (r"\"a\"", '"a"'),
    ],
)
def test_escapes_as_nginx_unescapes_them(raw: str, value: str) -> None:
    assert statements(f"x {raw};") == [(";", ["x", value]), ("", [])]


def test_unescape_keeps_unknown_escapes_and_a_trailing_backslash() -> None:
    assert unescape(b"\\q\\n\\") == b"\\q\n\\"


def test_variable_braces_do_not_open_a_block() -> None:
    assert statements("a ${b}c $${d} e${f};") == [(";", ["a", "${b}c", "$${d}", "e${f}"]), ("", [])]


def test_brace_after_escaped_dollar_opens_a_block() -> None:
    terminator, words = TokenReader(b"a \\${b;", "t.conf").read()
    assert (terminator, words) == (Terminator.BLOCK_START, [b"a", b"\\$"])


def test_closing_parenthesis_may_follow_a_quoted_word() -> None:
    assert statements('if ($a = "b") {}') == [("{", ["if", "($a", "=", "b", ")"]), ("}", []), ("", [])]


def test_text_right_after_a_closing_quote_is_an_error() -> None:
    assert error_of('a "b"c;') == 'unexpected "c" in t.conf:1'


def test_lone_semicolon_is_an_error() -> None:
    assert error_of("a;\n;") == 'unexpected ";" in t.conf:2'


def test_lone_opening_brace_is_an_error() -> None:
    assert error_of("{") == 'unexpected "{" in t.conf:1'


def test_closing_brace_inside_a_statement_is_an_error() -> None:
    assert error_of("a b\n}") == 'unexpected "}" in t.conf:2'


def test_statement_cut_by_end_of_file_is_an_error_on_the_last_line() -> None:
    assert error_of("a;\nb c\n") == 'unexpected end of file, expecting ";" or "}" in t.conf:3'


def test_word_cut_by_end_of_file_is_an_error() -> None:
    assert error_of("a") == 'unexpected end of file, expecting ";" or "}" in t.conf:1'


def test_unterminated_quote_is_an_error_at_end_of_file() -> None:
    assert error_of('a "b;\n}\n') == 'unexpected end of file, expecting ";" or "}" in t.conf:3'


def test_error_lines_count_newlines_inside_quotes() -> None:
    assert error_of('a "b\nc\n"d;') == 'unexpected "d" in t.conf:3'


def test_a_word_longer_than_nginx_buffer_is_refused_where_it_started() -> None:
    assert (
        error_of("a;\nb " + "x" * CONF_BUFFER + ";")
        == 'too long parameter "xxxxxxxxxx..." started in t.conf:2'
    )


def test_a_quoted_word_longer_than_the_buffer_suggests_a_missing_quote() -> None:
    text = "a\n'" + "x" * (2 * CONF_BUFFER) + "';"
    assert error_of(text) == 'too long parameter, probably missing terminating "\'" character in t.conf:2'


def test_a_comment_longer_than_the_buffer_is_refused_like_nginx() -> None:
    assert error_of("a;\n# " + "x" * CONF_BUFFER) == 'too long parameter "# xxxxxxxx..." started in t.conf:2'


def test_long_runs_of_blank_lines_and_short_comments_are_fine() -> None:
    text = " " * (3 * CONF_BUFFER) + "\n" + "#c\n" * CONF_BUFFER + "a;"
    assert statements(text) == [(";", ["a"]), ("", [])]


def test_a_word_just_under_the_buffer_passes_where_it_fits() -> None:
    assert statements("a " + "x" * 4000 + ";")[0] == (";", ["a", "x" * 4000])


def test_a_megabyte_line_gives_one_error() -> None:
    assert error_of("a " + "y" * 1_000_000) == 'too long parameter "yyyyyyyyyy..." started in t.conf:1'


def test_binary_bytes_survive_as_surrogate_escapes() -> None:
    assert statements(b"a \xff\x00b;") == [(";", ["a", "\udcff\x00b"]), ("", [])]


def test_non_utf8_in_an_error_is_printed_escaped() -> None:
    assert error_of(b'a "b"\xff;') == 'unexpected "\\xff" in t.conf:1'


def test_command_line_errors_say_in_command_line() -> None:
    assert error_of("a b", None) == 'unexpected end of parameter, expecting ";" in command line'


def test_command_line_text_has_no_length_limit() -> None:
    assert statements("a " + "x" * (3 * CONF_BUFFER) + ";", None)[0][1][1] == "x" * (3 * CONF_BUFFER)
