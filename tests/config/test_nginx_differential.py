"""`mailgate -t` against `nginx -t` (Debian's nginx with its mail module) on the configuration corpus.

Each file in `corpus/` starts with comment lines saying what it pins and what the newest nginx prints:

    # what the case pins
    #-g directives given with -g (optional)
    #: one expected stderr line, without the program name (`nginx: ` / `mailgate: `)
    #~ a line that must start with this text (OpenSSL's error queue follows it and varies)

`{file}` stands for the case's path, `{dir}` for the corpus directory and `{prefix}` for the `-p` prefix.
Corpus files may write `@DIR@` where an absolute path into the corpus directory is needed.
Both programs must print exactly the expected lines, so they agree with each other: same verdict, same
directive, same file and line. Where Debian's nginx 1.22 is older than the nginx mailgate follows,
`KNOWN_DIFFERENCES` records what 1.22 prints instead, and the test checks that it still does.
"""

from __future__ import annotations

import datetime
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailgate.cli import main
from tests.support.loopback import IPV4_LOOPBACK, free_port
from tests.support.nginx import ListenAddress, nginx_server, nginx_test

pytestmark = pytest.mark.nginx

CORPUS = Path(__file__).parent / "corpus"
MAILGATE = Path(sys.executable).parent / "mailgate"


@dataclass(frozen=True)
class ExpectedLine:
    """One line the case expects on stderr; `prefix_only` when OpenSSL's error queue follows it."""

    text: str
    prefix_only: bool

    def matches(self, line: str) -> bool:
        return line.startswith(self.text) if self.prefix_only else line == self.text

    def __str__(self) -> str:
        return f"{self.text}..." if self.prefix_only else self.text


@dataclass(frozen=True)
class CorpusCase:
    name: str
    description: str
    directives: str | None
    expected: tuple[ExpectedLine, ...]

    @property
    def succeeds(self) -> bool:
        return bool(self.expected) and self.expected[-1].text.endswith("test is successful")


def expected_line(notation: str) -> ExpectedLine | None:
    """`#: text` or `#~ text start` as an ExpectedLine; None for any other line."""
    if notation.startswith(("#: ", "#~ ")):
        return ExpectedLine(notation[3:], prefix_only=notation[1] == "~")
    return None


def read_case(path: Path) -> CorpusCase:
    description = ""
    directives: str | None = None
    expected: list[ExpectedLine] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if (expectation := expected_line(line)) is not None:
            expected.append(expectation)
        elif line.startswith("#-g"):
            directives = line[4:]
        elif line.startswith("# ") and not description:
            description = line[2:]
        elif not line.startswith("#"):
            break
    return CorpusCase(path.stem, description, directives, tuple(expected))


CASES = [read_case(path) for path in sorted(CORPUS.glob("*.conf"))]


@dataclass(frozen=True)
class KnownDifference:
    """What Debian's nginx 1.22 prints for a case where the newer nginx mailgate follows differs."""

    reason: str
    nginx_1_22_lines: tuple[str, ...]  # in the corpus notation: `#: line` or `#~ line start`


KNOWN_DIFFERENCES: dict[str, KnownDifference] = {
    "new-ssl-directive-removed": KnownDifference(
        "`ssl on` was deprecated in 1.15.0 and removed in 1.25.1; 1.22 still reads it.",
        (
            '#: [warn] the "ssl" directive is deprecated, use the "listen ... ssl" directive instead'
            " in {file}:9",
            '#: [emerg] no "ssl_certificate" is defined for the "ssl" directive in {file}:9',
            "#: configuration file {file} test failed",
        ),
    ),
    "new-proxy-protocol-v2": KnownDifference(
        "`proxy_protocol v2` towards the backend appeared in 1.31.4.",
        (
            '#: [emerg] invalid value "v2" in "proxy_protocol" directive, it must be "on" or "off"'
            " in {file}:9",
            "#: configuration file {file} test failed",
        ),
    ),
    "new-certificate-compression": KnownDifference(
        "`ssl_certificate_compression` appeared in 1.29.1.",
        (
            '#: [emerg] unknown directive "ssl_certificate_compression" in {file}:9',
            "#: configuration file {file} test failed",
        ),
    ),
    "new-listen-multipath": KnownDifference(
        "The `multipath` listen parameter appeared in 1.29.7.",
        (
            '#: [emerg] the invalid "multipath" parameter in {file}:9',
            "#: configuration file {file} test failed",
        ),
    ),
    "new-resolver-ipv4-off": KnownDifference(
        "The resolver's `ipv4=` parameter appeared in 1.23.1; 1.22 takes it for a host name.",
        (
            '#: [emerg] host not found in resolver "ipv4=off" in {file}:9',
            "#: configuration file {file} test failed",
        ),
    ),
    "new-verify-client-trusted-only": KnownDifference(
        "Since 1.27.2 `ssl_trusted_certificate` alone is enough for `ssl_verify_client on`.",
        (
            "#: [emerg] no ssl_client_certificate for ssl_verify_client",
            "#: configuration file {file} test failed",
        ),
    ),
    "new-verify-client-without-ca": KnownDifference(
        "Since 1.27.2 the message names both CA directives.",
        (
            "#: [emerg] no ssl_client_certificate for ssl_verify_client",
            "#: configuration file {file} test failed",
        ),
    ),
    "err-dhparam": KnownDifference(
        "Built with OpenSSL 3, nginx after 1.22 reads DH parameters with PEM_read_bio_Parameters.",
        (
            '#~ [emerg] PEM_read_bio_DHparams("{dir}/certs/server.crt") failed',
            "#: configuration file {file} test failed",
        ),
    ),
    "new-key-from-store": KnownDifference(
        "`ssl_certificate_key store:URI` appeared in 1.29.0; 1.22 takes it for a file name.",
        (
            '#~ [emerg] cannot load certificate key "{dir}/store:file:{dir}/certs/server.key":'
            " BIO_new_file() failed",
            "#: configuration file {file} test failed",
        ),
    ),
}


@dataclass(frozen=True)
class MailgateDifference:
    """Where mailgate deliberately answers otherwise than the newest nginx, and what it prints instead."""

    reason: str
    mailgate_lines: tuple[str, ...]  # in the corpus notation


MAILGATE_DIFFERENCES: dict[str, MailgateDifference] = {
    "new-ssl-directive-removed": MailgateDifference(
        "Naming `listen ... ssl` helps more than `unknown directive` (mailgate.config.directives.ssl).",
        (
            '#: [emerg] the "ssl" directive is no longer supported,'
            ' use the "listen ... ssl" directive instead in {file}:9',
            "#: configuration file {file} test failed",
        ),
    ),
}


def notation_lines(case_name: str, notations: tuple[str, ...]) -> list[ExpectedLine]:
    lines = [expected_line(notation) for notation in notations]
    assert all(lines), f"{case_name}: difference lines must start with '#: ' or '#~ '"
    return [line for line in lines if line is not None]


def write_test_certificates(directory: Path) -> None:
    """Test-only CA, RSA and ECDSA certificates, keys, a CRL, ticket keys and password files."""
    directory.mkdir(parents=True)
    ca = trustme.CA(key_type=trustme.KeyType.RSA)
    rsa_leaf = ca.issue_cert("localhost", key_type=trustme.KeyType.RSA)
    ecdsa_leaf = ca.issue_cert("localhost", key_type=trustme.KeyType.ECDSA)
    (directory / "ca.crt").write_bytes(ca.cert_pem.bytes())
    (directory / "server.crt").write_bytes(b"".join(pem.bytes() for pem in rsa_leaf.cert_chain_pems))
    (directory / "server.key").write_bytes(rsa_leaf.private_key_pem.bytes())
    (directory / "ecdsa.crt").write_bytes(b"".join(pem.bytes() for pem in ecdsa_leaf.cert_chain_pems))
    (directory / "ecdsa.key").write_bytes(ecdsa_leaf.private_key_pem.bytes())
    (directory / "combined.pem").write_bytes(rsa_leaf.private_key_and_cert_chain_pem.bytes())
    rsa_key = serialization.load_pem_private_key(rsa_leaf.private_key_pem.bytes(), password=None)
    assert isinstance(rsa_key, rsa.RSAPrivateKey)
    (directory / "encrypted.key").write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    (directory / "passwords").write_text("wrong\nsecret\n")
    (directory / "long-password").write_text("x" * 5000 + "\n")
    for size in (48, 80, 50):
        (directory / f"ticket{size}.key").write_bytes(bytes(range(size)))
    (directory / "ca.crl").write_bytes(_empty_crl(ca))
    (directory / "inline.conf").write_text(
        f'ssl_certificate "data:{rsa_leaf.cert_chain_pems[0].bytes().decode()}";\n'
        f'ssl_certificate_key "data:{rsa_leaf.private_key_pem.bytes().decode()}";\n'
    )


def _empty_crl(ca: trustme.CA) -> bytes:
    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    assert isinstance(ca_key, rsa.RSAPrivateKey)
    ca_certificate = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    now = datetime.datetime.now(datetime.UTC)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_certificate.subject)
        .last_update(now)
        .next_update(now + datetime.timedelta(days=30))
        .sign(ca_key, hashes.SHA256())
    )
    return crl.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The corpus copied to a temporary directory, with `@DIR@` filled in and certificates generated."""
    directory = tmp_path_factory.mktemp("corpus") / "corpus"
    shutil.copytree(CORPUS, directory)
    for path in directory.glob("*.conf"):
        path.write_text(path.read_text(encoding="utf-8").replace("@DIR@", str(directory)), encoding="utf-8")
    write_test_certificates(directory / "certs")
    return directory


@pytest.fixture
def prefix(tmp_path: Path) -> Path:
    """A `-p` prefix apart from the configuration directory, with the `logs/` nginx expects."""
    (tmp_path / "prefix" / "logs").mkdir(parents=True)
    return tmp_path / "prefix"


@dataclass(frozen=True)
class MailgateResult:
    returncode: int
    stderr: str

    @property
    def lines(self) -> list[str]:
        return [line.removeprefix("mailgate: ") for line in self.stderr.splitlines()]


def mailgate_test(conf_file: Path, prefix: Path, directives: str | None) -> MailgateResult:
    argv = [str(MAILGATE), "-t", "-p", str(prefix), "-c", str(conf_file)]
    if directives is not None:
        argv += ["-g", directives]
    completed = subprocess.run(
        argv, capture_output=True, text=True, timeout=120, check=False, stdin=subprocess.DEVNULL
    )
    return MailgateResult(completed.returncode, completed.stderr)


def fill_placeholders(lines: Iterable[ExpectedLine], conf_file: Path, prefix: Path) -> list[ExpectedLine]:
    """The lines with `{file}`, `{dir}` and `{prefix}` replaced by this run's paths."""
    return [
        ExpectedLine(
            line.text.replace("{file}", str(conf_file))
            .replace("{dir}", str(conf_file.parent))
            .replace("{prefix}", str(prefix)),
            line.prefix_only,
        )
        for line in lines
    ]


def assert_lines_match(actual: list[str], expected: list[ExpectedLine], who: str) -> None:
    shown = "\n".join(str(line) for line in expected)
    assert len(actual) == len(expected) and all(
        line.matches(text) for line, text in zip(expected, actual, strict=True)
    ), f"{who} printed:\n" + "\n".join(actual) + f"\nexpected:\n{shown}"


def test_corpus_has_at_least_sixty_cases_each_with_an_expectation() -> None:
    assert len(CASES) >= 60
    for case in CASES:
        assert case.description, f"{case.name} has no description line"
        assert case.expected, f"{case.name} has no #: lines"
        assert case.expected[-1].text.endswith(("test is successful", "test failed")), case.name


def test_differences_name_corpus_cases() -> None:
    names = {case.name for case in CASES}
    assert set(KNOWN_DIFFERENCES) <= names
    assert set(MAILGATE_DIFFERENCES) <= names


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_nginx_prints_what_the_case_expects(case: CorpusCase, corpus_dir: Path, prefix: Path) -> None:
    conf_file = corpus_dir / f"{case.name}.conf"
    result = nginx_test(conf_file, prefix, directives=case.directives)
    actual = [line.removeprefix("nginx: ") for line in result.lines]
    known = KNOWN_DIFFERENCES.get(case.name)
    if known is None:
        assert_lines_match(actual, fill_placeholders(case.expected, conf_file, prefix), "nginx")
        assert result.ok == case.succeeds
        return
    old = notation_lines(case.name, known.nginx_1_22_lines)
    assert_lines_match(actual, fill_placeholders(old, conf_file, prefix), f"nginx 1.22 ({known.reason})")
    assert old != list(case.expected), f"{case.name}: a known difference must differ from the expectation"


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_mailgate_prints_what_nginx_prints(case: CorpusCase, corpus_dir: Path, prefix: Path) -> None:
    conf_file = corpus_dir / f"{case.name}.conf"
    result = mailgate_test(conf_file, prefix, case.directives)
    assert "Traceback" not in result.stderr, result.stderr
    deliberate = MAILGATE_DIFFERENCES.get(case.name)
    expected = (
        list(case.expected) if deliberate is None else notation_lines(case.name, deliberate.mailgate_lines)
    )
    assert expected[-1].text.endswith("test failed") != case.succeeds, (
        f"{case.name}: the verdict must stay nginx's"
    )
    assert_lines_match(result.lines, fill_placeholders(expected, conf_file, prefix), "mailgate")
    assert result.returncode == (0 if case.succeeds else 1)


def test_relative_pid_and_logs_land_under_the_prefix(corpus_dir: Path, prefix: Path) -> None:
    conf_file = corpus_dir / "ok-pid-relative-to-prefix.conf"
    nginx_prefix = prefix.parent / "nginx-prefix"
    (nginx_prefix / "logs").mkdir(parents=True)
    assert nginx_test(conf_file, nginx_prefix).ok
    assert mailgate_test(conf_file, prefix, None).returncode == 0
    assert (nginx_prefix / "logs" / "relative.pid").is_file()
    assert (prefix / "logs" / "relative.pid").is_file()
    assert not (corpus_dir / "logs").exists()


# Pieces of nginx syntax: random texts built from them reach the tokenizer's and parser's corners.
# (No `include`: nginx recurses until it crashes on an include loop. No TLS: OpenSSL's texts vary.)
SYNTAX_PIECES = [
    "events",
    "mail",
    "server",
    "listen",
    "protocol",
    "auth_http",
    "starttls",
    "imap",
    "143",
    "timeout",
    "1s",
    "worker_processes",
    "1",
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
    "(",
    ")",
    "\n",
    " ",
    "\t",
    "\r",
    "x",
]


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(pieces=st.lists(st.sampled_from(SYNTAX_PIECES), max_size=30))
def test_any_text_gets_nginx_verdict_and_message(
    pieces: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf_file = tmp_path / "random.conf"
    conf_file.write_text("".join(pieces))
    prefix = tmp_path / "prefix"
    (prefix / "logs").mkdir(parents=True, exist_ok=True)
    nginx = nginx_test(conf_file, prefix, directives="pid logs/test.pid;")
    # In this process: a console script per example would make the test slow, not stronger.
    code = main(["-t", "-p", str(prefix), "-c", str(conf_file), "-g", "pid logs/test.pid;"])
    lines = [line.replace("mailgate: ", "nginx: ", 1) for line in capsys.readouterr().err.splitlines()]
    assert (code, lines) == (nginx.returncode, nginx.lines)


@pytest.mark.parametrize("family", ["tcp", "unix"])
def test_nginx_server_helper_serves_until_the_block_ends(family: str, tmp_path: Path) -> None:
    address: ListenAddress
    if family == "tcp":
        port = free_port()
        listen, address, connect_to = f"{IPV4_LOOPBACK}:{port}", (IPV4_LOOPBACK, port), socket.AF_INET
    else:
        path = str(tmp_path / "imap.sock")
        listen, address, connect_to = f"unix:{path}", path, socket.AF_UNIX
    conf_file = tmp_path / "nginx.conf"
    conf_file.write_text(
        f"events {{}}\nmail {{\n    auth_http 127.0.0.1:9/auth;\n"
        f"    server {{ listen {listen}; protocol imap; }}\n}}\n"
    )
    with nginx_server(conf_file, tmp_path, [address]) as running:
        with socket.socket(connect_to) as client:
            client.connect(address)
            assert client.recv(100) == b"* OK IMAP4 ready\r\n"
        assert running.pid_file.read_text().strip() == str(running.process.pid)
    assert running.process.returncode is not None
    assert "client" in running.error_log_text()
