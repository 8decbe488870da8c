"""TLS failures in nginx's words and at its levels, from OpenSSL's error queue and the event loop's errors."""

import errno

import pytest

from mailgate.config.model import LogLevel
from mailgate.tls import TlsError, TlsLogLine, handshake_failure
from mailgate.tls.failures import ssl_call_failed
from mailgate.tls.libssl import QueuedError, error_string, ssl_error_code

WRONG_VERSION = QueuedError(0x0A00010B, "error:0A00010B:SSL routines::wrong version number")
PROVIDER = QueuedError(0x1C800066, "error:1C800066:Provider routines::cipher operation failed")
BAD_RECORD_MAC = QueuedError(0x0A000119, "error:0A000119:SSL routines::decryption failed or bad record mac")


def test_error_codes_read_as_nginx_prints_them() -> None:
    assert (
        error_string(ssl_error_code(1046)) == "error:0A000416:SSL routines::sslv3 alert certificate unknown"
    )
    assert WRONG_VERSION.reason == 267


def test_a_client_caused_reason_is_logged_at_info() -> None:
    line = ssl_call_failed("SSL_do_handshake()", [WRONG_VERSION])
    assert line == TlsLogLine(
        LogLevel.INFO, "SSL_do_handshake() failed (SSL: error:0A00010B:SSL routines::wrong version number)"
    )


def test_the_first_queued_error_decides_the_level_and_all_are_shown() -> None:
    """As nginx 1.22: a record that does not decrypt queues the provider's error first, which is not on
    nginx's list, so the line is crit."""
    line = ssl_call_failed("SSL_read()", [PROVIDER, BAD_RECORD_MAC])
    assert line.level is LogLevel.CRIT
    assert line.message == f"SSL_read() failed (SSL: {PROVIDER.text} {BAD_RECORD_MAC.text})"


def test_a_reason_nginx_1_22_does_not_list_is_crit() -> None:
    certificate_required = QueuedError(ssl_error_code(1116), "error:0A00045C:SSL routines::tlsv13 alert")
    assert ssl_call_failed("SSL_read()", [certificate_required]).level is LogLevel.CRIT


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (ConnectionResetError(), TlsLogLine(LogLevel.INFO, "peer closed connection in SSL handshake")),
        (
            ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
            TlsLogLine(
                LogLevel.INFO, "peer closed connection in SSL handshake (104: Connection reset by peer)"
            ),
        ),
        (
            OSError(errno.EBADF, "Bad file descriptor"),
            TlsLogLine(LogLevel.ALERT, "peer closed connection in SSL handshake (9: Bad file descriptor)"),
        ),
    ],
    ids=["eof", "reset", "other socket error"],
)
def test_a_client_leaving_during_the_handshake_is_logged_as_nginx_does(
    error: OSError, line: TlsLogLine
) -> None:
    assert handshake_failure(error) == line


@pytest.mark.parametrize(
    "error",
    [TimeoutError(), ConnectionAbortedError("SSL handshake is taking longer than 60.0 seconds: aborting")],
    ids=["timeout", "uvloop's handshake timeout"],
)
def test_a_handshake_timeout_has_no_line(error: OSError) -> None:
    assert handshake_failure(error) is None


def test_a_tls_error_brings_its_own_line() -> None:
    line = TlsLogLine(LogLevel.INFO, "SSL_do_handshake() failed (SSL: x)")
    assert handshake_failure(TlsError(line)) is line
