import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailgate.proxy.crc32c import crc32c


def _bitwise_crc32c(data: bytes) -> int:
    """A table-free reference, so the table-driven code is checked against a second implementation."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", 0x00000000),
        (b"123456789", 0xE3069283),  # the CRC catalogue's check value for CRC-32C
        (bytes(32), 0x8A9136AA),  # RFC 3720, B.4: 32 bytes of zeroes
        (b"\xff" * 32, 0x62A8AB43),  # RFC 3720, B.4: 32 bytes of ones
        (bytes(range(32)), 0x46DD794E),  # RFC 3720, B.4: incrementing bytes
        (bytes(range(31, -1, -1)), 0x113FDB5C),  # RFC 3720, B.4: decrementing bytes
    ],
)
def test_crc32c_matches_published_vectors(data: bytes, expected: int) -> None:
    assert crc32c(data) == expected


@given(st.binary(max_size=300), st.binary(max_size=300))
def test_crc32c_continues_over_chunks_and_matches_bitwise_reference(first: bytes, second: bytes) -> None:
    assert crc32c(second, crc32c(first)) == crc32c(first + second) == _bitwise_crc32c(first + second)
