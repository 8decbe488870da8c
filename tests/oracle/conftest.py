"""Fixtures for the oracle tests: one test PKI and one set of servers per test process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.oracle.runs import Servers
from tests.oracle.targets import Pki, make_pki


@pytest.fixture(scope="session")
def oracle_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("oracle-pki"))


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory, oracle_pki: Pki) -> Iterator[Servers]:
    running = Servers(tmp_path_factory.mktemp("oracle-servers"), oracle_pki)
    yield running
    running.close()
