"""The auth server's reply: nginx's parsing rules (spec §3.4) and its verdicts (spec §3.5)."""

from __future__ import annotations

import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailgate._io import usual_auth_success
from mailgate.auth.response import (
    NEED_MORE,
    AuthDecision,
    AuthResponseReader,
    Backend,
    InternalError,
    NeedMore,
    Reject,
    Retry,
    parse_backend_address,
)
from mailgate.config.model import LogLevel, Protocol
from mailgate.protocol.credentials import AuthMethod, Credentials

PEER = "127.0.0.1:9000"
IMAP_PLAIN = Credentials(Protocol.IMAP, AuthMethod.PLAIN, b"user", b"secret", imap_tag=b"a1")
OK_HEADERS = b"Auth-Status: OK\r\nAuth-Server: 10.0.0.5\r\nAuth-Port: 143\r\n"


def decide(
    response: bytes, credentials: Credentials = IMAP_PLAIN, protocol: Protocol | None = None
) -> AuthDecision:
    reader = AuthResponseReader(PEER, protocol or credentials.protocol, credentials)
    decision = reader.feed(response)
    return reader.feed_eof() if isinstance(decision, NeedMore) else decision


def test_ok_reply_names_the_backend_with_the_clients_credentials() -> None:
    decision = decide(b"HTTP/1.0 200 OK\r\n" + OK_HEADERS + b"\r\n")
    assert decision == Backend("10.0.0.5", socket.AF_INET, 143, b"user", b"secret", "10.0.0.5:143")


def test_status_code_is_ignored() -> None:
    assert isinstance(decide(b"HTTP/1.1 500 Internal Server Error\r\n" + OK_HEADERS + b"\r\n"), Backend)


def test_reply_without_status_line_is_read_as_headers_from_the_first_byte() -> None:
    assert isinstance(decide(OK_HEADERS + b"\r\n"), Backend)
    assert decide(b"HTTX: y\r\n" + OK_HEADERS + b"\r\n") == decide(OK_HEADERS + b"\r\n")


def test_reply_without_auth_status_is_a_success() -> None:
    assert isinstance(decide(b"HTTP/1.0 200 OK\r\nAuth-Server: 10.0.0.5\r\nAuth-Port: 143\r\n\r\n"), Backend)


def test_bare_lf_line_ends_are_accepted() -> None:
    assert isinstance(decide(b"HTTP/1.0 200 OK\nAuth-Server: 10.0.0.5\nAuth-Port: 143\n\n"), Backend)


def test_bytes_after_the_header_block_are_ignored() -> None:
    reader = AuthResponseReader(PEER, Protocol.IMAP, IMAP_PLAIN)
    decision = reader.feed(OK_HEADERS + b"\r\n<html>" + b"x" * 5000)
    assert isinstance(decision, Backend)
    assert reader.feed(b"more") is decision
    assert reader.feed_eof() is decision


def test_header_names_are_case_insensitive_but_status_values_are_not() -> None:
    assert isinstance(decide(b"auth-STATUS: OK\r\nAUTH-server: 10.0.0.5\r\nauth-port: 143\r\n\r\n"), Backend)
    assert decide(b"Auth-Status: ok\r\n\r\n") == Reject(b"ok")


def test_value_spaces_are_trimmed_at_both_ends_and_kept_inside() -> None:
    assert decide(b"Auth-Status:    Invalid  login   \r\n\r\n") == Reject(b"Invalid  login")


def test_header_line_without_colon_has_an_empty_value() -> None:
    assert decide(b"Auth-Status\r\n\r\n") == Reject(b"")
    assert decide(b"X-Unknown\r\n" + OK_HEADERS + b"\r\n") == decide(OK_HEADERS + b"\r\n")


def test_empty_auth_status_is_an_error_for_smtp_too() -> None:
    smtp = Credentials(Protocol.SMTP, AuthMethod.PLAIN, b"u", b"p")
    assert decide(b"Auth-Status: \r\nAuth-Server: 10.0.0.5\r\nAuth-Port: 25\r\n\r\n", smtp) == Reject(b"")


@pytest.mark.parametrize(
    "response",
    [
        b"Auth_Status: OK\r\n\r\n",
        b"-Auth: x\r\n\r\n",
        b" Auth-Status: OK\r\n\r\n",
        b"Auth Status: OK\r\n\r\n",
        b"Auth-Status: OK\rX\n\r\n",
        b"Auth-Status\rX\r\n\r\n",
        b"Auth-Status: OK\r\n\rX",
        b"Auth-Status: OK\r\n\xc3\xa9: x\r\n\r\n",
    ],
)
def test_invalid_header_syntax_is_an_internal_error(response: bytes) -> None:
    assert decide(response) == InternalError(f"auth http server {PEER} sent invalid header in response")


def test_cr_without_lf_in_status_line_is_an_invalid_response() -> None:
    assert decide(b"HTTP/1.0 200\rOK\r\n\r\n") == InternalError(
        f"auth http server {PEER} sent invalid response"
    )


def test_repeated_headers_keep_the_last_value() -> None:
    response = b"Auth-Server: 10.0.0.1\r\nAuth-Server: 10.0.0.2\r\nAuth-Port: 1\r\nAuth-Port: 2\r\n\r\n"
    decision = decide(response)
    assert isinstance(decision, Backend)
    assert (decision.address, decision.port) == ("10.0.0.2", 2)


def test_later_ok_does_not_cancel_an_error_but_a_later_error_replaces_its_text() -> None:
    assert decide(b"Auth-Status: Bad\r\nAuth-Status: OK\r\n" + OK_HEADERS + b"\r\n") == Reject(b"Bad")
    assert decide(b"Auth-Status: First\r\nAuth-Status: Second\r\n\r\n") == Reject(b"Second")


def test_wait_anywhere_in_the_reply_asks_for_a_retry() -> None:
    assert decide(b"Auth-Status: WAIT\r\nAuth-Wait: 3\r\n\r\n") == Retry(3)
    assert decide(b"Auth-Status: WAIT\r\nAuth-Status: OK\r\n" + OK_HEADERS + b"\r\n") == Retry(0)


def test_error_text_wins_over_wait_in_the_same_reply() -> None:
    assert decide(b"Auth-Status: WAIT\r\nAuth-Status: No\r\nAuth-Wait: 2\r\n\r\n") == Reject(b"No", 2)


def test_auth_wait_accepts_only_plain_decimal_and_keeps_the_last_valid_value() -> None:
    assert decide(b"Auth-Status: No\r\nAuth-Wait: 4\r\nAuth-Wait: x\r\nAuth-Wait: -1\r\n\r\n") == Reject(
        b"No", 4
    )
    assert decide(b"Auth-Status: No\r\nAuth-Wait: 1.5\r\n\r\n") == Reject(b"No", 0)


def test_rejection_lines_per_protocol() -> None:
    imap = decide(b"Auth-Status: Invalid login or password\r\nAuth-Wait: 3\r\n\r\n")
    assert isinstance(imap, Reject)
    assert imap.wait == 3
    assert imap.client_line(Protocol.IMAP, b"a1") == b"a1 NO Invalid login or password\r\n"
    assert imap.client_line(Protocol.POP3) == b"-ERR Invalid login or password\r\n"
    assert imap.client_line(Protocol.SMTP) == b"535 5.7.0 Invalid login or password\r\n"
    smtp = Credentials(Protocol.SMTP, AuthMethod.PLAIN, b"u", b"p")
    temporary = decide(
        b"Auth-Status: Temporary server problem, try again later\r\nAuth-Error-Code: 451 4.3.0\r\n\r\n", smtp
    )
    assert isinstance(temporary, Reject)
    assert temporary.client_line(Protocol.SMTP) == b"451 4.3.0 Temporary server problem, try again later\r\n"


@pytest.mark.parametrize(
    "response",
    [
        b"Auth-Status: OK\r\n\r\n",
        b"Auth-Server: 10.0.0.5\r\n\r\n",
        b"Auth-Port: 143\r\n\r\n",
        b"Auth-Server:\r\nAuth-Port: 143\r\n\r\n",
        b"Auth-Server: 10.0.0.5\r\nAuth-Port:  \r\n\r\n",
    ],
)
def test_success_without_server_or_port_is_an_internal_error(response: bytes) -> None:
    assert decide(response) == InternalError(f"auth http server {PEER} did not send server or port")


@pytest.mark.parametrize("method", [AuthMethod.APOP, AuthMethod.CRAM_MD5, AuthMethod.EXTERNAL])
@pytest.mark.parametrize("protocol", [Protocol.IMAP, Protocol.POP3])
def test_imap_and_pop3_digest_and_external_logins_need_auth_pass(
    method: AuthMethod, protocol: Protocol
) -> None:
    credentials = Credentials(protocol, method, b"bob", b"d" * 32, salt=b"<1.2@x>")
    assert decide(OK_HEADERS + b"\r\n", credentials) == InternalError(
        f"auth http server {PEER} did not send password"
    )
    decision = decide(OK_HEADERS + b"Auth-Pass: real\r\n\r\n", credentials)
    assert isinstance(decision, Backend)
    assert decision.password == b"real"


def test_an_empty_auth_pass_counts_as_a_password() -> None:
    external = Credentials(Protocol.IMAP, AuthMethod.EXTERNAL, b"bob")
    decision = decide(OK_HEADERS + b"Auth-Pass:\r\n\r\n", external)
    assert isinstance(decision, Backend)
    assert decision.password == b""


def test_smtp_needs_no_password() -> None:
    none = Credentials(Protocol.SMTP, AuthMethod.NONE, smtp_from=b"MAIL FROM:<>", smtp_to=b"RCPT TO:<a@b>")
    assert decide(b"Auth-Server: 10.0.0.5\r\nAuth-Port: 25\r\n\r\n", none) == Backend(
        "10.0.0.5", socket.AF_INET, 25, b"", None, "10.0.0.5:25"
    )


def test_auth_user_and_auth_pass_replace_the_clients_values_verbatim() -> None:
    decision = decide(OK_HEADERS + b"Auth-User: other%20user\r\nAuth-Pass: p@ss word\r\n\r\n")
    assert isinstance(decision, Backend)
    assert (decision.login, decision.password) == (b"other%20user", b"p@ss word")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"10.0.0.5", ("10.0.0.5", socket.AF_INET)),
        (b"010.0.0.1", ("10.0.0.1", socket.AF_INET)),
        (b"1..2.3", ("1.0.2.3", socket.AF_INET)),
        (b"::1", ("::1", socket.AF_INET6)),
        (b"2001:DB8::5", ("2001:db8::5", socket.AF_INET6)),
        (b"::ffff:1.2.3.4", ("::ffff:102:304", socket.AF_INET6)),
        (b"255.255.255.255", None),
        (b"1.2.3.256", None),
        (b"1.2.3", None),
        (b"[::1]", None),
        (b"fe80::1%eth0", None),
        (b"mail.example.com", None),
        (b"", None),
    ],
)
def test_backend_address_must_be_an_ip_literal_as_nginx_parses_it(
    text: bytes, expected: tuple[str, socket.AddressFamily] | None
) -> None:
    assert parse_backend_address(text) == expected


def test_host_name_as_auth_server_is_an_internal_error() -> None:
    response = b"Auth-Server: backend.example.com\r\nAuth-Port: 143\r\n\r\n"
    assert decide(response) == InternalError(
        f'auth http server {PEER} sent invalid server address:"backend.example.com"'
    )


@pytest.mark.parametrize("port", [b"0", b"65536", b"abc", b"+1", b"1 2", b"99999999999999999999999"])
def test_port_outside_1_to_65535_is_an_internal_error(port: bytes) -> None:
    response = b"Auth-Server: 10.0.0.5\r\nAuth-Port: " + port + b"\r\n\r\n"
    assert decide(response) == InternalError(
        f'auth http server {PEER} sent invalid server port:"{port.decode()}"'
    )


def test_upstream_text_keeps_the_values_as_received() -> None:
    decision = decide(b"Auth-Server: 2001:DB8::5\r\nAuth-Port: 0143\r\n\r\n")
    assert isinstance(decision, Backend)
    assert (decision.address, decision.port, decision.upstream) == ("2001:db8::5", 143, "2001:DB8::5:0143")


def test_header_block_must_fit_in_1024_bytes() -> None:
    head = OK_HEADERS + b"X-Pad: "
    fits = head + b"p" * (1024 - len(head) - 4) + b"\r\n\r\n"
    assert len(fits) == 1024
    assert isinstance(decide(fits), Backend)
    too_long = head + b"p" * (1025 - len(head) - 4) + b"\r\n\r\n"
    reader = AuthResponseReader(PEER, Protocol.IMAP, IMAP_PLAIN)
    assert reader.feed(too_long) == InternalError(
        f"auth http server {PEER} sent too long response header", LogLevel.INFO
    )


def test_end_of_stream_before_the_empty_line_is_an_internal_error() -> None:
    reader = AuthResponseReader(PEER, Protocol.IMAP, IMAP_PLAIN)
    assert reader.feed(OK_HEADERS) is NEED_MORE
    decision = reader.feed_eof()
    assert isinstance(decision, InternalError)
    assert decision.level is LogLevel.INFO
    assert AuthResponseReader(PEER, Protocol.IMAP, IMAP_PLAIN).feed_eof() == decision


def test_status_line_prefix_split_across_reads() -> None:
    reader = AuthResponseReader(PEER, Protocol.IMAP, IMAP_PLAIN)
    assert reader.feed(b"") is NEED_MORE
    assert reader.feed(b"HT") is NEED_MORE
    assert reader.feed(b"TP/1.0 200 OK\r") is NEED_MORE
    assert isinstance(reader.feed(b"\n" + OK_HEADERS + b"\r\n"), Backend)


REPLIES = [
    b"HTTP/1.0 200 OK\r\n" + OK_HEADERS + b"\r\n",
    b"HTTP/1.0 200 OK\r\nAuth-Status: Invalid login\r\nAuth-Wait: 3\r\n\r\n",
    b"Auth-Status: WAIT\nAuth-Wait: 1\n\n",
    b"HTTP/1.0 200\rX",
    b"Auth_Status: x\r\n\r\n",
]


@given(st.sampled_from(REPLIES), st.lists(st.integers(min_value=0, max_value=80), max_size=6))
def test_decision_does_not_depend_on_how_the_reply_is_split(reply: bytes, cuts: list[int]) -> None:
    reader = AuthResponseReader(PEER, Protocol.IMAP, IMAP_PLAIN)
    decision: AuthDecision | NeedMore = NEED_MORE
    start = 0
    for cut in [*sorted(cuts), len(reply)]:
        decision = reader.feed(reply[start:cut])
        start = max(start, cut)
    final = reader.feed_eof() if isinstance(decision, NeedMore) else decision
    assert final == decide(reply)


HEADERISH = st.lists(
    st.one_of(
        st.binary(max_size=12),
        st.sampled_from(
            [
                b"\r\n",
                b"\n",
                b"\r",
                b": ",
                b" ",
                b"HTTP/1.0 200 OK\r\n",
                b"Auth-Status",
                b"OK",
                b"WAIT",
                b"Auth-Server",
                b"10.0.0.5",
                b"::1",
                b"Auth-Port",
                b"143",
                b"Auth-Wait",
                b"Auth-Pass",
                b"7",
            ]
        ),
    ),
    max_size=40,
).map(b"".join)


@given(st.lists(HEADERISH, max_size=5), st.sampled_from(list(Protocol)), st.sampled_from(list(AuthMethod)))
def test_fuzzed_replies_never_raise_and_always_end_in_a_decision(
    chunks: list[bytes], protocol: Protocol, method: AuthMethod
) -> None:
    reader = AuthResponseReader(PEER, protocol, Credentials(protocol, method, b"u", b"p"))
    for chunk in chunks:
        result = reader.feed(chunk)
        assert isinstance(result, (NeedMore, Backend, Reject, Retry, InternalError))
    assert isinstance(reader.feed_eof(), (Backend, Reject, Retry, InternalError))


_HEADER_BYTES = st.sampled_from(
    [b"A", b"u", b"7", b"-", b":", b" ", b"\t", b"\r", b"\n", b"\r\n", b"x", b"\xff", b"Auth-Port: 1\r\n"]
)


@given(st.lists(_HEADER_BYTES, max_size=60).map(b"".join))
def test_plain_header_blocks_read_by_expressions_give_the_state_machines_fields(block: bytes) -> None:
    from mailgate.auth import response

    try:
        slow: object = response._header_fields_by_state(block, 0)
    except response._MalformedError:
        slow = "malformed"
    try:
        fast: object = response._header_fields(block, 0)
    except response._MalformedError:
        fast = "malformed"
    assert fast == slow


@given(st.lists(st.sampled_from([b"1", b"0", b"25", b"255", b"256", b"", b".", b"x", b"007"]), max_size=9))
def test_backend_ipv4_addresses_read_the_same_with_or_without_the_octet_loop(parts: list[bytes]) -> None:
    from mailgate.auth import response

    text = b"".join(parts)
    assert response._inet_addr(text) == response._inet_addr_by_loop(text)


# --- the connection's fast path (Peer.read_auth_then_login) against the reader -------------------------

_HEADER_NAMES = st.sampled_from(
    [b"Date", b"Content-Length", b"X-Auth", b"Date", b"Server", b"Auth-Status", b"auth-status",
     b"AUTH-STATUS", b"Auth-Server", b"auth-server", b"Auth-Port", b"AUTH-PORT", b"Auth-User",
     b"Auth-Pass", b"Auth-Wait", b"Auth-Error-Code", b"Auth-Foo", b"Auth Status", b"-Auth", b"Auth_Status"]
)  # fmt: skip
_HEADER_VALUES = st.one_of(
    st.sampled_from(
        [b"OK", b"ok", b"WAIT", b"Invalid login", b"", b"10.0.0.5", b"127.000.0.1", b"255.255.255.255",
         b"0.0.0.0", b"1.2.3", b"1.2.3.4.5", b"256.1.1.1", b"::1", b"localhost", b"143", b"0", b"65535",
         b"65536", b"00143", b"1x", b"3"]
    ),
    st.binary(max_size=8),
)  # fmt: skip
_LINE_ENDS = st.sampled_from([b"\r\n"] * 30 + [b"\n", b"\r"])


_SERVERS = st.sampled_from(
    [b"10.0.0.5"] * 12 + [b"127.000.0.1", b"1.2.3.4", b"255.255.255.255", b"0.0.0.0", b"1.2.3", b"1.2.3.4.5",
     b"256.1.1.1", b"1..2.3", b"0001.2.3.4", b"::1", b"localhost", b""]
)  # fmt: skip
_PORTS = st.sampled_from(
    [b"143"] * 10 + [b"1", b"65535", b"00143", b"0", b"65536", b"99999", b"1x", b"", b"-1"]
)


@st.composite
def _auth_replies(draw: st.DrawFn) -> bytes:
    """Usual replies (status line, Auth-Status OK, Auth-Server, Auth-Port) with some of their parts
    mutated, other headers mixed in, and sometimes cut short."""
    reply = draw(st.sampled_from([b"HTTP/1.0 200 OK"] * 6 + [b"HTTP/1.1 500 Whatever", b"", b"HTTP/"]))
    reply += draw(_LINE_ENDS) if reply else b""
    headers = [(b"Auth-Status", draw(st.sampled_from([b"OK"] * 8 + [b"WAIT", b"ok", b"no"])))]
    headers += [(b"Auth-Server", draw(_SERVERS)), (b"Auth-Port", draw(_PORTS))]
    headers += draw(st.lists(st.tuples(_HEADER_NAMES, _HEADER_VALUES), max_size=2))
    for given_name, value in draw(st.permutations(headers)):
        name = draw(st.sampled_from([given_name, given_name, given_name.lower(), given_name.upper()]))
        before, after = draw(st.sampled_from([b"", b" ", b"  "])), draw(st.sampled_from([b"", b"", b" "]))
        reply += name + b":" + before + value + after + draw(_LINE_ENDS)
    reply += draw(_LINE_ENDS)
    if draw(st.integers(0, 5)) == 0:
        reply = reply[: draw(st.integers(0, len(reply)))]
    return reply


@given(_auth_replies())
def test_a_reply_the_connection_takes_is_one_the_reader_makes_the_same_backend_of(reply: bytes) -> None:
    taken = usual_auth_success(reply)
    reader = AuthResponseReader(PEER, Protocol.IMAP, IMAP_PLAIN)
    decision = reader.feed(reply)
    if taken is False:  # incomplete, by the connection's reading: the reader waits as well
        assert decision is NEED_MORE
    if not taken:
        return
    address, port, server, port_text = taken
    upstream = f"{server.decode('latin-1')}:{port_text.decode('latin-1')}"
    assert decision == Backend(address, socket.AF_INET, port, b"user", b"secret", upstream)


def test_the_connection_takes_the_usual_replies_and_leaves_the_rest() -> None:
    usual = b"HTTP/1.0 200 OK\r\n" + OK_HEADERS + b"\r\n"
    assert usual_auth_success(usual) == ("10.0.0.5", 143, b"10.0.0.5", b"143")
    assert usual_auth_success(usual[:-1]) is False
    assert usual_auth_success(OK_HEADERS + b"\r\n") is None  # no status line: the reader's
    assert usual_auth_success(b"HTTP/1.0 200 OK\r\n" + OK_HEADERS + b"Auth-Pass: x\r\n\r\n") is None
