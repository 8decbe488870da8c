"""The scenarios, and one measured run of one scenario against one server."""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from mailbench.environment import PORT_OFFSETS
from mailbench.servers import BenchError, Server

MIB = 1024 * 1024


@dataclass(frozen=True)
class Scenario:
    """One row of the table: a load generator mode, its options, and the listener it drives."""

    key: str
    title: str
    mode: str
    listener: str
    concurrency: int = 16
    options: tuple[str, ...] = ()
    quickack: bool = False
    kind: str = "rate"  # "rate" (sessions/s), "bulk" (MB/s), "idle" (KiB per connection)
    targets: tuple[str, ...] = ()  # what the row is checked against (see report.TARGETS)

    @property
    def ack(self) -> str:
        if self.kind != "rate":
            return ""
        return "quick" if self.quickack else "delayed"


def _latency_rows(key: str, title: str, mode: str, listener: str, **kwargs: object) -> list[Scenario]:
    """A latency row twice: with a client that ACKs at once, and with Linux's delayed ACKs."""
    targets = kwargs.pop("targets", ())
    delayed_targets = kwargs.pop("delayed_targets", ())
    return [
        Scenario(f"{key}-quick", title, mode, listener, quickack=True, targets=targets, **kwargs),  # type: ignore[arg-type]
        Scenario(f"{key}-delayed", title, mode, listener, targets=delayed_targets, **kwargs),  # type: ignore[arg-type]
    ]


def all_scenarios(fetch_bytes: int, idle_connections: int) -> list[Scenario]:
    rows: list[Scenario] = []
    rows += _latency_rows(
        "hs-ecdsa", "full handshake, ECDSA P-256", "handshake", "imaps_ecdsa", concurrency=16,
        targets=("rate",), delayed_targets=("rate",),
    )  # fmt: skip
    rows += _latency_rows(
        "hs-rsa", "full handshake, RSA-2048", "handshake", "imaps_rsa", concurrency=16,
        targets=("rate",), delayed_targets=("rate",),
    )  # fmt: skip
    for version in ("1.2", "1.3"):
        rows += _latency_rows(
            f"resume-{version}-ticket", f"resumed TLS {version}, ticket", "handshake", "imaps_ecdsa",
            options=("-v", version, "-r", "ticket"), targets=("rate",), delayed_targets=("rate",),
        )  # fmt: skip
        # TLS 1.2 resumes by session id when the client refuses tickets; TLS 1.3 when the server issues
        # stateful tickets (ssl_session_tickets off): both are the session cache.
        rows += _latency_rows(
            f"resume-{version}-cache", f"resumed TLS {version}, session cache", "handshake", "imaps_stateful",
            options=("-v", version, "-r", "cache"), targets=("rate",), delayed_targets=("rate",),
        )  # fmt: skip
    for concurrency in (1, 16, 64):
        rows += _latency_rows(
            f"imaps-c{concurrency}", f"IMAPS session, c={concurrency}", "imap", "imaps_ecdsa",
            concurrency=concurrency,
            targets=("rate", "cpu"),
            delayed_targets=("rate", "cpu", "p50") if concurrency == 1 else ("rate", "cpu"),
        )  # fmt: skip
    for protocol, role in (("imap", "imap_starttls"), ("pop3", "pop3_starttls"), ("smtp", "smtp_starttls")):
        rows += _latency_rows(
            f"starttls-{protocol}", f"STARTTLS {protocol.upper()} session", f"starttls-{protocol}", role,
            targets=("rate",), delayed_targets=("rate",),
        )  # fmt: skip
    size = f"{fetch_bytes // MIB} MiB" if fetch_bytes >= MIB else f"{fetch_bytes // 1024} KiB"
    rows.append(
        Scenario("bulk-default", f"{size} FETCH, default buffers", "fetch", "imaps_ecdsa", concurrency=1,
                 options=("-s", str(fetch_bytes)), kind="bulk", targets=("bulk-default",))
    )  # fmt: skip
    rows.append(
        Scenario("bulk-equal", f"{size} FETCH, proxy_buffer 256k", "fetch", "imaps_bigbuf", concurrency=1,
                 options=("-s", str(fetch_bytes)), kind="bulk", targets=("bulk-equal",))
    )  # fmt: skip
    rows.append(
        Scenario("idle", f"{idle_connections} idle TLS connections", "idle", "imaps_ecdsa", concurrency=32,
                 kind="idle", targets=("memory",))
    )  # fmt: skip
    return rows


@dataclass
class Measurement:
    """One run of one scenario against one server."""

    server: str
    sessions: int = 0
    errors: int = 0
    resumed: int = 0
    elapsed: float = 0.0
    rate: float = 0.0  # sessions/s; MB/s for bulk
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    server_cpu: float = 0.0  # seconds, master + workers, user + system
    server_system: float = 0.0  # the system (kernel) part of server_cpu
    client_cpu: float = 0.0  # seconds, the load generator
    memory_kib: float = 0.0  # idle: PSS per connection
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def cpu_per_op_ms(self) -> float:
        return 1000.0 * self.server_cpu / self.sessions if self.sessions else 0.0


@dataclass(frozen=True)
class Load:
    """How much load one run drives: a time bound and a count bound, whichever comes first."""

    seconds: float
    max_sessions: int
    bulk_sessions: int
    idle_connections: int
    bulk_seconds: float = 600.0  # bulk runs are bounded by their count, except when profiling


def _loadgen(loadgen: Path, scenario: Scenario, port: int, load: Load) -> list[str]:
    argv = [str(loadgen), scenario.mode, "-p", str(port), "-c", str(scenario.concurrency)]
    if scenario.kind == "bulk":
        argv += ["-n", str(load.bulk_sessions), "-d", str(load.bulk_seconds)]
    elif scenario.kind == "idle":
        argv += ["-n", str(load.idle_connections)]
    else:
        argv += ["-n", str(load.max_sessions), "-d", str(load.seconds)]
    if scenario.quickack:
        argv.append("-q")
    return argv + list(scenario.options)


def measure(loadgen: Path, scenario: Scenario, server: Server, load: Load) -> Measurement:
    m = _measure(loadgen, scenario, server, load)
    if server.process.poll() is not None:
        raise BenchError(f"{server.name} exited with {server.process.returncode}:\n{server.log_tail()}")
    if m.sessions == 0 and m.errors:
        raise BenchError(f"{server.name} completed no {scenario.key} session:\n{server.log_tail()}")
    return m


def _measure(loadgen: Path, scenario: Scenario, server: Server, load: Load) -> Measurement:
    port = server.base_port + PORT_OFFSETS[scenario.listener]
    argv = _loadgen(loadgen, scenario, port, load)
    if scenario.kind == "idle":
        return _measure_idle(argv, server)
    before = server.cpu_seconds()
    completed = subprocess.run(argv, capture_output=True, timeout=900, check=False)
    after = server.cpu_seconds()
    user, system = after[0] - before[0], after[1] - before[1]
    if completed.returncode != 0:
        raise BenchError(f"{' '.join(argv)} failed:\n{completed.stderr.decode(errors='replace')}")
    result = json.loads(completed.stdout)
    m = Measurement(
        server=server.name,
        sessions=result["sessions"],
        errors=result["errors"],
        resumed=result["resumed"],
        elapsed=result["elapsed"],
        rate=result["rate"],
        p50_ms=result["p50_ms"],
        p99_ms=result["p99_ms"],
        server_cpu=user + system,
        server_system=system,
        client_cpu=result["cpu_s"],
    )
    if scenario.kind == "bulk":
        m.rate = result["fetch_bytes"] / MIB / result["fetch_seconds"] if result["fetch_seconds"] else 0.0
    return m


def _measure_idle(argv: list[str], server: Server) -> Measurement:
    """PSS of all server processes with N idle TLS connections open, minus before, per connection.

    Each round starts from a fresh server that has served a few sessions (so caches and pools exist), never
    from one that held the N connections before: freed memory stays in the processes, and a second round
    would measure its reuse.
    """
    server.restart()
    warmup = [argv[0], "imap", *argv[2:4], "-c", "4", "-n", "200", "-d", "5"]
    subprocess.run(warmup, capture_output=True, timeout=60, check=False)
    time.sleep(0.5)
    baseline = server.pss_kib()
    before = server.cpu_seconds()
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stdin is not None
    try:
        line = process.stdout.readline()
        if not line:
            raise BenchError(f"{' '.join(argv)} failed:\n{process.communicate()[1].decode(errors='replace')}")
        ready = json.loads(line)
        time.sleep(1.0)  # let the server settle (handshake buffers released, deferred frees done)
        loaded = server.pss_kib()
        after = server.cpu_seconds()
    finally:
        process.stdin.close()
        process.wait(timeout=60)
    held = ready["ready"]
    return Measurement(
        server=server.name,
        sessions=held,
        errors=ready["errors"],
        elapsed=ready["elapsed"],
        rate=held / ready["elapsed"] if ready["elapsed"] else 0.0,
        server_cpu=sum(after) - sum(before),
        server_system=after[1] - before[1],
        memory_kib=(loaded - baseline) / held if held else 0.0,
        client_cpu=ready["cpu_s"],
        extra={"baseline_kib": baseline, "loaded_kib": loaded},
    )
