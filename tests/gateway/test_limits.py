"""Abuse limits over real sockets: AUTH failures per session and per address,
connections, commands before AUTH, idle and DATA timeouts."""

from __future__ import annotations

import ipaddress
import socket
import time
from datetime import timedelta
from typing import Any

import pytest

from inboxes.models import Message
from smtpgateway.auth.limits import RateLimit
from smtpgateway.models import AuthAttempt
from tests.helpers import UNKNOWN_KEY, VALID_EMAIL, VALID_INBOX, VALID_KEY, LiveGateway, Wire, b64

GOOD = "AUTH PLAIN " + b64(f"\0{VALID_INBOX}\0{VALID_KEY}")


BAD = "AUTH PLAIN " + b64(f"\0{VALID_INBOX}\0{UNKNOWN_KEY}")


LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


def wire_from(gateway: LiveGateway, source: str = "127.0.0.1") -> Wire:
    """A client from another loopback address."""
    return Wire(gateway.port, source=source)


def ehlo(wire: Wire) -> Wire:
    assert wire.command("EHLO tester.example").startswith("250 ")
    return wire


def test_third_failure_in_a_session_closes_it(gateway: LiveGateway) -> None:
    wire = ehlo(gateway.wire())
    assert wire.command(BAD) == "535 5.7.8 Authentication credentials invalid"
    assert wire.command("AUTH PLAIN " + b64("garbage")) == "501 5.5.2 Can't split auth value"
    # The third failure is answered as the error it is, then the session closes.
    assert wire.command(BAD) == "535 5.7.8 Authentication credentials invalid"
    assert wire.reply() == ["421 4.7.0 Too many authentication failures"]
    assert wire.closed_by_server()
    gateway.settle()
    assert list(AuthAttempt.objects.order_by("created_at").values_list("reason", flat=True)) == [
        "API_KEY_NOT_FOUND",
        "MALFORMED",
        "API_KEY_NOT_FOUND",
    ]


def test_failure_delay_holds_only_that_session(gateway_factory: Any, scenarios: None) -> None:
    gateway = gateway_factory(auth_failure_delay=0.6)
    wire = ehlo(gateway.wire())
    started = time.monotonic()
    wire.send(BAD)
    # While that failure is held back, another session is served at once.
    other = ehlo(gateway.wire())
    probe = time.monotonic()
    assert other.command("NOOP") == "250 2.0.0 OK"
    assert time.monotonic() - probe < 0.3
    assert wire.reply() == ["535 5.7.8 Authentication credentials invalid"]
    assert time.monotonic() - started >= 0.6
    # Success is not delayed.
    started = time.monotonic()
    assert wire.command(GOOD).startswith("235 ")
    assert time.monotonic() - started < 0.3


def test_exempt_addresses_get_no_delay(gateway_factory: Any, scenarios: None) -> None:
    gateway = gateway_factory(auth_failure_delay=2.0, throttle_exempt=LOOPBACK)
    wire = ehlo(gateway.wire())
    started = time.monotonic()
    assert wire.command(BAD).startswith("535 ")
    assert time.monotonic() - started < 1.0


def test_rate_limit_per_address_across_sessions(gateway_factory: Any, scenarios: None) -> None:
    gateway = gateway_factory(auth_rate_limit=RateLimit(3, timedelta(minutes=10)))
    for _ in range(3):
        assert ehlo(gateway.wire()).command(BAD) == "535 5.7.8 Authentication credentials invalid"
    # Now even the right credentials are not checked from this address...
    assert ehlo(gateway.wire()).command(GOOD) == "454 4.7.0 Temporary authentication failure"
    gateway.settle()
    assert AuthAttempt.objects.filter(reason="RATE_LIMITED", success=False).count() == 1
    # ...while another address (here 127.0.0.2) is unaffected: no lockout of the inbox.
    assert ehlo(wire_from(gateway, "127.0.0.2")).command(GOOD) == "235 2.7.0 Authentication successful"
    gateway.settle()
    attempt = AuthAttempt.objects.get(success=True)
    assert attempt.remote_addr == "127.0.0.2"


def test_rate_limit_window_passes(gateway_factory: Any, scenarios: None) -> None:
    gateway = gateway_factory(auth_rate_limit=RateLimit(2, timedelta(seconds=1)))
    for _ in range(2):
        ehlo(gateway.wire()).command(BAD)
    assert ehlo(gateway.wire()).command(GOOD).startswith("454 ")
    time.sleep(1.1)
    assert ehlo(gateway.wire()).command(GOOD).startswith("235 ")


def test_rate_limit_is_shared_by_gateways_on_one_database(gateway_factory: Any, scenarios: None) -> None:
    """Counted in the database, not in a process: two gateways, one budget."""
    limit = RateLimit(4, timedelta(minutes=10))
    first, second = gateway_factory(auth_rate_limit=limit), gateway_factory(auth_rate_limit=limit)
    for gateway in (first, second, first, second):
        assert ehlo(gateway.wire()).command(BAD).startswith("535 ")
        gateway.settle()  # shared once committed: milliseconds after the reply
    assert ehlo(second.wire()).command(GOOD).startswith("454 ")
    assert ehlo(first.wire()).command(GOOD).startswith("454 ")


@pytest.mark.parametrize("run", range(3))
def test_the_shared_limit_is_exact_when_failures_are_answered_at_once(
    gateway_factory: Any, scenarios: None, run: int
) -> None:
    """No failure delay, no waiting for commits between steps: a failure's
    record is committed before its reply, so the other gateway counts it as soon
    as the client could try again. (Answered first and committed up to 20 ms
    later, B's two failures were not yet counted when the right key came to A.)"""
    limit = RateLimit(5, timedelta(minutes=10))
    first, second = gateway_factory(auth_rate_limit=limit), gateway_factory(auth_rate_limit=limit)
    assert first.config.auth_failure_delay == 0
    for gateway in (first, first, first, second, second):
        assert ehlo(gateway.wire()).command(BAD).startswith("535 ")
    assert ehlo(first.wire()).command(GOOD).startswith("454 ")


def test_exempt_addresses_are_never_rate_limited(gateway_factory: Any, scenarios: None) -> None:
    gateway = gateway_factory(auth_rate_limit=RateLimit(1, timedelta(minutes=10)), throttle_exempt=LOOPBACK)
    for _ in range(3):
        ehlo(gateway.wire()).command(BAD)
    assert ehlo(gateway.wire()).command(GOOD).startswith("235 ")


def through_proxy(gateway: LiveGateway, client: str) -> Wire:
    """A session from ``client``, as a load balancer announces it (PROXY v1): how
    a test on loopback gets clients from anywhere."""
    family = "TCP6" if ":" in client else "TCP4"
    balancer = "::1" if family == "TCP6" else "127.0.0.1"
    return Wire(gateway.port, preamble=f"PROXY {family} {client} {balancer} 40000 587\r\n".encode())


def test_an_ipv6_client_is_counted_by_its_network(gateway_factory: Any, scenarios: None) -> None:
    """A host gets a whole /64 and can take a new address for every attempt: the
    limit counts the /64 (SMTP_IPV6_CLIENT_PREFIX), so rotating gains nothing.
    The next /64 is another client; the records keep each real address."""
    gateway = gateway_factory(proxy_protocol=True, auth_rate_limit=RateLimit(2, timedelta(minutes=10)))
    assert ehlo(through_proxy(gateway, "2001:db8:1:2::a")).command(BAD).startswith("535 ")
    assert ehlo(through_proxy(gateway, "2001:db8:1:2:ffff:ffff:ffff:ffff")).command(BAD).startswith("535 ")
    assert ehlo(through_proxy(gateway, "2001:db8:1:2:1234:5678:9abc:def0")).command(GOOD) == (
        "454 4.7.0 Temporary authentication failure"
    )
    assert ehlo(through_proxy(gateway, "2001:db8:1:3::a")).command(GOOD).startswith("235 ")
    # An IPv4 client written IPv4-mapped (a dual-stack listener) is its IPv4 address.
    assert ehlo(through_proxy(gateway, "::ffff:192.0.2.1")).command(BAD).startswith("535 ")
    gateway.settle()
    rows = AuthAttempt.objects.order_by("created_at", "id").values_list("remote_addr", "client_network", "reason")
    assert list(rows) == [
        ("2001:db8:1:2::a", "2001:db8:1:2::/64", "API_KEY_NOT_FOUND"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64", "API_KEY_NOT_FOUND"),
        ("2001:db8:1:2:1234:5678:9abc:def0", "2001:db8:1:2::/64", "RATE_LIMITED"),
        ("2001:db8:1:3::a", "2001:db8:1:3::/64", "OK"),
        ("::ffff:192.0.2.1", "192.0.2.1", "API_KEY_NOT_FOUND"),
    ]


def test_ipv6_client_prefix_128_counts_each_address(gateway_factory: Any, scenarios: None) -> None:
    gateway = gateway_factory(
        proxy_protocol=True, auth_rate_limit=RateLimit(1, timedelta(minutes=10)), ipv6_client_prefix=128
    )
    assert ehlo(through_proxy(gateway, "2001:db8::a")).command(BAD).startswith("535 ")
    assert ehlo(through_proxy(gateway, "2001:db8::b")).command(GOOD).startswith("235 ")
    assert ehlo(through_proxy(gateway, "2001:db8::a")).command(GOOD).startswith("454 ")


def test_connection_limit_per_address(gateway_factory: Any, scenarios: None) -> None:
    gateway = gateway_factory(max_connections_per_ip=2)
    first, second = gateway.wire(), gateway.wire()
    refused = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    assert refused.recv(200) == b"421 4.7.0 Too many connections, try again later\r\n"
    assert refused.recv(10) == b""
    # Another address still gets in; and a freed slot is usable again.
    assert wire_from(gateway, "127.0.0.3").command("NOOP") == "250 2.0.0 OK"
    first.command("QUIT")
    time.sleep(0.1)
    assert gateway.wire().command("NOOP") == "250 2.0.0 OK"
    assert second.command("NOOP") == "250 2.0.0 OK"


def test_connection_limit_counts_an_ipv6_client_by_its_network(gateway_factory: Any, scenarios: None) -> None:
    gateway = gateway_factory(proxy_protocol=True, max_connections_per_ip=2)
    held = [through_proxy(gateway, "2001:db8:5:6::1"), through_proxy(gateway, "2001:db8:5:6::2")]
    refused = through_proxy(gateway, "2001:db8:5:6:7::3")
    assert refused.greeting == ["421 4.7.0 Too many connections, try again later"]
    assert refused.closed_by_server()
    assert through_proxy(gateway, "2001:db8:5:7::1").command("NOOP") == "250 2.0.0 OK"
    assert all(wire.command("NOOP") == "250 2.0.0 OK" for wire in held)


def test_connection_limit_overall(gateway_factory: Any, scenarios: None) -> None:
    gateway = gateway_factory(max_connections=2, throttle_exempt=LOOPBACK)
    held = [gateway.wire(), wire_from(gateway, "127.0.0.2")]
    refused = socket.create_connection(("127.0.0.1", gateway.port), timeout=10, source_address=("127.0.0.3", 0))
    assert refused.recv(200) == b"421 4.7.0 Too many connections, try again later\r\n"
    assert all(w.command("NOOP") == "250 2.0.0 OK" for w in held)
    assert gateway.server.handler.connections.total == 2


def test_commands_before_auth_are_bounded(gateway: LiveGateway) -> None:
    wire = gateway.wire()
    for _ in range(10):
        wire.command("NOOP")
    assert wire.command("NOOP") == "421 4.7.0 Too many commands without authentication"
    assert wire.closed_by_server()
    # After AUTH there is no such budget.
    wire = ehlo(gateway.wire())
    wire.command(GOOD)
    for _ in range(30):
        assert wire.command("NOOP") == "250 2.0.0 OK"


def test_unknown_commands_count_too_and_are_not_echoed(gateway_factory: Any, scenarios: None) -> None:
    wire = gateway_factory(max_unauth_commands=0).wire()
    assert wire.command("FOO") == '500 5.5.2 Error: command "FOO" not recognized'
    assert wire.command("\x1b[2JX") == "500 5.5.2 Error: command not recognized"
    for _ in range(2):
        wire.command("BAR")
    assert wire.command("BAZ") == "421 4.7.0 Too many unrecognized commands, closing connection"
    assert wire.closed_by_server()


def test_idle_timeout_says_421(gateway_factory: Any, scenarios: None) -> None:
    gateway = gateway_factory(idle_timeout=0.5)
    wire = ehlo(gateway.wire())
    started = time.monotonic()
    assert wire.reply() == [f"421 4.4.2 {gateway.config.hostname} Error: timeout exceeded"]
    assert 0.4 < time.monotonic() - started < 3
    assert wire.closed_by_server()


def test_data_phase_has_an_overall_deadline(gateway_factory: Any, scenarios: None) -> None:
    """A client dripping its message cannot hold the session past data_timeout."""
    gateway = gateway_factory(data_timeout=1.0, idle_timeout=30)
    wire = ehlo(gateway.wire())
    wire.command(GOOD)
    wire.command(f"MAIL FROM:<{VALID_EMAIL}>")
    wire.command("RCPT TO:<a@example.com>")
    assert wire.command("DATA").startswith("354 ")
    started = time.monotonic()
    with pytest.raises((ConnectionResetError, BrokenPipeError)):
        for _ in range(50):
            wire.sock.sendall(b"drip\r\n")
            time.sleep(0.1)
        wire.reply()
    assert time.monotonic() - started < 4
    assert not Message.objects.exists()
