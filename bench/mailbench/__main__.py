"""Benchmark mailgate against nginx side by side: `bench/run [options]` (see `--help`)."""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import os
import platform
import resource
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from mailbench import docs, native, profile
from mailbench.environment import PORT_OFFSETS, RLIMIT_NOFILE, WORKERS, Ports, mail_config, make_certificates
from mailbench.record import RunRecord
from mailbench.report import Row, Side, chart, text_table
from mailbench.scenarios import MIB, Load, Measurement, Scenario, all_scenarios, measure
from mailbench.servers import BenchError, Server, cpu_seconds, run_responder, run_server, server_argv

BENCH = Path(__file__).resolve().parent.parent
REPO = BENCH.parent
# The run docs/benchmarks.md shows, for --render-docs after its findings were edited.
DOCS_RUN = "docs-run.json"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs for development (1 s, 1 round)")
    parser.add_argument("--rounds", type=int, default=3, help="A B rounds per scenario (default 3)")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per run (default 3)")
    parser.add_argument("--max-sessions", type=int, default=200_000, help="session bound per run")
    parser.add_argument("--fetch-mib", type=int, default=64, help="bulk FETCH size in MiB (default 64)")
    parser.add_argument("--bulk-sessions", type=int, default=3, help="FETCHes per bulk run (default 3)")
    parser.add_argument("--idle", type=int, default=5000, help="idle TLS connections (default 5000)")
    parser.add_argument("--only", nargs="*", default=[], help="scenario keys (glob patterns) to run")
    parser.add_argument("--profile-seconds", type=float, default=8.0, help="py-spy per profiled scenario")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile of mailgate")
    parser.add_argument(
        "--profile-scenarios",
        nargs="*",
        default=["imaps-c16-delayed", "resume-1.2-cache-quick", "resume-1.3-ticket-quick", "bulk-default"],
        help="scenario keys to profile mailgate under",
    )
    parser.add_argument(
        "--native-scenarios",
        nargs="*",
        default=["imaps-c16-quick", "resume-1.2-ticket-quick", "hs-ecdsa-quick"],
        help="scenario keys to split both servers' CPU by native library under (perf)",
    )
    parser.add_argument("--docs", action="store_true", help="rewrite docs/benchmarks.md and its chart")
    parser.add_argument(
        "--render-docs",
        action="store_true",
        help="only rewrite the docs from the last --docs run (bench/results/docs-run.json)",
    )
    parser.add_argument("--mailgate", default=str(REPO / ".venv/bin/mailgate"), help="mailgate binary")
    parser.add_argument("--nginx", default="/usr/sbin/nginx", help="nginx binary")
    parser.add_argument("--base-port", type=int, default=23000, help="first of the ports the bench uses")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.fetch_mib, args.bulk_sessions = 1, 1.0, 8, 1
        args.idle, args.profile_seconds = min(args.idle, 500), 3.0
    return args


def _check_ports_free(ports: list[int]) -> None:
    for port in ports:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
            try:
                probe.bind(("127.0.0.1", port))
            except OSError as error:
                raise BenchError(f"port {port} is busy ({error}); choose another --base-port") from None


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _describe(m: Measurement, scenario: Scenario) -> str:
    if scenario.kind == "idle":
        return f"{m.memory_kib:.1f} KiB/conn ({m.sessions} held, {m.errors} errors)"
    unit = "MB/s" if scenario.kind == "bulk" else "/s"
    return (
        f"{m.rate:.1f}{unit} p50 {m.p50_ms:.2f} ms p99 {m.p99_ms:.2f} ms, cpu {m.cpu_per_op_ms:.3f} ms/op "
        f"(generator {m.client_cpu:.2f}s vs server {m.server_cpu:.2f}s), {m.sessions} ok {m.errors} errors"
    )


def run_table(
    scenarios: list[Scenario], servers: list[Server], loadgen: Path, load: Load, rounds: int
) -> list[Row]:
    rows = []
    for scenario in scenarios:
        runs: dict[str, list[Measurement]] = {s.name: [] for s in servers}
        for round_number in range(rounds):
            for server in servers:  # A B A B: machine noise hits both sides alike
                m = measure(loadgen, scenario, server, load)
                runs[server.name].append(m)
                _progress(f"  {scenario.key} [{round_number + 1}] {server.name}: {_describe(m, scenario)}")
        rows.append(Row(scenario, Side.of(runs["nginx"]), Side.of(runs["mailgate"])))
    return rows


def run_profiles(
    *, mailgate: Server, loadgen: Path, scenarios: list[Scenario], load: Load, seconds: float, workdir: Path
) -> list[profile.Profile]:
    py_spy = profile.py_spy_binary(Path(sys.executable).parent)
    if py_spy is None:
        _progress("py-spy is not installed: no profile")
        return []
    found = []
    for scenario in scenarios:
        raw = workdir / f"profile-{scenario.key}.txt"
        for _attempt in range(2):  # py-spy sometimes fails to attach while a worker is busy
            raw.unlink(missing_ok=True)
            recorder = profile.start(py_spy, mailgate.process.pid, seconds, raw)
            time.sleep(0.5)  # py-spy attaches before the load starts
            profiled = dataclasses.replace(
                load, seconds=seconds - 1.0, bulk_sessions=1000, bulk_seconds=seconds - 1.0
            )
            measure(loadgen, scenario, mailgate, profiled)
            _, errors = recorder.communicate(timeout=seconds + 60)
            if raw.exists():
                break
            _progress(f"py-spy failed ({recorder.returncode}): {errors.decode(errors='replace').strip()}")
        if not raw.exists():
            continue
        found.append(profile.summarize(raw, scenario.key, scenario.title))
        _progress(f"  profiled {scenario.key}: {found[-1].samples} samples")
    return found


def run_native_splits(
    *, servers: list[Server], loadgen: Path, scenarios: list[Scenario], load: Load, workdir: Path
) -> list[native.NativeSplit]:
    perf = native.perf_binary()
    if perf is None:
        _progress("perf is not installed: no split by native library")
        return []
    found: list[native.NativeSplit] = []
    for scenario in scenarios:
        cpu_ms: dict[str, float] = {}
        shares: dict[str, dict[str, float]] = {}
        samples: dict[str, int] = {}
        for server in servers:
            data = workdir / f"perf-{scenario.key}-{server.name}.data"
            data.unlink(missing_ok=True)
            recorder = native.start(perf, server.pids, data)
            time.sleep(0.5)  # perf attaches before the load starts
            m = measure(loadgen, scenario, server, load)
            errors = native.stop(recorder)
            if not data.exists():  # not permitted here: it would fail for every scenario alike
                _progress(f"perf failed on {server.name}: {errors.strip()}; no split by native library")
                return found
            cpu_ms[server.name] = m.cpu_per_op_ms
            shares[server.name], samples[server.name] = native.shares(perf, data)
            data.unlink()
        found.append(native.NativeSplit(scenario.key, scenario.title, cpu_ms, shares, samples))
        _progress(f"  split {scenario.key} by native library")
        print(f"\n{scenario.title}, CPU by native library:\n{native.markdown(found[-1])}")
    return found


def machine_facts(nginx: str, mailgate: str) -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        except OSError:
            return "?"
        return (done.stdout + done.stderr).strip().splitlines()[0] if (done.stdout + done.stderr) else "?"

    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    commit = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "cpu": f"{cpu}, {os.cpu_count()} CPUs (shared with other work)",
        "mailgate commit": commit or "?",
        "kernel": platform.release(),
        "nginx": first_line([nginx, "-v"]),
        "mailgate": first_line([mailgate, "-v"]),
        "openssl": first_line(["openssl", "version"]),
        "python": _interpreter_of(mailgate),
    }


def _interpreter_of(mailgate: str) -> str:
    """The Python a mailgate script runs on: its version and the executable its venv was made from."""
    python = Path(mailgate).parent / "python"
    described = subprocess.run(
        [str(python), "-c", "import platform, sys; print(platform.python_version(), sys._base_executable)"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    if len(described) != 2:
        return "?"
    version, executable = described
    tools = platform.python_version()
    return f"{version} ({Path(executable).resolve()}) for mailgate; the bench's own tools: {tools}"


def write_docs(record: RunRecord) -> None:
    charted = chart(record.rows, REPO / "docs/benchmarks.png")
    (REPO / "docs/benchmarks.md").write_text(docs.render(record, charted))
    _progress("wrote docs/benchmarks.md" + (" and docs/benchmarks.png" if charted else ""))


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    workdir = BENCH / "results"
    if args.render_docs:
        if not (workdir / DOCS_RUN).exists():
            raise BenchError(f"no run to render: {workdir / DOCS_RUN} is written by `bench/run --docs`")
        write_docs(RunRecord.load(workdir / DOCS_RUN))
        return 0
    workdir.mkdir(exist_ok=True)
    loadgen, responder = BENCH / "build/loadgen", BENCH / "build/responder"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = RLIMIT_NOFILE if hard == resource.RLIM_INFINITY else min(RLIMIT_NOFILE, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))

    base = args.base_port
    ports = Ports(auth=base, imap_backend=base + 1, pop3_backend=base + 2, smtp_backend=base + 3)
    bases = {"nginx": base + 100, "mailgate": base + 200}
    server_ports = {name: [b + offset for offset in PORT_OFFSETS.values()] for name, b in bases.items()}
    _check_ports_free([*map(int, ports.responder_args()), *server_ports["nginx"], *server_ports["mailgate"]])
    make_certificates(workdir / "certs")

    scenarios = all_scenarios(args.fetch_mib * MIB, args.idle)
    selected = [
        s for s in scenarios if not args.only or any(fnmatch.fnmatch(s.key, pattern) for pattern in args.only)
    ]
    load = Load(args.seconds, args.max_sessions, args.bulk_sessions, args.idle)
    binaries = {"nginx": args.nginx, "mailgate": args.mailgate}
    with ExitStack() as stack:
        responder_process = stack.enter_context(
            run_responder(responder, ports.responder_args(), workdir / "responder.log")
        )
        servers = []
        for name, b in bases.items():
            prefix = workdir / name
            prefix.mkdir(exist_ok=True)
            for log in ("error.log", "stderr.log"):
                (prefix / log).unlink(missing_ok=True)  # their sizes after the run are reported
            conf = prefix / f"{name}.conf"
            conf.write_text(mail_config(b, ports, workdir / "certs"))
            argv_ = server_argv(name, binaries[name], prefix, conf)
            servers.append(stack.enter_context(run_server(name, argv_, prefix, b, server_ports[name])))
        processes = {}
        for server in servers:
            processes[server.name] = server.wait_processes(1 + WORKERS)
            _progress(f"{server.name}: pids {server.pids}")
        warmup = Load(1.0, 2000, 1, 100)
        for server in servers:
            measure(loadgen, all_scenarios(MIB, 100)[0], server, warmup)
        responder_before = sum(cpu_seconds([responder_process.pid]))
        rows = run_table(selected, servers, loadgen, load, args.rounds)
        responder_cpu = sum(cpu_seconds([responder_process.pid])) - responder_before
        print(text_table(rows))
        profiles: list[profile.Profile] = []
        if not args.no_profile:
            profiled = [s for key in args.profile_scenarios for s in scenarios if s.key == key]
            profiles = run_profiles(
                mailgate=servers[1],
                loadgen=loadgen,
                scenarios=profiled,
                load=load,
                seconds=args.profile_seconds,
                workdir=workdir,
            )
            for found in profiles:
                cost = docs.mailgate_cpu_per_session(rows, found.key)
                print(f"\nmailgate profile, {found.scenario}:\n{profile.markdown(found, cost)}")
        splits = run_native_splits(
            servers=servers,
            loadgen=loadgen,
            scenarios=[s for key in args.native_scenarios for s in scenarios if s.key == key],
            load=load,
            workdir=workdir,
        )
        log_sizes = {
            f"{s.name} {log}": (s.prefix / log).stat().st_size
            for s in servers
            for log in ("error.log", "stderr.log")
        }
    facts = machine_facts(args.nginx, args.mailgate)
    for name, count in processes.items():
        facts[f"{name} processes"] = f"{count} (master and workers; configured: worker_processes {WORKERS})"
    servers_cpu = sum(row.nginx.server_cpu + row.mailgate.server_cpu for row in rows)
    if servers_cpu > 0:
        facts["auth and backend responder CPU"] = (
            f"{responder_cpu:.1f} s over the table, {100 * responder_cpu / servers_cpu:.1f} % of the "
            f"{servers_cpu:.1f} s the two servers spent"
        )
    record = RunRecord(
        command=("bench/run " + " ".join(argv)).strip(),
        when=time.strftime("%Y-%m-%d %H:%M %Z"),
        settings=vars(args),
        facts=facts,
        rows=rows,
        profiles=profiles,
        native=splits,
        log_sizes=log_sizes,
    )
    record.save(workdir / "results.json")
    if args.docs:
        record.save(workdir / DOCS_RUN)  # kept apart: a later short run must not become the docs' run
        write_docs(record)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except BenchError as error:
        print(f"bench: {error}", file=sys.stderr)
        sys.exit(1)
