"""ALPN, SNI, renegotiation and broken TLS input on mail servers: what nginx does, and a bad session only
ever costs itself (the next session on the same server is served).

Handshakes are cut at chosen steps with Python's ssl on memory BIOs, so the bytes on the wire are ours to
hold back; ALPN, SNI and renegotiation use `openssl s_client` (`-alpn`, `-servername`, `R`).
"""

from __future__ import annotations

import contextlib
import functools
import re
import socket
import ssl
from collections.abc import Iterator

import pytest

from tests.e2e_tls.support import (
    IMAP_GREETING,
    KINDS,
    READ_TIMEOUT,
    SERVER_NAME,
    Conversation,
    Proxy,
    client_context,
    mail_config,
    open_at_client_hello,
    read_until_closed,
    running_both,
    s_client,
)
from tests.support.loopback import wait_until
from tests.tls.support import Pki

pytestmark = pytest.mark.nginx

TEMPLATE = mail_config(
    """
    server { listen 127.0.0.1:$imap_ssl ssl; listen 127.0.0.1:$imap_on; protocol imap; starttls on; }
    server { listen 127.0.0.1:$pop3_ssl ssl; listen 127.0.0.1:$pop3_on; protocol pop3; starttls on; }
    server { listen 127.0.0.1:$smtp_ssl ssl; listen 127.0.0.1:$smtp_on; protocol smtp; starttls on; }
"""
)


@pytest.fixture(scope="module")
def proxies(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Proxy]]:
    with running_both(TEMPLATE, pki.directory, tmp_path_factory.mktemp("bad-tls")) as both:
        yield both


def still_serves(proxy: Proxy) -> None:
    """A fresh implicit-TLS session and a fresh STARTTLS session both work."""
    with Conversation.open(proxy.port("imap_ssl"), client_context()) as implicit:
        assert implicit.line() == IMAP_GREETING
        implicit.send(b"a NOOP\r\n")
        assert implicit.reply("imap", b"a") == b"a OK completed\r\n"
    with Conversation.open(proxy.port("imap_on")) as starttls:
        assert starttls.line() == IMAP_GREETING
        starttls.send(b"a STARTTLS\r\n")
        assert starttls.reply("imap", b"a") == b"a OK completed\r\n"
        starttls.start_tls(client_context())
        starttls.send(b"b NOOP\r\n")
        assert starttls.reply("imap", b"b") == b"b OK completed\r\n"


ALERT = 21  # TLS record type of an alert; a fatal one is 7 bytes on the wire


def answer_to_garbage(sock: socket.socket) -> bytes:
    """What the server sends until it closes (an alert, or nothing, then the close: nginx does not wait for
    the client's answer to its alert, nor does mailgate)."""
    return read_until_closed(sock)


# --- garbage instead of a ClientHello ---------------------------------------------------------------------

GARBAGE = {
    "http request": b"GET / HTTP/1.1\r\nHost: mail.test\r\n\r\n",
    "imap command": b"a LOGIN alice secret\r\n",
    "bad record version": b"\x16\x09\x09\x00\x05hello",
    "broken client hello": b"\x16\x03\x01\x00\x09\x01\x00\x00\x05\x03\x03abc",
    "binary noise": bytes(range(256)) * 4,
}


@pytest.mark.parametrize("mode", ["ssl", "on"])
@pytest.mark.parametrize("garbage", list(GARBAGE))
def test_garbage_instead_of_a_client_hello_ends_only_that_session(
    proxies: dict[str, Proxy], garbage: str, mode: str
) -> None:
    answers = {}
    for kind in KINDS:
        with open_at_client_hello(proxies[kind], f"imap_{mode}", mode) as sock:
            sock.sendall(GARBAGE[garbage])
            answers[kind] = answer_to_garbage(sock)
        still_serves(proxies[kind])
    # Whatever OpenSSL says (an alert, or nothing), mailgate says the same, and never a mail reply.
    assert answers["mailgate"] == answers["nginx"]
    assert not answers["mailgate"].startswith((b"*", b"a "))


def alpn_h2_client_hello() -> bytes:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context(alpn=["h2"]).wrap_bio(incoming, outgoing, server_hostname=SERVER_NAME)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


SILENT_CLIENT_TIMEOUT = 10.0  # far below the servers' handshake timeout (`timeout`, 60 s by default)


@pytest.mark.parametrize("mode", ["ssl", "on"])
@pytest.mark.parametrize("hello", ["broken client hello", "alpn h2"])
def test_failed_handshake_sends_its_alert_and_closes_without_waiting_for_a_silent_client(
    proxies: dict[str, Proxy], hello: str, mode: str
) -> None:
    """The client sends its ClientHello and then waits for the server: it gets the fatal alert and the close
    at once, not when the handshake times out (a recv() timing out here fails the test)."""
    data = GARBAGE[hello] if hello in GARBAGE else alpn_h2_client_hello()
    answers = {}
    for kind in KINDS:
        with open_at_client_hello(proxies[kind], f"imap_{mode}", mode) as sock:
            sock.settimeout(SILENT_CLIENT_TIMEOUT)
            sock.sendall(data)
            answers[kind] = read_until_closed(sock)
    assert answers["mailgate"] == answers["nginx"]
    assert len(answers["mailgate"]) == 7 and answers["mailgate"][0] == ALERT


# --- handshakes cut at each step --------------------------------------------------------------------------


def records(data: bytes) -> list[bytes]:
    """Split TLS records (5-byte header: type, version, length)."""
    found = []
    while data:
        length = 5 + int.from_bytes(data[3:5], "big")
        found.append(data[:length])
        data = data[length:]
    return found


def cut_handshake(sock: socket.socket, version: ssl.TLSVersion, step: str) -> None:
    """Run the client side of a handshake on `sock` and stop sending at `step`, then close."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context(version=version).wrap_bio(incoming, outgoing, server_hostname=SERVER_NAME)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    if step == "half a client hello":
        sock.sendall(hello[: len(hello) // 2])
        return
    sock.sendall(hello)
    # Read the server's flight until the client has its own answer ready (or, TLS 1.3, is done).
    while not outgoing.pending:
        chunk = sock.recv(65536)
        assert chunk, "the server closed during its own flight"
        incoming.write(chunk)
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            continue
    if step == "client hello only":
        return
    flight = records(outgoing.read())
    assert step == "all but the client finished"
    sock.sendall(b"".join(flight[:-1]))  # the Finished is the last (encrypted) record


STEPS = ["half a client hello", "client hello only", "all but the client finished"]


@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"]
)
@pytest.mark.parametrize("mode", ["ssl", "on"])
@pytest.mark.parametrize("step", STEPS)
def test_handshake_cut_at_each_step_ends_only_that_session(
    proxies: dict[str, Proxy], step: str, mode: str, version: ssl.TLSVersion
) -> None:
    proxy = proxies["mailgate"]
    with open_at_client_hello(proxy, f"imap_{mode}", mode) as sock:
        cut_handshake(sock, version, step)
        sock.shutdown(socket.SHUT_WR)
        # The server gives up on the session (it never greets) and closes.
        assert IMAP_GREETING not in read_until_closed(sock)
    still_serves(proxy)


# --- ALPN -------------------------------------------------------------------------------------------------

TYPED = {"imap": b"a LOGOUT\n", "pop3": b"QUIT\n", "smtp": b"QUIT\n"}
# With implicit TLS s_client types only once the greeting is there (see support.s_client).
GREETED = {"imap": "* OK", "pop3": "+OK", "smtp": "220 "}


@pytest.mark.parametrize("protocol", ["imap", "pop3", "smtp"])
@pytest.mark.parametrize("mode", ["ssl", "on"])
def test_alpn_naming_the_mail_protocol_is_selected(
    proxies: dict[str, Proxy], protocol: str, mode: str
) -> None:
    for kind in KINDS:
        starttls = ["-starttls", protocol] if mode == "on" else []
        run = s_client(
            proxies[kind].port(f"{protocol}_{mode}"),
            "-alpn",
            f"h2,{protocol}",
            *starttls,
            typed=TYPED[protocol],
            after=GREETED[protocol] if mode == "ssl" else None,
        )
        assert run.handshake_done, f"{kind}: {run.output}"
        assert f"ALPN protocol: {protocol}" in run.output, f"{kind}: {run.output}"


@pytest.mark.parametrize("protocol", ["imap", "pop3", "smtp"])
def test_alpn_without_the_mail_protocol_is_refused_with_a_fatal_alert(
    proxies: dict[str, Proxy], protocol: str
) -> None:
    for kind in KINDS:
        run = s_client(proxies[kind].port(f"{protocol}_ssl"), "-alpn", "h2,http/1.1", typed=TYPED[protocol])
        assert not run.handshake_done, f"{kind}: {run.output}"
        assert "no application protocol" in run.stderr, f"{kind}: {run.output}"
        still_serves(proxies[kind])


def test_alpn_with_python_ssl_selects_imap_among_others(proxies: dict[str, Proxy]) -> None:
    for kind in KINDS:
        context = client_context(alpn=["h2", "imap", "pop3"])
        with Conversation.open(proxies[kind].port("imap_ssl"), context) as conversation:
            assert conversation.line() == IMAP_GREETING
            assert conversation.tls is not None
            assert conversation.tls.selected_alpn_protocol() == "imap"


# --- SNI and renegotiation ----------------------------------------------------------------------------------


def test_unknown_server_name_is_ignored(proxies: dict[str, Proxy]) -> None:
    for kind in KINDS:
        run = s_client(
            proxies[kind].port("imap_ssl"),
            "-servername",
            "nowhere.example.org",
            typed=b"a LOGOUT\n",
            after="* OK",
        )
        assert run.has_line("* OK IMAP4 ready"), f"{kind}: {run.output}"
        assert "CN = mail.test" in run.output
        assert run.has_line("a OK completed"), f"{kind}: {run.output}"


@pytest.mark.parametrize("mode", ["ssl", "on"])
def test_client_renegotiation_is_refused(proxies: dict[str, Proxy], mode: str) -> None:
    for kind in KINDS:
        starttls = ["-starttls", "imap"] if mode == "on" else []
        run = s_client(
            proxies[kind].port(f"imap_{mode}"),
            "-tls1_2",
            *starttls,
            typed=b"R\n",
            after=GREETED["imap"] if mode == "ssl" else None,
            commands=True,
        )
        assert run.handshake_done, f"{kind}: {run.output}"
        assert "RENEGOTIATING" in run.output
        assert "no renegotiation" in run.stderr, f"{kind}: {run.output}"
        still_serves(proxies[kind])


def ssl_read_failures(proxy: Proxy) -> list[str]:
    """Failed reads logged for sessions after STARTTLS: `[level] text`, ports named."""
    names = {str(port): name for name, port in proxy.ports.items()}
    failures = []
    for line in proxy.log_text().splitlines():
        match = re.search(r"\[(\w+)\] \d+#\d+: \*\d+ (SSL_read\(\) failed \(.*)", line)
        if match is not None and " using starttls," in line:
            text = re.sub(r"127\.0\.0\.1:(\d+)$", lambda port: "127.0.0.1:" + names[port[1]], match[2])
            failures.append(f"[{match[1]}] {text}")
    return failures


def test_client_alert_after_a_refused_renegotiation_is_logged_as_an_ssl_read_failure(
    proxies: dict[str, Proxy],
) -> None:
    """s_client answers the no_renegotiation alert with a fatal alert of its own; nginx logs the failed
    SSL_read() with OpenSSL's error queue, the alert's number included (mailgate once logged it as
    `recv() failed (1: Operation not permitted)`, then in Python's words)."""
    for kind in KINDS:
        run = s_client(
            proxies[kind].port("imap_on"), "-tls1_2", "-starttls", "imap", typed=b"R\n", commands=True
        )
        assert "no renegotiation" in run.stderr, f"{kind}: {run.output}"
    failures = {}
    for kind in KINDS:
        proxy = proxies[kind]
        assert wait_until(functools.partial(ssl_read_failures, proxy), READ_TIMEOUT), (
            f"{kind}:\n{proxy.log_text()}"
        )
        failures[kind] = ssl_read_failures(proxy)
    assert failures["mailgate"] == failures["nginx"]
    # (the renegotiation test of this module leaves the same line)
    assert set(failures["mailgate"]) == {
        "[info] SSL_read() failed (SSL: error:0A000410:SSL routines::sslv3 alert handshake failure:"
        "SSL alert number 40) while in auth state, client: 127.0.0.1 using starttls,"
        " server: 127.0.0.1:imap_on"
    }
