"""A bounded load test on loopback: many concurrent sessions mixing good and bad
credentials; every session gets the right reply, and every attempt is recorded."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Any

import pytest

from smtpgateway.models import AuthAttempt
from tests.helpers import SCENARIOS, b64


async def auth_session(port: int, username: str, password: str) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await reader.readline()
        writer.write(b"EHLO load.example\r\nAUTH PLAIN " + b64(f"\0{username}\0{password}").encode() + b"\r\n")
        while (line := await reader.readline()).startswith(b"250"):
            pass
        writer.write(b"QUIT\r\n")
        await writer.drain()
        return line.decode().rstrip("\r\n")
    finally:
        writer.close()


async def run_load(port: int, sessions: int) -> tuple[list[tuple[int, str]], float]:
    rng = random.Random(500)
    plan = [rng.choice(SCENARIOS) for _ in range(sessions)]
    started = time.monotonic()
    replies = await asyncio.gather(*(asyncio.wait_for(auth_session(port, s.username, s.password), 60) for s in plan))
    return [(scenario.number, reply) for scenario, reply in zip(plan, replies, strict=True)], time.monotonic() - started


@pytest.mark.parametrize(
    "sessions", [pytest.param(500, id="500"), pytest.param(3000, id="3000", marks=pytest.mark.slow)]
)
def test_concurrent_sessions_all_answered_and_recorded(gateway_factory: Any, scenarios: None, sessions: int) -> None:
    # Production delay on failures; no per-address limits, since every client here is 127.0.0.1.
    gateway = gateway_factory(
        auth_failure_delay=1.0, auth_rate_limit=None, max_connections_per_ip=0, max_connections=sessions + 10
    )
    results, seconds = asyncio.run(run_load(gateway.port, sessions))
    expected = {scenario.number: scenario.reply for scenario in SCENARIOS}
    wrong = [(number, reply) for number, reply in results if reply != expected[number]]
    assert not wrong, f"{len(wrong)} wrong replies, e.g. {wrong[:3]}"
    print(f"\n{sessions} concurrent sessions answered in {seconds:.2f}s")
    gateway.settle()
    assert AuthAttempt.objects.count() == sessions
    by_reason = Counter(AuthAttempt.objects.values_list("reason", flat=True))
    planned = Counter(next(s.reason for s in SCENARIOS if s.number == number) for number, _ in results)
    assert by_reason == planned
