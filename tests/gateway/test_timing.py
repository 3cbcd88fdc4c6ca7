"""Failure replies must not tell, by their timing, which check failed.

Two mechanisms (smtpgateway.auth.rules and smtpgateway.session.protocol): once both formats are
valid, the key and the inbox are always both looked up, so "key not found",
"inbox not found" and "wrong organization" run the same queries; and a failure is
answered at (start of AUTH + SMTP_AUTH_FAILURE_DELAY), not (work + delay), which
hides whatever difference is left. This test measures the reply-time distribution
of the three and requires them to agree within noise. `bench/auth_timing.py`
prints the distributions, with and without the delay.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import pytest

from tests.helpers import UNKNOWN_INBOX, UNKNOWN_KEY, VALID_INBOX, VALID_KEY, WRONG_ORG_KEY, Wire, b64

CASES = {
    "API_KEY_NOT_FOUND": (VALID_INBOX, UNKNOWN_KEY),
    "INBOX_NOT_FOUND": (UNKNOWN_INBOX, VALID_KEY),
    "ORGANIZATION_MISMATCH": (VALID_INBOX, WRONG_ORG_KEY),
}
DELAY = 0.1


def reply_seconds(port: int, username: str, password: str) -> float:
    wire = Wire(port)
    wire.command("EHLO timing.example")
    started = time.perf_counter()
    reply = wire.command("AUTH PLAIN " + b64(f"\0{username}\0{password}"))
    elapsed = time.perf_counter() - started
    wire.close()
    assert reply == "535 5.7.8 Authentication credentials invalid"
    return elapsed


def test_failure_reply_times_do_not_reveal_the_failed_check(
    gateway_factory: Any, scenarios: None, request: pytest.FixtureRequest
) -> None:
    gateway = gateway_factory(auth_failure_delay=DELAY, auth_rate_limit=None)
    rounds = 60 if request.config.getoption("--run-slow") else 12
    samples: dict[str, list[float]] = {reason: [] for reason in CASES}
    for _ in range(rounds):  # interleaved, so drift affects all three alike
        for reason, (username, password) in CASES.items():
            samples[reason].append(reply_seconds(gateway.port, username, password))

    medians = {reason: statistics.median(times) for reason, times in samples.items()}
    print("\nmedian reply ms: " + ", ".join(f"{r} {m * 1000:.2f}" for r, m in medians.items()))
    for reason, times in samples.items():
        assert min(times) >= DELAY, f"{reason} answered before the delay"
        assert statistics.median(times) < DELAY + 0.02, f"{reason}: {sorted(times)}"
    assert max(medians.values()) - min(medians.values()) < 0.003, medians
