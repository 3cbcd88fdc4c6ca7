"""Clients that vanish at any point (after connecting, mid-AUTH, mid-DATA, mid-TLS
handshake, with a reset): no partial message, no leaked task, session or file
descriptor, and memory back near its baseline."""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import os
import random
import socket
import struct
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from inboxes.models import Message
from smtpgateway.models import AuthAttempt
from tests.helpers import VALID_EMAIL, VALID_INBOX, VALID_KEY, LiveGateway, b64
from tests.test_commands import RunSmtp

STAGES = ["connect", "greeting", "ehlo", "auth-login-midway", "authenticated", "mid-data", "mid-tls", "reset"]
# What each stage leaves in AuthAttempt: (reason or None)
RECORDED = {"auth-login-midway": "ABORTED", "authenticated": "OK"}


async def vanish(port: int, tls_port: int | None, stage: str) -> None:
    if stage == "mid-tls":
        reader, writer = await asyncio.open_connection("127.0.0.1", tls_port)
        writer.write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(20))  # a ClientHello, cut short
        await writer.drain()
        writer.close()
        return
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if stage == "connect":
            return
        await reader.readline()
        if stage == "greeting":
            return
        writer.write(b"EHLO vanishing.example\r\n")
        while not (line := await reader.readline()).startswith(b"250 "):
            if not line:
                raise ConnectionError("closed by the server after EHLO")
        if stage == "ehlo":
            return
        if stage == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST
            return
        if stage == "auth-login-midway":
            writer.write(b"AUTH LOGIN\r\n")
            await reader.readline()
            writer.write(b64(VALID_INBOX).encode() + b"\r\n")
            await reader.readline()  # the password prompt; we leave instead
            return
        writer.write(f"AUTH PLAIN {b64(chr(0) + VALID_INBOX + chr(0) + VALID_KEY)}\r\n".encode())
        reply = await reader.readline()
        if not reply.startswith(b"235"):
            raise ConnectionError(f"AUTH answered {reply[:40]!r}")
        if stage == "authenticated":
            return
        writer.write(f"MAIL FROM:<{VALID_EMAIL}>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n".encode())
        for _ in range(3):
            await reader.readline()
        writer.write(b"Subject: never finished\r\n\r\n" + b"x" * 5000 + b"\r\n")
        await writer.drain()
    finally:
        writer.close()


async def swarm(port: int, tls_port: int | None, sessions: int, concurrency: int = 50) -> Counter[str]:
    rng = random.Random(1234)
    choices = STAGES if tls_port else [stage for stage in STAGES if stage != "mid-tls"]
    stages = [rng.choice(choices) for _ in range(sessions)]
    gate = asyncio.Semaphore(concurrency)
    surprises: list[str] = []

    async def one(stage: str) -> None:
        async with gate:
            try:
                await asyncio.wait_for(vanish(port, tls_port, stage), 10)
            except (OSError, asyncio.TimeoutError) as error:
                surprises.append(f"{stage}: {error!r}")

    await asyncio.gather(*(one(stage) for stage in stages))
    assert not surprises, f"{len(surprises)} sessions did not go as planned, e.g. {surprises[:3]}"
    return Counter(stages)


def fd_count(pid: int | str = "self") -> int:
    return len(open_fds(pid))


def open_fds(pid: int | str = "self") -> list[str]:
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:  # the directory listing's own descriptor
            pass
    return sorted(targets)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def loop_state(gateway: LiveGateway) -> tuple[int, int, int]:
    async def probe() -> tuple[int, int, int]:
        return len(asyncio.all_tasks()) - 1, len(gateway.server.sessions), gateway.server.handler.connections.total

    return asyncio.run_coroutine_threadsafe(probe(), gateway.loop).result(5)


def wait_until_quiet(gateway: LiveGateway, baseline: tuple[int, int, int]) -> tuple[int, int, int]:
    for _ in range(100):
        state = loop_state(gateway)
        if state == baseline:
            return state
        asyncio.run(asyncio.sleep(0.05))
    return state


@pytest.mark.parametrize("sessions", [pytest.param(600, id="600"), pytest.param(6000, id="6000", marks=pytest.mark.slow)])
def test_vanishing_clients_leave_nothing_behind(
    gateway_factory: Any, scenarios: None, certificate: tuple[Path, Path], sessions: int
) -> None:
    cert, key = certificate
    gateway = gateway_factory(
        tls_cert_file=cert, tls_key_file=key, tls_port=0, throttle_exempt=(ipaddress.ip_network("127.0.0.0/8"),)
    )
    asyncio.run(swarm(gateway.port, gateway.tls_port, 40))  # opens the worker's database connection
    baseline = wait_until_quiet(gateway, (0, 0, 0))
    gateway.settle()  # the warm-up's records committed before they are cleared
    AuthAttempt.objects.all().delete()  # (also opens this thread's own connection)
    fds_before = open_fds()

    counts = asyncio.run(swarm(gateway.port, gateway.tls_port, sessions))

    assert baseline == (1, 0, 0)  # only the periodic flush task; no session, no connection slot
    assert wait_until_quiet(gateway, baseline) == baseline
    gc.collect()
    fds_after = open_fds()
    assert len(fds_after) <= len(fds_before) + 1, (fds_before, fds_after)
    assert not Message.objects.exists()  # no partial message from the mid-DATA ones
    gateway.settle()
    recorded = Counter(AuthAttempt.objects.values_list("reason", flat=True))
    expected = Counter({reason: counts[stage] for stage, reason in RECORDED.items()})
    expected["OK"] += counts["mid-data"]
    assert recorded == expected


@pytest.mark.parametrize("sessions", [pytest.param(2000, id="2000"), pytest.param(20000, id="20000", marks=pytest.mark.slow)])
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
    print(f"\nrunsmtp after {sessions} vanishing sessions: fds {fds_before} -> {fds_after}, RSS {rss_before} -> {rss_after} KiB")
    assert fds_after <= fds_before + 1
    assert rss_after <= rss_before + 8 * 1024, f"RSS grew by {rss_after - rss_before} KiB"
