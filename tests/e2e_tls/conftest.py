"""One test PKI per test process (the TLS engineer's: CA, server RSA and ECDSA, good and bad client certs)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.tls.support import Pki, make_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    return make_pki(Path(tmp_path_factory.mktemp("e2e-tls-pki")))
