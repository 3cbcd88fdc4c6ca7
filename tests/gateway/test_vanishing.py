"""Clients that vanish at any point (after connecting, mid-AUTH, mid-DATA, mid-TLS
handshake, with a reset): no partial message, no leaked task, session or file
descriptor, and memory back near its baseline."""

from __future__ import annotations

import asyncio
import gc
import ipaddress
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from inboxes.models import Message
from smtpgateway.models import AuthAttempt
from tests.helpers import LiveGateway
from tests.vanishing import RECORDED, open_fds, swarm


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


@pytest.mark.parametrize(
    "sessions", [pytest.param(600, id="600"), pytest.param(6000, id="6000", marks=pytest.mark.slow)]
)
def test_vanishing_clients_leave_nothing_behind(
    gateway_factory: Any, scenarios: None, certificate: tuple[Path, Path], sessions: int
) -> None:
    cert, key = certificate
    gateway = gateway_factory(
        tls_cert_file=cert, tls_key_file=key, tls_port=0, throttle_exempt=(ipaddress.ip_network("127.0.0.0/8"),)
    )
    asyncio.run(swarm(gateway.port, gateway.tls_port, 40))  # opens the database threads' connections
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
