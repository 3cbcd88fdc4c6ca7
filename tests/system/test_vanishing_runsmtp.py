"""Clients vanishing at every stage against a real `runsmtp`: its memory and
file descriptors return to their baseline."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.runsmtp import RunSmtp
from tests.vanishing import fd_count, swarm


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize(
    "sessions", [pytest.param(2000, id="2000"), pytest.param(20000, id="20000", marks=pytest.mark.slow)]
)
def test_runsmtp_memory_and_fds_return_to_baseline(scenarios: None, leak_guard: None, sessions: int) -> None:
    server = RunSmtp()
    pid = server.process.pid
    try:
        asyncio.run(swarm(server.port, None, 300, concurrency=20))  # warm up pools and caches
        asyncio.run(asyncio.sleep(0.5))
        fds_before, rss_before = fd_count(pid), rss_kib(pid)
        asyncio.run(swarm(server.port, None, sessions, concurrency=20))
        asyncio.run(asyncio.sleep(0.5))
        fds_after, rss_after = fd_count(pid), rss_kib(pid)
    finally:
        server.stop()
    print(
        f"\nrunsmtp after {sessions} vanishing sessions: fds {fds_before} -> {fds_after}, RSS {rss_before} -> {rss_after} KiB"
    )
    assert fds_after <= fds_before + 1
    assert rss_after <= rss_before + 8 * 1024, f"RSS grew by {rss_after - rss_before} KiB"
