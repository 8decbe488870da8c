"""The auth request bytes, against nginx's format (spec §3.3 and the transcripts of §8A)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailgate.auth.request import (
    TEMPUNAVAIL,
    AuthAttempt,
    AuthRequestRefusedError,
    build_auth_request,
    escape_auth_value,
)
from mailgate.config.model import Protocol, VerifyClient
from mailgate.protocol.credentials import AuthMethod, Credentials
from mailgate.proxy.proxy_protocol import ProxyProtocolHeader
from mailgate.tls.facts import ClientCertificate, TlsFacts
from tests.auth.servers import auth_url, server_config

SALT = b"<1896434728.1700000000@mail.example.com>"
PEM = b"-----BEGIN CERTIFICATE-----\nMIIB%x\n-----END CERTIFICATE-----\n"
CERTIFICATE = ClientCertificate(
    subject="CN=alice,O=Example\\, Inc.,C=US",
    issuer="CN=Example CA,O=Example",
    serial="1F03",
    fingerprint="0123456789abcdef0123456789abcdef01234567",
    pem=PEM,
)


def attempt(credentials: Credentials, **fields: object) -> AuthAttempt:
    values: dict[str, object] = {"login_attempt": 1, "client_address": "192.0.2.42"}
    values.update(fields)
    return AuthAttempt(credentials, **values)  # type: ignore[arg-type]


def test_imap_login_request_matches_nginx_transcript() -> None:
    server = server_config(Protocol.IMAP, url=auth_url(uri="/"))
    credentials = Credentials(Protocol.IMAP, AuthMethod.PLAIN, b"user", b"pa ss", imap_tag=b"a2")
    assert build_auth_request(server, attempt(credentials)) == (
        b"GET / HTTP/1.0\r\n"
        b"Host: localhost\r\n"
        b"Auth-Method: plain\r\n"
        b"Auth-User: user\r\n"
        b"Auth-Pass: pa%20ss\r\n"
        b"Auth-Protocol: imap\r\n"
        b"Auth-Login-Attempt: 1\r\n"
        b"Client-IP: 192.0.2.42\r\n"
        b"\r\n"
    )


def test_pop3_apop_sends_salt_right_after_auth_pass() -> None:
    server = server_config(Protocol.POP3)
    credentials = Credentials(
        Protocol.POP3, AuthMethod.APOP, b"bob", b"0123456789abcdef0123456789abcdef", salt=SALT
    )
    assert build_auth_request(server, attempt(credentials, login_attempt=2)) == (
        b"GET /auth HTTP/1.0\r\n"
        b"Host: localhost\r\n"
        b"Auth-Method: apop\r\n"
        b"Auth-User: bob\r\n"
        b"Auth-Pass: 0123456789abcdef0123456789abcdef\r\n"
        b"Auth-Salt: <1896434728.1700000000@mail.example.com>\r\n"
        b"Auth-Protocol: pop3\r\n"
        b"Auth-Login-Attempt: 2\r\n"
        b"Client-IP: 192.0.2.42\r\n"
        b"\r\n"
    )


def test_imap_cram_md5_sends_digest_and_salt() -> None:
    server = server_config(Protocol.IMAP)
    credentials = Credentials(Protocol.IMAP, AuthMethod.CRAM_MD5, b"bob", b"d" * 32, salt=SALT, imap_tag=b"1")
    request = build_auth_request(server, attempt(credentials))
    assert (
        b"Auth-Method: cram-md5\r\nAuth-User: bob\r\nAuth-Pass: " + b"d" * 32 + b"\r\nAuth-Salt: " in request
    )


def test_external_sends_empty_password_and_the_session_salt_when_one_exists() -> None:
    server = server_config(Protocol.POP3)
    credentials = Credentials(Protocol.POP3, AuthMethod.EXTERNAL, b"alice", salt=SALT)
    request = build_auth_request(server, attempt(credentials))
    assert (
        b"Auth-Method: external\r\nAuth-User: alice\r\nAuth-Pass: \r\nAuth-Salt: " + SALT + b"\r\n" in request
    )
    without_salt = Credentials(Protocol.POP3, AuthMethod.EXTERNAL, b"alice")
    assert b"Auth-Salt" not in build_auth_request(server, attempt(without_salt))


def test_plain_never_sends_a_salt() -> None:
    server = server_config(Protocol.POP3)
    credentials = Credentials(Protocol.POP3, AuthMethod.PLAIN, b"bob", b"secret", salt=SALT)
    assert b"Auth-Salt" not in build_auth_request(server, attempt(credentials))


def test_smtp_auth_request_carries_client_host() -> None:
    server = server_config(Protocol.SMTP, url=auth_url(uri="/"))
    credentials = Credentials(
        Protocol.SMTP, AuthMethod.PLAIN, b"user", b"pass", smtp_helo=b"client.example.org"
    )
    assert build_auth_request(server, attempt(credentials)) == (
        b"GET / HTTP/1.0\r\n"
        b"Host: localhost\r\n"
        b"Auth-Method: plain\r\n"
        b"Auth-User: user\r\n"
        b"Auth-Pass: pass\r\n"
        b"Auth-Protocol: smtp\r\n"
        b"Auth-Login-Attempt: 1\r\n"
        b"Client-IP: 192.0.2.42\r\n"
        b"Client-Host: [UNAVAILABLE]\r\n"
        b"\r\n"
    )


def test_smtp_auth_none_sends_helo_from_and_to_raw() -> None:
    server = server_config(Protocol.SMTP, url=auth_url(uri="/"))
    credentials = Credentials(
        Protocol.SMTP,
        AuthMethod.NONE,
        smtp_helo=b"client.example.org",
        smtp_from=b"MAIL FROM:<a@example.org>",
        smtp_to=b"RCPT TO:<b@example.net>",
    )
    request = build_auth_request(server, attempt(credentials, smtp_client_host="client.example.org"))
    assert request == (
        b"GET / HTTP/1.0\r\n"
        b"Host: localhost\r\n"
        b"Auth-Method: none\r\n"
        b"Auth-User: \r\n"
        b"Auth-Pass: \r\n"
        b"Auth-Protocol: smtp\r\n"
        b"Auth-Login-Attempt: 1\r\n"
        b"Client-IP: 192.0.2.42\r\n"
        b"Client-Host: client.example.org\r\n"
        b"Auth-SMTP-Helo: client.example.org\r\n"
        b"Auth-SMTP-From: MAIL FROM:<a@example.org>\r\n"
        b"Auth-SMTP-To: RCPT TO:<b@example.net>\r\n"
        b"\r\n"
    )


def test_smtp_headers_are_not_sent_for_authenticated_logins() -> None:
    server = server_config(Protocol.SMTP)
    credentials = Credentials(
        Protocol.SMTP, AuthMethod.PLAIN, b"u", b"p", smtp_helo=b"h", smtp_from=b"MAIL x"
    )
    assert b"Auth-SMTP" not in build_auth_request(server, attempt(credentials))


def test_client_host_is_only_sent_for_smtp() -> None:
    credentials = Credentials(Protocol.IMAP, AuthMethod.PLAIN, b"u", b"p")
    request = build_auth_request(
        server_config(Protocol.IMAP), attempt(credentials, smtp_client_host="x.example")
    )
    assert b"Client-Host" not in request


def test_proxy_protocol_headers_follow_client_identity() -> None:
    server = server_config(Protocol.SMTP)
    header = ProxyProtocolHeader(1, "2001:db8::1", 40000, "2001:db8::2", 25)
    credentials = Credentials(Protocol.SMTP, AuthMethod.PLAIN, b"u", b"p")
    request = build_auth_request(
        server, attempt(credentials, proxy_protocol=header, smtp_client_host=TEMPUNAVAIL)
    )
    assert (
        b"Client-Host: [TEMPUNAVAIL]\r\n"
        b"Proxy-Protocol-Addr: 2001:db8::1\r\n"
        b"Proxy-Protocol-Port: 40000\r\n"
        b"Proxy-Protocol-Server-Addr: 2001:db8::2\r\n"
        b"Proxy-Protocol-Server-Port: 25\r\n\r\n"
    ) in request


def test_proxy_protocol_without_addresses_adds_nothing() -> None:
    credentials = Credentials(Protocol.IMAP, AuthMethod.PLAIN, b"u", b"p")
    request = build_auth_request(server_config(), attempt(credentials, proxy_protocol=ProxyProtocolHeader(1)))
    assert b"Proxy-Protocol" not in request


def test_tls_without_client_verification_sends_protocol_and_cipher_only() -> None:
    tls = TlsFacts("TLSv1.3", "TLS_AES_256_GCM_SHA384", verify="SUCCESS", certificate=CERTIFICATE)
    credentials = Credentials(Protocol.IMAP, AuthMethod.PLAIN, b"u", b"p")
    server = server_config(pass_client_cert=True)
    request = build_auth_request(server, attempt(credentials, tls=tls))
    assert request.endswith(
        b"Client-IP: 192.0.2.42\r\nAuth-SSL: on\r\nAuth-SSL-Protocol: TLSv1.3\r\n"
        b"Auth-SSL-Cipher: TLS_AES_256_GCM_SHA384\r\n\r\n"
    )


def test_tls_with_verification_and_certificate_sends_every_ssl_header_in_order() -> None:
    tls = TlsFacts("TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256", verify="SUCCESS", certificate=CERTIFICATE)
    credentials = Credentials(Protocol.IMAP, AuthMethod.EXTERNAL, b"")
    server = server_config(
        verify_client=VerifyClient.ON, pass_client_cert=True, headers=(("X-Auth-Key", "secret"), ("X-B", "2"))
    )
    request = build_auth_request(server, attempt(credentials, tls=tls))
    assert request.endswith(
        b"Client-IP: 192.0.2.42\r\n"
        b"Auth-SSL: on\r\n"
        b"Auth-SSL-Protocol: TLSv1.2\r\n"
        b"Auth-SSL-Cipher: ECDHE-RSA-AES128-GCM-SHA256\r\n"
        b"Auth-SSL-Verify: SUCCESS\r\n"
        b"Auth-SSL-Subject: CN=alice,O=Example\\, Inc.,C=US\r\n"
        b"Auth-SSL-Issuer: CN=Example CA,O=Example\r\n"
        b"Auth-SSL-Serial: 1F03\r\n"
        b"Auth-SSL-Fingerprint: 0123456789abcdef0123456789abcdef01234567\r\n"
        b"Auth-SSL-Cert: -----BEGIN%20CERTIFICATE-----%0AMIIB%25x%0A-----END%20CERTIFICATE-----%0A\r\n"
        b"X-Auth-Key: secret\r\n"
        b"X-B: 2\r\n"
        b"\r\n"
    )


def test_client_certificate_is_not_passed_unless_configured() -> None:
    tls = TlsFacts("TLSv1.3", "TLS_AES_128_GCM_SHA256", verify="SUCCESS", certificate=CERTIFICATE)
    credentials = Credentials(Protocol.IMAP, AuthMethod.PLAIN, b"u", b"p")
    request = build_auth_request(server_config(verify_client=VerifyClient.ON), attempt(credentials, tls=tls))
    assert b"Auth-SSL-Fingerprint: " in request
    assert b"Auth-SSL-Cert" not in request


def test_verification_without_certificate_reports_verify_only() -> None:
    tls = TlsFacts("TLSv1.3", "TLS_AES_128_GCM_SHA256", verify="NONE")
    credentials = Credentials(Protocol.IMAP, AuthMethod.PLAIN, b"u", b"p")
    server = server_config(verify_client=VerifyClient.OPTIONAL, pass_client_cert=True)
    request = build_auth_request(server, attempt(credentials, tls=tls))
    assert request.endswith(b"Auth-SSL-Cipher: TLS_AES_128_GCM_SHA256\r\nAuth-SSL-Verify: NONE\r\n\r\n")


def test_custom_headers_come_last_in_configuration_order() -> None:
    server = server_config(Protocol.SMTP, headers=(("X-Auth-Key", "secret key"), ("X-Other", "1")))
    credentials = Credentials(
        Protocol.SMTP, AuthMethod.NONE, smtp_helo=b"h", smtp_from=b"MAIL", smtp_to=b"RCPT"
    )
    request = build_auth_request(server, attempt(credentials))
    assert request.endswith(b"Auth-SMTP-To: RCPT\r\nX-Auth-Key: secret key\r\nX-Other: 1\r\n\r\n")


def test_host_header_and_uri_come_from_the_url() -> None:
    server = server_config(url=auth_url(host="::1", uri="/mail/auth?x=1", host_header="[::1]"))
    credentials = Credentials(Protocol.IMAP, AuthMethod.PLAIN, b"u", b"p")
    request = build_auth_request(server, attempt(credentials, client_address="unix:"))
    assert request.startswith(b"GET /mail/auth?x=1 HTTP/1.0\r\nHost: [::1]\r\n")
    assert b"Client-IP: unix:\r\n" in request


def test_escaping_covers_controls_space_and_percent_in_uppercase_hex() -> None:
    every_byte = bytes(range(256))
    expected = b"".join(
        b"%%%02X" % byte if byte <= 0x20 or byte == 0x25 else bytes((byte,)) for byte in every_byte
    )
    assert escape_auth_value(every_byte) == expected
    assert escape_auth_value(b"a\r\nb %") == b"a%0D%0Ab%20%25"
    assert escape_auth_value(b"\x7f\xc3\xa9") == b"\x7f\xc3\xa9"


def test_crlf_in_login_and_password_is_escaped_not_split() -> None:
    credentials = Credentials(Protocol.IMAP, AuthMethod.PLAIN, b"u\r\nAuth-Server: 10.0.0.1", b"p\nX: y")
    request = build_auth_request(server_config(), attempt(credentials))
    assert b"Auth-User: u%0D%0AAuth-Server:%2010.0.0.1\r\nAuth-Pass: p%0AX:%20y\r\n" in request


@pytest.mark.parametrize("field", ["smtp_helo", "smtp_from", "smtp_to"])
@pytest.mark.parametrize("bad", [b"\r\n", b"\n", b"\r", b"\x00"])
def test_raw_smtp_values_with_line_breaks_are_refused(field: str, bad: bytes) -> None:
    values = {"smtp_helo": b"h", "smtp_from": b"MAIL FROM:<a@b>", "smtp_to": b"RCPT TO:<c@d>"}
    values[field] = values[field] + bad + b"Auth-Server: 10.0.0.1"
    credentials = Credentials(Protocol.SMTP, AuthMethod.NONE, **values)  # type: ignore[arg-type]
    with pytest.raises(AuthRequestRefusedError, match="Auth-SMTP-"):
        build_auth_request(server_config(Protocol.SMTP), attempt(credentials))


def test_unsafe_client_host_proxy_address_tls_names_and_custom_headers_are_refused() -> None:
    smtp = Credentials(Protocol.SMTP, AuthMethod.PLAIN, b"u", b"p")
    with pytest.raises(AuthRequestRefusedError, match="Client-Host"):
        build_auth_request(server_config(Protocol.SMTP), attempt(smtp, smtp_client_host="a\r\nX: y"))
    with pytest.raises(AuthRequestRefusedError, match="Proxy-Protocol-Addr"):
        header = ProxyProtocolHeader(1, "1.2.3.4\nX: y", 1, "5.6.7.8", 2)
        build_auth_request(server_config(Protocol.SMTP), attempt(smtp, proxy_protocol=header))
    with pytest.raises(AuthRequestRefusedError, match="Auth-SSL-Subject"):
        bad_certificate = ClientCertificate("CN=a\r\nX: y", "CN=b", "01", "ab", b"")
        tls = TlsFacts("TLSv1.3", "c", verify="SUCCESS", certificate=bad_certificate)
        build_auth_request(server_config(verify_client=VerifyClient.ON), attempt(smtp, tls=tls))
    with pytest.raises(AuthRequestRefusedError, match="X-Key"):
        build_auth_request(server_config(headers=(("X-Key", "a\nb"),)), attempt(smtp))
    with pytest.raises(AuthRequestRefusedError, match="Auth-Salt"):
        pop3 = Credentials(Protocol.POP3, AuthMethod.APOP, b"u", b"d", salt=b"<1.2@x>\r\nX: y")
        build_auth_request(server_config(Protocol.POP3), attempt(pop3))


@given(login=st.binary(max_size=64), password=st.binary(max_size=64))
def test_any_login_and_password_yield_exactly_the_expected_header_lines(
    login: bytes, password: bytes
) -> None:
    credentials = Credentials(Protocol.IMAP, AuthMethod.PLAIN, login, password)
    request = build_auth_request(server_config(), attempt(credentials))
    head, separator, rest = request.partition(b"\r\n\r\n")
    assert separator and rest == b""
    lines = head.split(b"\r\n")
    assert [line.split(b":", 1)[0] for line in lines[1:]] == [
        b"Host",
        b"Auth-Method",
        b"Auth-User",
        b"Auth-Pass",
        b"Auth-Protocol",
        b"Auth-Login-Attempt",
        b"Client-IP",
    ]
    assert b"\n" not in head.replace(b"\r\n", b"") and b"\r" not in head.replace(b"\r\n", b"")
