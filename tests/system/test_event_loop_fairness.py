"""A client pipelining a long burst against a real `runsmtp` does not hold its
event loop: other clients are answered meanwhile."""

from __future__ import annotations

import time

from tests.gateway.test_limits import GOOD, ehlo
from tests.helpers import Wire


def test_a_pipelining_client_does_not_hold_the_event_loop(scenarios: None) -> None:
    """An authenticated client sends 40,000 NOOPs in one burst; another client's
    NOOPs are answered meanwhile, each within a fifth of the burst (a few ms, in
    fact). Served in one go, a burst held the loop for all of its length: one
    command per turn now. Against runsmtp in its own process, so the clients do
    not share its GIL."""
    from tests.runsmtp import RunSmtp

    server = RunSmtp()
    try:
        other = ehlo(Wire(server.port))
        assert other.command(GOOD).startswith("235 ")
        burst = ehlo(Wire(server.port))
        assert burst.command(GOOD).startswith("235 ")
        count = 40_000
        started = time.monotonic()
        burst.sock.sendall(b"NOOP\r\n" * count)
        answered, waits = b"", []
        burst.sock.settimeout(0.005)
        while answered.count(b"\r\n") < count:
            try:
                answered += burst.sock.recv(1 << 20)
            except TimeoutError:
                pass
            asked = time.monotonic()
            assert other.command("NOOP") == "250 2.0.0 OK"
            waits.append(time.monotonic() - asked)
        took = time.monotonic() - started
        assert answered.count(b"250 2.0.0 OK\r\n") == count
        assert len(waits) >= 5 and max(waits) < took / 5, (max(waits), took, len(waits))
    finally:
        assert server.stop()[0] == 0
