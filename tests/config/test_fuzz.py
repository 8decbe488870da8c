"""Fuzzing `load_text`: whatever the text, it returns a configuration or raises ConfigError, nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.config import ConfigError, load_text
from mailgate.config.loader import DIRECTIVE_INDEX
from tests.config.conftest import fixed_lookup

BASE = """worker_processes 2;
error_log stderr info;
events { worker_connections 64; }
http { server { listen 80; } }
mail {
    auth_http 127.0.0.1:9000/auth;
    auth_http_header X-Key "a b";
    starttls on;
    ssl_certificate c.pem;
    ssl_certificate_key k.pem;
    ssl_session_cache builtin:100 shared:Z:1m;
    server {
        listen 127.0.0.1:143;
        listen [::1]:993 ssl backlog=10;
        imap_auth plain login;
        imap_capabilities IMAP4rev1 "SASL-IR";
    }
    server {
        listen 127.0.0.1:25 proxy_protocol;
        protocol smtp;
        smtp_auth none;
        resolver 127.0.0.53 valid=30s;
        set_real_ip_from 10.0.0.0/8;
        xclient off;
        timeout 30s;
    }
}
"""

WORDS = [
    *DIRECTIVE_INDEX,
    *["{", "}", ";", ";", ";", '"', "'", "\\", "#", "$", "${", ")", "on", "off", "only", "auto", "none"],
    *["builtin", "shared:X:1m", "143", "127.0.0.1:1143", "[::1]:1", "unix:/s", "1m", "10s", "1k", "-1", "0"],
    *["999999999999999999999", "data:x", "engine:e:k", "store:x", "*.conf"],
    "\n",
    " ",
    "\t",
    '"a b"',
    "'c'",
]

fuzz_settings = settings(max_examples=300, deadline=None, database=None)


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def loads_or_refuses(text: str | bytes, directory: Path) -> None:
    try:
        load_text(text, str(directory / "fuzz.conf"), directory, lookup=fixed_lookup)
    except ConfigError as error:
        assert str(error)


def test_base_configuration_of_the_fuzzer_loads(directory: Path) -> None:
    config = load_text(BASE, str(directory / "fuzz.conf"), directory, lookup=fixed_lookup).config
    assert config.mail is not None
    assert len(config.mail.servers) == 2


@fuzz_settings
@given(st.binary(max_size=400))
def test_random_bytes(directory: Path, data: bytes) -> None:
    loads_or_refuses(data, directory)


@fuzz_settings
@given(st.lists(st.sampled_from(WORDS), max_size=60).map(" ".join))
def test_random_statements_from_nginx_words(directory: Path, text: str) -> None:
    loads_or_refuses(text, directory)


@st.composite
def mutated_base(draw: st.DrawFn) -> str:
    text = BASE
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        start = draw(st.integers(min_value=0, max_value=len(text)))
        end = draw(st.integers(min_value=start, max_value=min(len(text), start + 12)))
        insert = draw(st.sampled_from(["", *WORDS]) | st.text(max_size=6))
        text = text[:start] + insert + text[end:]
    return text


@fuzz_settings
@given(mutated_base())
def test_mutated_configurations(directory: Path, text: str) -> None:
    loads_or_refuses(text, directory)


@fuzz_settings
@given(st.text(max_size=80))
def test_random_command_line_directives(directory: Path, extra: str) -> None:
    try:
        load_text(BASE, str(directory / "fuzz.conf"), directory, extra, lookup=fixed_lookup)
    except ConfigError as error:
        assert str(error)
