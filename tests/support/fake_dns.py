"""A DNS server for tests on a loopback UDP port, answering from a small zone (thread-based, for sync tests).

The zone maps `(name, type)` (name fully qualified, lower case, e.g. `("1.0.0.127.in-addr.arpa.", "PTR")`)
to a list of record texts, or to `NXDOMAIN` / `SERVFAIL` / `REFUSED`, or to `DROP` (no answer at all).
Unknown names get an empty answer. Every query is recorded.
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType
from typing import Self

import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

Zone = dict[tuple[str, str], "str | list[str]"]


class FakeDns:
    def __init__(self, zone: Zone, host: str = "127.0.0.1") -> None:
        self.zone = zone
        self.queries: list[tuple[str, str]] = []
        self._socket = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind((host, 0))
        self._socket.settimeout(0.1)
        self.port: int = self._socket.getsockname()[1]
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stopping.set()
        self._thread.join(5)
        self._socket.close()

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                data, peer = self._socket.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            answer = self._answer(data)
            if answer is not None:
                self._socket.sendto(answer, peer)

    def _answer(self, data: bytes) -> bytes | None:
        query = dns.message.from_wire(data)
        question = query.question[0]
        key = (question.name.to_text().lower(), dns.rdatatype.to_text(question.rdtype))
        self.queries.append(key)
        entry = self.zone.get(key, [])
        if entry == "DROP":
            return None
        response = dns.message.make_response(query)
        if isinstance(entry, str):
            response.set_rcode(dns.rcode.from_text(entry))
        elif entry:
            response.answer.append(
                dns.rrset.from_text_list(question.name, 300, dns.rdataclass.IN, question.rdtype, entry)
            )
        wire: bytes = response.to_wire()
        return wire
