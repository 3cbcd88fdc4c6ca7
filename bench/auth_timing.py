"""Reply-time distributions of failed AUTH, per failed check.

Starts `manage.py runsmtp` twice on free loopback ports (failure delay 0, then
0.1 s; no rate limit, loopback not exempt) against the demo database
(`make setup` first), sends interleaved AUTH attempts that fail for
"key not found", "inbox not found" and "wrong organization", and prints
percentiles for each. Usage: .venv/bin/python bench/auth_timing.py [--samples N]
"""

from __future__ import annotations

import argparse
import base64
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = {
    "API_KEY_NOT_FOUND": ("inb_valid1234567890", "am_doesnotexist0123456789012345678901"),
    "INBOX_NOT_FOUND": ("inb_doesnotexist00000", "am_validkey12345678901234567890123456"),
    "ORGANIZATION_MISMATCH": ("inb_valid1234567890", "am_wrongorg45678901234567890123456789"),
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_gateway(delay: float) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {
        **os.environ,
        "SMTP_AUTH_FAILURE_DELAY": str(delay),
        "SMTP_AUTH_RATE_LIMIT": "0",
        "SMTP_THROTTLE_EXEMPT": "",
        "SMTP_AUTH_MAX_FAILURES": "0",
        "SMTP_TLS_PORT": "0",
        "LOG_LEVEL": "ERROR",
    }
    process = subprocess.Popen(
        [sys.executable, "manage.py", "runsmtp", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, port
        except OSError:
            time.sleep(0.05)
    raise SystemExit("runsmtp did not start (run `make setup` first)")


def one_attempt(sock_file, username: str, password: str) -> float:  # type: ignore[no-untyped-def]
    payload = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
    started = time.perf_counter()
    sock_file.write(f"AUTH PLAIN {payload}\r\n".encode())
    sock_file.flush()
    reply = sock_file.readline()
    elapsed = time.perf_counter() - started
    assert reply.startswith(b"535 "), reply
    return elapsed


def measure(port: int, samples: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {reason: [] for reason in CASES}
    for _ in range(samples):
        for reason, (username, password) in CASES.items():
            with socket.create_connection(("127.0.0.1", port)) as sock, sock.makefile("rwb") as stream:
                stream.readline()
                stream.write(b"EHLO bench\r\n")
                stream.flush()
                while not stream.readline().startswith(b"250 "):
                    pass
                times[reason].append(one_attempt(stream, username, password))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=200, help="attempts per reason and delay (default 200)")
    args = parser.parse_args()
    for delay in (0.0, 0.1):
        process, port = start_gateway(delay)
        try:
            times = measure(port, args.samples)
        finally:
            process.terminate()
            process.wait()
        print(f"\nfailure delay {delay:g} s, {args.samples} samples each (ms)")
        print(f"{'reason':<24}{'p10':>9}{'p50':>9}{'p90':>9}{'p99':>9}{'mean':>9}{'stdev':>9}")
        for reason, values in times.items():
            q = statistics.quantiles([v * 1000 for v in values], n=100)
            print(
                f"{reason:<24}{q[9]:9.2f}{q[49]:9.2f}{q[89]:9.2f}{q[98]:9.2f}{statistics.mean(values) * 1000:9.2f}{statistics.stdev(values) * 1000:9.2f}"
            )


if __name__ == "__main__":
    main()
