"""The benchmark: our gateway against bare aiosmtpd, in one run (`make bench`).

Starts, one after another, the reference (bare aiosmtpd 1.4 with an in-memory
authenticator; bodies discarded), our `runsmtp` on SQLite, and our `runsmtp` on
PostgreSQL when one is reachable (BENCH_POSTGRES_URL, default the database
agentmail_bench of the CI role, created if missing). Each server is pinned to
CPU 0 and the load generator (bench/smtpload.c, compiled here) to CPU 1 when the
machine has two. For every scenario and concurrency it measures sessions/s,
server CPU per session and the AUTH step's latency; every reply is checked by
the load generator, and a wrong one is an error, never a session. It also
measures peak RSS with 256 idle sessions and around one 10 MiB message, and
failed against successful AUTH in alternating short cells (paired_ratio), since
two cells a dozen seconds apart differ by the machine's drift as much as by
anything the servers do; in those cells, our gateway's CPU per session thread by
thread (event loop, AUTH checker, committer, log writer).

The gateway runs as in production (DEBUG off, uvloop, the AUTH rate limit of
10 failures per address per 10 minutes checked on every AUTH, every attempt
recorded, every message committed before its 250, LOG_LEVEL INFO so every AUTH
logs one line), except that the failure delay is 0 (a policy knob, not work) and
per-address connection limits are off. Clients
come from random 127.x.y.z addresses, as from many hosts.

Writes docs/benchmarks.md (with the date and machine) and docs/benchmarks.png.
Options: --seconds N per cell (default 3), --quick (2 concurrencies, 1 s; writes
var/bench/benchmarks.md instead), --metrics (our servers count and serve metrics,
SMTP_METRICS_PORT), --metrics-cost (only this: the AUTH cells of two SQLite
gateways, one without metrics and one with them and scraped once a cell,
alternating; prints the ratios), --against REV (only this: the SQLite cells at
64 connections of this tree and of git revision REV, alternating, in both start
orders; prints the ratios and each thread's CPU per session).
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import functools
import json
import os
import platform
import shutil
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "var" / "bench"
LOADGEN = BUILD / "smtpload"
INBOX, KEY, WRONG_KEY = (
    "inb_valid1234567890",
    "am_validkey12345678901234567890123456",
    "am_doesnotexist0123456789012345678901",
)
TWO_CPUS = (os.cpu_count() or 1) >= 2
SERVER_CPU, CLIENT_CPU = "0", "1"
SCALING: tuple[str, dict[str, Any]] | None = None
METRICS = False  # --metrics: our servers count and serve metrics
T = TypeVar("T")
# One server's cells: (scenario name, concurrency) -> what the load generator measured.
Cells = dict[tuple[str, int], dict[str, Any]]


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    password: str
    expect: int
    messages: int
    body: int


SCENARIOS = [
    Scenario("auth_ok", "(a) successful AUTH", KEY, 235, 0, 0),
    Scenario("auth_fail", "(b) failed AUTH", WRONG_KEY, 535, 0, 0),
    Scenario("auth_msg", "(c) AUTH + one 2 KB message", KEY, 235, 1, 2048),
    Scenario("auth_20msg", "(d) AUTH + 20 messages per connection", KEY, 235, 20, 2048),
]
CONCURRENCY = [1, 16, 64, 256]
# Failed against successful AUTH, alternating (paired_ratio).
PAIRED_CONCURRENCY, PAIRED_ROUNDS, PAIRED_SECONDS = [64, 256], 6, 1.5
SCALING_ROUNDS = 4  # cells per worker count, alternating
# The gateway's threads, as smtpgateway.runtime.glibc names them (one committer: SMTP_DB_WORKERS=1).
THREAD_COLUMNS = ["event loop", "smtp-check", "smtp-commit-0", "log-writer"]

GATEWAY_ENV = {
    "DEBUG": "false",
    "SECRET_KEY": "benchmark-only",
    "SMTP_AUTH_FAILURE_DELAY": "0",
    "SMTP_AUTH_MAX_FAILURES": "0",
    "SMTP_MAX_CONNECTIONS": "5000",
    "SMTP_MAX_CONNECTIONS_PER_IP": "0",
    "SMTP_MAX_UNAUTH_COMMANDS": "0",
    "SMTP_THROTTLE_EXEMPT": "",
    "SMTP_AUTH_REQUIRE_TLS": "false",
    "SMTP_TLS_PORT": "0",
    "SMTP_TLS_CERT_FILE": "",
    "SMTP_TLS_KEY_FILE": "",
    # The default level: every AUTH logs one line, "Auth succeeded" (INFO) or
    # "Auth failed" (WARNING). At WARNING only failures would pay for a line, and
    # (a) and (b) would compare logging settings instead of the AUTH paths.
    "LOG_LEVEL": "INFO",
}


def with_metrics(env: dict[str, str]) -> dict[str, str]:
    """``env`` with the metrics port on (a free one)."""
    return {**env, "SMTP_METRICS_PORT": str(free_port())}


def pinned(cpu: str, command: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *command] if TWO_CPUS and shutil.which("taskset") else command


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def build_loadgen() -> None:
    BUILD.mkdir(parents=True, exist_ok=True)
    subprocess.run(["gcc", "-O2", "-o", str(LOADGEN), str(ROOT / "bench" / "smtpload.c")], check=True)


def prepare_database(url: str, root: Path = ROOT) -> None:
    """Migrate, load the demo data, and start with no records (earlier runs' failed
    attempts would otherwise trip the AUTH rate limit). Emptied with Django's
    flush SQL, which is TRUNCATE on PostgreSQL: a DELETE would leave the last run's
    rows dead for autovacuum to clean up while this run measures. ``root`` is
    another revision's tree (--against): its own migrations, on a new database."""
    env = {**os.environ, **GATEWAY_ENV, "DATABASE_URL": url}
    if root != ROOT:
        for args in (["migrate", "--noinput", "-v0"], ["loaddata", "scenarios", "-v0"]):
            subprocess.run([sys.executable, "manage.py", *args], cwd=root, env=env, check=True)
        return
    empty = (
        "from django.core.management.color import no_style; from django.db import connection; "
        "from smtpgateway.models import AuthAttempt as A; from inboxes.models import Message as M; "
        "from delivery.models import DeliveryAttempt as D, Recipient as R; "
        "connection.ops.execute_sql_flush(connection.ops.sql_flush(no_style(), "
        "[D._meta.db_table, R._meta.db_table, A._meta.db_table, M._meta.db_table], allow_cascade=True))"
    )
    for args in (["migrate", "--noinput", "-v0"], ["loaddata", "scenarios", "-v0"], ["shell", "-v0", "-c", empty]):
        subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True)


def fresh_postgres_database(url: str) -> bool:
    """Create the benchmark's own database if missing; False if PostgreSQL is not
    reachable. Its records are emptied by prepare_database, like the SQLite file."""
    try:
        import psycopg
        from psycopg import sql

        name = url.rsplit("/", 1)[1]
        admin = psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", connect_timeout=2, autocommit=True)
        with admin:
            if not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return True
    except Exception as error:
        print(f"PostgreSQL not usable for the benchmark ({type(error).__name__}): no PostgreSQL row")
        return False


def _cpu_seconds(stat: Path) -> float:
    """User + system CPU of a process or thread, from its /proc stat file."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    def __init__(self, label: str, command: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT) -> None:
        self.label = label
        self.port = free_port()
        if METRICS and "reference" not in label:
            env = with_metrics(env or {})
        self.env = env or {}
        self.process = subprocess.Popen(
            pinned(
                SERVER_CPU, [*command, str(self.port)] if "reference" in label else [*command, "--port", str(self.port)]
            ),
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit(f"{label} did not start")

    def cpu_seconds(self) -> float:
        return _cpu_seconds(Path(f"/proc/{self.process.pid}/stat"))

    def thread_seconds(self) -> dict[str, float]:
        """CPU seconds per thread, by the name the OS has for it (the gateway names
        its checker, committers and log writer; the main thread runs the event loop)."""
        ticks: dict[str, float] = {}
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            try:
                name = "event loop" if task.name == str(self.process.pid) else (task / "comm").read_text().strip()
                used = _cpu_seconds(task / "stat")
            except FileNotFoundError:  # the thread ended meanwhile
                continue
            ticks[name] = ticks.get(name, 0.0) + used
        return ticks

    def status_kib(self, key: str) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        return 0

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()


# A fixed piece of pure Python (objects, a dict, a sort), timed on the server's
# CPU: on this VM the same code can need 30-50% more CPU time for a stretch of
# minutes (every cell of one server slower, CPU per session up by as much), and
# this says when that was so.
SPEED_PROBE = (
    "import statistics, time\n"
    "def once():\n"
    "    started = time.perf_counter()\n"
    "    sorted({i: str(i * 7919 % 100_003) for i in range(100_000)}.values())\n"
    "    return time.perf_counter() - started\n"
    "print(statistics.median(once() for _ in range(9)) * 1000)"
)


def speed_probe() -> float:
    """Milliseconds for the probe on the server's CPU (median of nine; higher is slower)."""
    output = subprocess.run(
        pinned(SERVER_CPU, [sys.executable, "-c", SPEED_PROBE]), capture_output=True, text=True, check=True
    )
    return float(output.stdout)


def load(port: int, scenario: Scenario, concurrency: int, seconds: float, pin: bool = True) -> dict[str, Any]:
    """One run of the load generator (its JSON line), on CLIENT_CPU if ``pin``."""
    payload = base64.b64encode(f"\0{INBOX}\0{scenario.password}".encode()).decode()
    command = [
        str(LOADGEN),
        "127.0.0.1",
        str(port),
        str(concurrency),
        str(seconds),
        payload,
        str(scenario.expect),
        str(scenario.messages),
        str(scenario.body),
        "1",
    ]
    output = subprocess.run(
        pinned(CLIENT_CPU, command) if pin else command, capture_output=True, text=True, check=True
    ).stdout
    measured: dict[str, Any] = json.loads(output)
    return measured


def run_cell(server: Server, scenario: Scenario, concurrency: int, seconds: float) -> dict[str, Any]:
    cpu_before, threads_before = server.cpu_seconds(), server.thread_seconds()
    result = load(server.port, scenario, concurrency, seconds)
    cpu, threads_after = server.cpu_seconds() - cpu_before, server.thread_seconds()
    sessions = max(result["sessions"], 1)
    return {
        "thread_us": {
            name: (used - threads_before.get(name, 0.0)) * 1e6 / sessions for name, used in threads_after.items()
        },
        "rate": result["sessions"] / result["elapsed"],
        "cpu_ms": cpu * 1000 / sessions,
        "p50": result["auth_p50_ms"],
        "p95": result["auth_p95_ms"],
        "p99": result["auth_p99_ms"],
        "p99_settled": result["auth_p99_settled_ms"],
        "greeting_p50": result["greeting_p50_ms"],
        "greeting_p99": result["greeting_p99_ms"],
        "errors": result["errors"],
    }


def paired_ratio(
    server: Server, base: Scenario, other: Scenario, concurrency: int, rounds: int, seconds: float
) -> dict[str, Any]:
    """``other`` against ``base`` on one server, in short cells that alternate
    (ABBA...): this VM's speed drifts by tens of percent within a minute, so two
    cells measured a dozen seconds apart (as in the tables) can differ by more
    than the servers' paths do. Each round gives a ratio of two neighbouring
    cells; the median of the rounds is reported, with their range."""
    pairs = alternating(
        lambda: run_cell(server, base, concurrency, seconds),
        lambda: run_cell(server, other, concurrency, seconds),
        rounds,
    )
    return pair_summary(pairs)


def pair_summary(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    """Rounds of (A, B) cells: the median ratio B ÷ A of sessions/s and of CPU
    per session, each with its range; the errors; each side's median
    sessions/s; and each thread's median µs per session (A, B)."""
    rates = [b["rate"] / a["rate"] for a, b in pairs]
    cpus = [b["cpu_ms"] / a["cpu_ms"] for a, b in pairs]
    errors = sum(a["errors"] + b["errors"] for a, b in pairs)
    names = sorted({name for a, b in pairs for name in (*a["thread_us"], *b["thread_us"])})
    threads = {  # median µs per session of each thread: (base, other)
        name: (
            statistics.median(a["thread_us"].get(name, 0.0) for a, _ in pairs),
            statistics.median(b["thread_us"].get(name, 0.0) for _, b in pairs),
        )
        for name in names
    }
    return {
        "rate": statistics.median(rates),
        "low": min(rates),
        "high": max(rates),
        "cpu": statistics.median(cpus),
        "cpu_low": min(cpus),
        "cpu_high": max(cpus),
        "errors": errors,
        "rounds": len(pairs),
        "threads": threads,
        "rates": (statistics.median(a["rate"] for a, _ in pairs), statistics.median(b["rate"] for _, b in pairs)),
    }


def alternating(measure_a: Callable[[], T], measure_b: Callable[[], T], rounds: int) -> list[tuple[T, T]]:
    """``rounds`` pairs of measurements, in the order AB BA AB ..., so that neither
    always runs first."""
    pairs = []
    for round_number in range(rounds):
        if round_number % 2 == 0:
            a = measure_a()
            b = measure_b()
        else:
            b = measure_b()
            a = measure_a()
        pairs.append((a, b))
    return pairs


def memory_profile(server: Server) -> dict[str, float]:
    """RSS with 256 idle sessions, and peak RSS around one 10 MiB message."""
    base = server.status_kib("VmRSS")
    idle = []
    for _ in range(256):
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.recv(1024)
        sock.sendall(b"EHLO idle.bench\r\n")
        idle.append(sock)
    time.sleep(1)
    with_idle = server.status_kib("VmRSS")
    for sock in idle:
        sock.close()
    time.sleep(1)
    before = server.status_kib("VmRSS")
    hwm_before = server.status_kib("VmHWM")
    body = b"From: test@agentmail.dev\r\nSubject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 10200  # just under 10 MiB
    with smtplib.SMTP("127.0.0.1", server.port, timeout=120) as client:
        client.login(INBOX, KEY)
        client.sendmail("test@agentmail.dev", ["bench@example.com"], body)
    time.sleep(2)
    after = server.status_kib("VmRSS")
    peak = max(server.status_kib("VmHWM"), hwm_before)
    return {
        "base_mib": base / 1024,
        "idle256_mib": with_idle / 1024,
        "msg_peak_rise_mib": (peak - before) / 1024,
        "msg_size_mib": len(body) / 2**20,
        "after_msg_mib": after / 1024,
        "before_msg_mib": before / 1024,
    }


def scaling_profile(command: list[str], env: dict[str, str], seconds: float, rounds: int) -> dict[str, Any]:
    """runsmtp --workers 1 and 2, successful AUTH at 256 connections, alternating
    on two servers started once, ``rounds`` cells each: one cell of each was not
    enough on this machine, where the split of two CPUs between the workers, the
    load generator and the database changes from cell to cell (one run measured
    1.0x, others 1.8-2.3x). Not pinned: they share the machine's CPUs."""
    ports = {workers: free_port() for workers in (1, 2)}
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for workers, port in ports.items():
            processes.append(
                subprocess.Popen(
                    [*command, "--port", str(port), "--workers", str(workers)],
                    cwd=ROOT,
                    env={**os.environ, **env},
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        time.sleep(6)  # every worker of both up
        pairs = alternating(
            functools.partial(load, ports[1], SCENARIOS[0], 256, seconds, pin=False),
            functools.partial(load, ports[2], SCENARIOS[0], 256, seconds, pin=False),
            rounds,
        )
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)

    def summary(runs: list[dict[str, Any]]) -> dict[str, float]:
        rates = [run["sessions"] / run["elapsed"] for run in runs]
        return {
            "rate": statistics.median(rates),
            "low": min(rates),
            "high": max(rates),
            "p99": statistics.median(run["auth_p99_ms"] for run in runs),
            "errors": sum(run["errors"] for run in runs),
        }

    ratios = [(two["sessions"] / two["elapsed"]) / (one["sessions"] / one["elapsed"]) for one, two in pairs]
    return {
        "workers": {1: summary([one for one, _ in pairs]), 2: summary([two for _, two in pairs])},
        "ratio": (statistics.median(ratios), min(ratios), max(ratios)),
        "rounds": rounds,
    }


def render(
    results: dict[str, Cells],
    memory: dict[str, dict[str, Any]],
    paired: dict[tuple[str, int], dict[str, Any]],
    speeds: dict[str, list[float]],
    seconds: float,
    concurrencies: list[int],
) -> str:
    reference = results["reference"]
    lines = [
        "# Benchmarks",
        "",
        f"Run {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on {platform.node()}: {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}), Python {platform.python_version()}, {platform.system()} {platform.release()}.",
        f"Server pinned to CPU {SERVER_CPU}, load generator (bench/smtpload.c) to CPU {CLIENT_CPU}: {TWO_CPUS}. "
        f"{seconds:g} s per cell, loopback. A session is connect + EHLO + AUTH PLAIN (+ messages) + QUIT; every reply checked.",
        "Reference: bare aiosmtpd 1.4.6, in-memory authenticator, bodies discarded. Ours: `runsmtp` with every AUTH "
        "checked (the rate-limit count read from the database; key and inbox state at most 1 s old, SMTP_AUTH_CACHE_SECONDS) and recorded, every message committed before its 250; "
        "production settings (LOG_LEVEL INFO: one log line per AUTH) except no failure delay or per-session failure cap, "
        "no TLS and connection limits raised. Clients come from random 127.x.y.z addresses.",
        "",
        "Ratio = our sessions/s ÷ the reference's in the same cell.",
        "",
        "Speed probe, the same pure-Python loop on the server's CPU before and after each server's cells "
        "(ms, higher = a slower machine at that time): "
        + "; ".join(f"{label} {before:.1f} / {after:.1f}" for label, (before, after) in speeds.items())
        + ".",
        "",
    ]
    for scenario in SCENARIOS:
        lines += [
            f"## {scenario.title}",
            "",
            "| server | conns | sessions/s | ratio | CPU ms/session | AUTH p50 ms | p95 | p99 | errors |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for label, cells in results.items():
            for concurrency in concurrencies:
                cell = cells.get((scenario.name, concurrency))
                if cell is None:
                    continue
                ref = reference.get((scenario.name, concurrency), {}).get("rate") or 0
                ratio = f"{cell['rate'] / ref:.2f}" if ref else "-"
                lines.append(
                    f"| {label} | {concurrency} | {cell['rate']:.0f} | {ratio} | {cell['cpu_ms']:.2f} | {cell['p50']:.1f} | {cell['p95']:.1f} | {cell['p99']:.1f} | {cell['errors']:.0f} |"
                )
        lines.append("")
    top = max(concurrencies)
    lines += [
        f"## AUTH p99 at {top} connections: the opening burst",
        "",
        f"The load generator opens all {top} connections in the same millisecond, so the first AUTHs wait while the server "
        "accepts and greets the others; at 256 connections that burst can be 1–2% of a cell, enough to set its p99. "
        "The p99 in the tables counts it; here it is next to the p99 of the AUTHs sent after the first 0.5 s.",
        "",
        "| server | " + " | ".join(f"{scenario.title[:3]} whole cell | after 0.5 s" for scenario in SCENARIOS) + " |",
        "|---|" + "---:|---:|" * len(SCENARIOS),
    ]
    for label, cells in results.items():
        row = [cells.get((scenario.name, top)) for scenario in SCENARIOS]
        lines.append(
            f"| {label} | "
            + " | ".join(f"{cell['p99']:.1f} | {cell['p99_settled']:.1f}" if cell else "- | -" for cell in row)
            + " |"
        )
    lines.append("")
    lines += [
        f"## Where a session waits at {top} connections",
        "",
        f"Each of the {top} connections runs sessions back to back, so a session lasts {top} ÷ sessions/s on average, "
        "however fast the server; the server's scheduling decides in which step that time is spent. Here it is next to "
        "two of the steps: the wait for the greeting (connect → 220, before the server has started on the session) "
        "and the AUTH step. An AUTH latency below the reference's can come with a longer wait for the greeting.",
        "",
        "| server | scenario | session ms (mean) | greeting p50 ms | greeting p99 | AUTH p50 ms | AUTH p99 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for label, cells in results.items():
        for scenario in SCENARIOS[:3]:
            cell = cells.get((scenario.name, top))
            if cell:
                lines.append(
                    f"| {label} | {scenario.title[:3]} | {top * 1000 / max(cell['rate'], 1e-9):.0f} | {cell['greeting_p50']:.1f} | "
                    f"{cell['greeting_p99']:.1f} | {cell['p50']:.1f} | {cell['p99']:.1f} |"
                )
    lines.append("")
    if paired:
        rounds = max(int(pair["rounds"]) for pair in paired.values())
        lines += [
            "## Failed ÷ successful AUTH, interleaved",
            "",
            f"(a) and (b) above are measured a dozen seconds apart, and this machine's speed drifts in between. Here the two "
            f"alternate on one server in {PAIRED_SECONDS:g} s cells, {rounds} round(s) of one each; the median of the rounds' ratios, "
            "and their range. 1.00 = a failed AUTH session costs what a successful one does.",
            "",
            "| server | conns | sessions/s: failed ÷ successful | range | CPU per session: failed ÷ successful | errors |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for (label, concurrency), pair in paired.items():
            lines.append(
                f"| {label} | {concurrency} | {pair['rate']:.2f} | {pair['low']:.2f}–{pair['high']:.2f} | {pair['cpu']:.2f} | {pair['errors']:.0f} |"
            )
        lines += [
            "",
            "Where the CPU goes, per thread of our gateway: µs per session, medians of the same rounds, successful / failed "
            "(a thread is counted where a tick of the kernel's 10 ms clock found it; short cells make these approximate).",
            "",
            "| server | conns | " + " | ".join(THREAD_COLUMNS) + " |",
            "|---|---:|" + "---:|" * len(THREAD_COLUMNS),
        ]
        for (label, concurrency), pair in paired.items():
            if label != "reference":
                per_thread = [pair["threads"].get(name, (0.0, 0.0)) for name in THREAD_COLUMNS]
                shown = [f"{successful:.0f} / {failed:.0f}" for successful, failed in per_thread]
                lines.append(f"| {label} | {concurrency} | " + " | ".join(shown) + " |")
        lines.append("")
    lines += [
        "## Memory",
        "",
        "| server | RSS at start MiB | with 256 idle sessions | 10 MiB message: peak rise | RSS before → after the message |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, mem in memory.items():
        lines.append(
            f"| {label} | {mem['base_mib']:.1f} | {mem['idle256_mib']:.1f} | {mem['msg_peak_rise_mib']:.1f} "
            f"({mem['msg_peak_rise_mib'] / mem['msg_size_mib']:.1f}× the message) | {mem['before_msg_mib']:.1f} → {mem['after_msg_mib']:.1f} |"
        )
    if SCALING:
        label, scaling = SCALING
        ratio, ratio_low, ratio_high = scaling["ratio"]
        lines += [
            "",
            f"## runsmtp --workers ({label}, successful AUTH, 256 connections, not pinned)",
            "",
            f"Both servers run at once and take turns, {scaling['rounds']} cell(s) of {seconds:g} s each; medians, with the range. "
            f"2 workers ÷ 1, cell by cell: {ratio:.2f} ({ratio_low:.2f}–{ratio_high:.2f}).",
            "",
            "| workers | sessions/s | range | AUTH p99 ms | errors |",
            "|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {w} | {r['rate']:.0f} | {r['low']:.0f}–{r['high']:.0f} | {r['p99']:.1f} | {r['errors']:.0f} |"
            for w, r in scaling["workers"].items()
        ]
        lines.append(
            f"\nWith {os.cpu_count()} CPUs shared by the workers, the load generator and the database, "
            "this shows the direction, not the scaling a many-core host would give."
        )
    lines += ["", "![sessions/s and AUTH p99 per concurrency](benchmarks.png)", ""]
    return "\n".join(lines)


def chart(results: dict[str, Cells], concurrencies: list[int], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no chart (make bench installs it)")
        return
    figure, axes = plt.subplots(2, len(SCENARIOS), figsize=(4 * len(SCENARIOS), 7), sharex=True)
    for column, scenario in enumerate(SCENARIOS):
        for label, cells in results.items():
            points = [(c, cells[(scenario.name, c)]) for c in concurrencies if (scenario.name, c) in cells]
            axes[0][column].plot([c for c, _ in points], [cell["rate"] for _, cell in points], marker="o", label=label)
            axes[1][column].plot([c for c, _ in points], [cell["p99"] for _, cell in points], marker="o", label=label)
        axes[0][column].set_title(scenario.title, fontsize=9)
        axes[1][column].set_xscale("log", base=2)
        axes[1][column].set_xlabel("concurrent connections")
    axes[0][0].set_ylabel("sessions/s")
    axes[1][0].set_ylabel("AUTH p99 ms")
    axes[0][0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=90)


def metrics_cost(seconds: float, rounds: int) -> None:
    """The AUTH cells without and with metrics, on two SQLite gateways (each its
    own database file) that take turns (ABBA...), since this machine drifts
    between cells a dozen seconds apart by more than the cost measured here. The
    one with metrics is scraped after each of its cells, as Prometheus would,
    outside the cell's figures (a scrape takes ~3 ms in the metrics thread)."""
    import urllib.request

    python = sys.executable
    servers = {}
    for label in ("without", "with"):
        url = f"sqlite:///{BUILD / f'bench-{label}.sqlite3'}"
        for stale in BUILD.glob(f"bench-{label}.sqlite3*"):
            stale.unlink()
        prepare_database(url)
        env = {**GATEWAY_ENV, "DATABASE_URL": url}
        servers[label] = Server(
            f"ours, SQLite, metrics {label}",
            [python, "manage.py", "runsmtp"],
            with_metrics(env) if label == "with" else env,
        )
    scrape_port = int(servers["with"].env["SMTP_METRICS_PORT"])

    def cell(label: str, scenario: Scenario, concurrency: int) -> dict[str, Any]:
        measured = run_cell(servers[label], scenario, concurrency, seconds)
        if label == "with":
            urllib.request.urlopen(f"http://127.0.0.1:{scrape_port}/metrics", timeout=10).read()
        return measured

    try:
        for scenario in SCENARIOS[:2]:
            for concurrency in (1, 64):
                pairs = alternating(
                    functools.partial(cell, "without", scenario, concurrency),
                    functools.partial(cell, "with", scenario, concurrency),
                    rounds,
                )
                pair = pair_summary(pairs)
                print(
                    f"{scenario.name:10} c={concurrency:<3} sessions/s with ÷ without: median {pair['rate']:.3f} "
                    f"({pair['low']:.3f}-{pair['high']:.3f}); CPU per session: median {pair['cpu']:.3f} "
                    f"({pair['cpu_low']:.3f}-{pair['cpu_high']:.3f}); rates without/with "
                    f"{pair['rates'][0]:.0f}/{pair['rates'][1]:.0f}; errors {pair['errors']:.0f}",
                    flush=True,
                )
    finally:
        for server in servers.values():
            server.stop()


def against(revision: str, seconds: float, rounds: int) -> None:
    """The SQLite cells at 64 connections of this tree against another revision's
    (``git archive`` into var/bench, run with this virtualenv), each its own
    database, alternating short cells (ABBA...) as metrics_cost does. Whichever
    gateway starts second reads a few per cent slow against the same code, so
    the comparison runs twice, each started first once; the table gives the
    median ratio of each order."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", revision], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    tree = BUILD / f"against-{commit}"
    if not (tree / "manage.py").exists():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    roots = {"this tree": ROOT, commit: tree}
    orders = [["this tree", commit], [commit, "this tree"]]
    scenarios = [SCENARIOS[0], SCENARIOS[2], SCENARIOS[3]]
    ratios: dict[str, list[float]] = {}
    for order in orders:
        servers: dict[str, Server] = {}
        try:
            for label in order:
                database = BUILD / f"against-{'main' if label == 'this tree' else commit}.sqlite3"
                for stale in BUILD.glob(database.name + "*"):
                    stale.unlink()
                url = f"sqlite:///{database}"
                prepare_database(url, roots[label])
                servers[label] = Server(
                    label,
                    [sys.executable, "manage.py", "runsmtp"],
                    {**GATEWAY_ENV, "DATABASE_URL": url},
                    cwd=roots[label],
                )
            for scenario in scenarios:
                pairs = alternating(
                    functools.partial(run_cell, servers[commit], scenario, 64, seconds),
                    functools.partial(run_cell, servers["this tree"], scenario, 64, seconds),
                    rounds,
                )
                pair = pair_summary(pairs)
                ratios.setdefault(scenario.name, []).append(pair["rate"])
                print(
                    f"{scenario.name:10} started first: {order[0]:9}  sessions/s this ÷ {commit}: median "
                    f"{pair['rate']:.3f} ({pair['low']:.3f}-{pair['high']:.3f}); CPU per session {pair['cpu']:.3f}; "
                    f"rates {pair['rates'][0]:.0f}/{pair['rates'][1]:.0f}; errors {pair['errors']:.0f}\n"
                    "           µs per session by thread, "
                    + "; ".join(f"{name} {a:.0f}/{b:.0f}" for name, (a, b) in pair["threads"].items()),
                    flush=True,
                )
        finally:
            for server in servers.values():
                server.stop()
    for name, medians in ratios.items():
        print(f"{name:10} this ÷ {commit}, the two orders: {' '.join(f'{m:.3f}' for m in medians)}", flush=True)


def main() -> None:
    global SCALING, METRICS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per cell (default 3)")
    parser.add_argument("--quick", action="store_true", help="concurrency 1 and 64 only, 1 s per cell")
    parser.add_argument("--metrics", action="store_true", help="our servers count and serve metrics")
    parser.add_argument(
        "--metrics-cost", action="store_true", help="only the AUTH cells without and with metrics, alternating"
    )
    parser.add_argument(
        "--against",
        metavar="REV",
        help="only this: the SQLite cells at 64 connections, this tree against git revision REV, alternating",
    )
    parser.add_argument("--rounds", type=int, default=8, help="--metrics-cost, --against: cells of each (default 8)")
    args = parser.parse_args()
    seconds = 1.0 if args.quick else args.seconds
    concurrencies = [1, 64] if args.quick else CONCURRENCY

    build_loadgen()
    if args.metrics_cost:
        metrics_cost(seconds, args.rounds)
        return
    if args.against:
        against(args.against, min(seconds, PAIRED_SECONDS), args.rounds)
        return
    METRICS = args.metrics
    python = sys.executable
    servers: list[tuple[str, list[str], dict[str, str] | None]] = [
        ("reference", [python, "bench/reference_server.py"], None),
    ]
    sqlite_url = f"sqlite:///{BUILD / 'bench.sqlite3'}"
    for stale in BUILD.glob("bench.sqlite3*"):
        stale.unlink()
    prepare_database(sqlite_url)
    servers.append(("ours, SQLite", [python, "manage.py", "runsmtp"], {**GATEWAY_ENV, "DATABASE_URL": sqlite_url}))
    postgres_url = os.environ.get("BENCH_POSTGRES_URL", "postgres://agentmail:agentmail@127.0.0.1:5432/agentmail_bench")
    if fresh_postgres_database(postgres_url):
        prepare_database(postgres_url)
        servers.append(
            ("ours, PostgreSQL", [python, "manage.py", "runsmtp"], {**GATEWAY_ENV, "DATABASE_URL": postgres_url})
        )

    results: dict[str, Cells] = {}
    memory: dict[str, dict[str, Any]] = {}
    paired: dict[tuple[str, int], dict[str, Any]] = {}
    speeds: dict[str, list[float]] = {}
    paired_concurrencies, paired_rounds = ([64], 1) if args.quick else (PAIRED_CONCURRENCY, PAIRED_ROUNDS)
    for label, command, env in servers:
        speeds[label] = [speed_probe()]
        server = Server(label, command, env)
        try:
            cells = results.setdefault(label, {})
            for scenario in SCENARIOS:
                for concurrency in concurrencies:
                    cell = run_cell(server, scenario, concurrency, seconds)
                    cells[(scenario.name, concurrency)] = cell
                    print(
                        f"{label:17} {scenario.name:10} c={concurrency:<4} {cell['rate']:8.0f}/s  cpu {cell['cpu_ms']:.2f} ms  "
                        f"AUTH p50/p95/p99 {cell['p50']:.1f}/{cell['p95']:.1f}/{cell['p99']:.1f} ms  errors {cell['errors']:.0f}",
                        flush=True,
                    )
            for concurrency in paired_concurrencies:
                pair = paired_ratio(
                    server, SCENARIOS[0], SCENARIOS[1], concurrency, paired_rounds, min(seconds, PAIRED_SECONDS)
                )
                paired[(label, concurrency)] = pair
                print(
                    f"{label:17} failed/successful c={concurrency:<4} sessions/s {pair['rate']:.2f} "
                    f"({pair['low']:.2f}-{pair['high']:.2f})  cpu {pair['cpu']:.2f}  errors {pair['errors']:.0f}",
                    flush=True,
                )
        finally:
            server.stop()
        speeds[label].append(speed_probe())
        print(
            f"{label:17} speed probe before/after its cells: {speeds[label][0]:.1f} / {speeds[label][1]:.1f} ms",
            flush=True,
        )
        fresh = Server(label, command, env)  # memory on a fresh process
        try:
            memory[label] = memory_profile(fresh)
        finally:
            fresh.stop()

    label, command, env = servers[-1]  # PostgreSQL when there is one: SQLite has one writer
    SCALING = (label, scaling_profile(command, env or {}, seconds, 1 if args.quick else SCALING_ROUNDS))
    report = render(results, memory, paired, speeds, seconds, concurrencies)
    # A quick run is a smoke test: it must not replace the published results.
    docs = BUILD if args.quick else ROOT / "docs"
    docs.mkdir(exist_ok=True)
    (docs / "benchmarks.md").write_text(report)
    chart(results, concurrencies, docs / "benchmarks.png")
    print("\n" + report)


if __name__ == "__main__":
    main()
