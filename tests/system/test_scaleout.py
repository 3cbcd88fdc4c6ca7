"""Scale-out: PROXY protocol (v1, v2), several workers on one port, and HAProxy in
front of two gateway processes sharing one database."""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from smtpgateway.models import AuthAttempt
from smtpgateway.session.state import client_address
from tests.helpers import VALID_INBOX, VALID_KEY, Wire, b64, free_port
from tests.runsmtp import ROOT, RunSmtp

HAPROXY_CONFIG = ROOT / "deploy" / "haproxy.cfg"
GOOD = "AUTH PLAIN " + b64(f"\0{VALID_INBOX}\0{VALID_KEY}")


def proxy_v1(client: str, port: int) -> bytes:
    return f"PROXY TCP4 {client} 127.0.0.1 {port} 25\r\n".encode()


def proxy_v2(client: str, port: int) -> bytes:
    signature = b"\r\n\r\n\x00\r\nQUIT\n"
    addresses = (
        ipaddress.IPv4Address(client).packed + ipaddress.IPv4Address("127.0.0.1").packed + struct.pack("!HH", port, 25)
    )
    return signature + bytes([0x21, 0x11]) + struct.pack("!H", len(addresses)) + addresses


def session_through_proxy(port: int, header: bytes) -> Wire:
    return Wire(port, preamble=header)


@pytest.mark.parametrize("header", [proxy_v1, proxy_v2], ids=["v1", "v2"])
def test_proxy_header_gives_the_real_client_address(gateway_factory: Any, scenarios: None, header: Any) -> None:
    gateway = gateway_factory(proxy_protocol=True)
    wire = session_through_proxy(gateway.port, header("203.0.113.7", 40123))
    assert wire.greeting[0].startswith("220 ")
    wire.command("EHLO client.example")
    assert wire.command(GOOD).startswith("235 ")
    gateway.settle()
    attempt = AuthAttempt.objects.get()
    assert (attempt.remote_addr, attempt.remote_port) == ("203.0.113.7", 40123)


def test_connection_without_proxy_header_is_closed(gateway_factory: Any, scenarios: None) -> None:
    gateway = gateway_factory(proxy_protocol=True)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(b"EHLO no-proxy.example\r\n")
        assert sock.recv(100) == b""  # closed, no greeting
    assert gateway.server.handler.connections.total == 0


def test_connection_limits_count_the_real_client(gateway_factory: Any, scenarios: None) -> None:
    gateway = gateway_factory(proxy_protocol=True, max_connections_per_ip=1)
    first = session_through_proxy(gateway.port, proxy_v1("198.51.100.1", 1000))
    other = session_through_proxy(gateway.port, proxy_v1("198.51.100.2", 1000))  # same balancer, another client
    assert first.greeting[0].startswith("220 ") and other.greeting[0].startswith("220 ")
    again = session_through_proxy(gateway.port, proxy_v1("198.51.100.1", 1001))
    assert again.greeting == ["421 4.7.0 Too many connections, try again later"]


def proxy_v2_unix(source: bytes) -> bytes:
    signature = b"\r\n\r\n\x00\r\nQUIT\n"
    addresses = source.ljust(108, b"\0") + b"/run/gateway.sock".ljust(108, b"\0")
    return signature + bytes([0x21, 0x31]) + struct.pack("!H", len(addresses)) + addresses


def test_an_ipv6_zone_is_not_part_of_the_client_address() -> None:
    """A link-local client's socket address carries a zone ("%eth0", an interface
    of this host), which PostgreSQL's inet refuses: one such record had failed its
    whole batch. Loopback has no link-local addresses, so this checks the function
    both the socket's and the PROXY header's address go through."""
    assert client_address("fe80::7%eth0") == "fe80::7"
    assert client_address(ipaddress.ip_address("fe80::7%2")) == "fe80::7"
    assert client_address("203.0.113.7") == "203.0.113.7"
    assert client_address(ipaddress.IPv6Address("2001:db8::1")) == "2001:db8::1"
    assert client_address(b"/run/haproxy/client.sock") is None


def test_a_proxy_header_without_a_client_address_is_refused(gateway_factory: Any, scenarios: None) -> None:
    """PROXY v2 for a client on a UNIX socket names a path, not an address: there is
    nothing to record, rate-limit or count, so the connection is closed like one
    with no header; the next client is served."""
    gateway = gateway_factory(proxy_protocol=True)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(proxy_v2_unix(b"/run/haproxy/client.sock") + b"EHLO unix.example\r\n")
        assert sock.recv(100) == b""  # closed, no greeting
    wire = session_through_proxy(gateway.port, proxy_v2("203.0.113.9", 40000))
    wire.command("EHLO next.example")
    assert wire.command(GOOD).startswith("235 ")
    gateway.settle()
    assert list(AuthAttempt.objects.values_list("remote_addr", flat=True)) == ["203.0.113.9"]
    assert gateway.server.handler.connections.total == 1


def children_of(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_workers_share_one_port(scenarios: None, leak_guard: None) -> None:
    server = RunSmtp("--workers", "2")
    try:
        workers = children_of(server.process.pid)
        assert len(workers) == 2
        assert server.stdout().count("listening on") == 1  # one banner for all workers
        for _ in range(20):
            wire = Wire(server.port)
            wire.command("EHLO many.example")
            assert wire.command(GOOD).startswith("235 ")
            wire.close()
    finally:
        code, _, err = server.stop()
    assert code == 0, err[-2000:]
    assert AuthAttempt.objects.filter(success=True).count() == 20
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed (.ci/run installs it)")
def test_haproxy_in_front_of_two_gateways(scenarios: None, leak_guard: None) -> None:
    """The shipped deploy/haproxy.cfg, unchanged: only its address variables are set."""
    gateways = [RunSmtp("--proxy-protocol"), RunSmtp("--proxy-protocol")]
    front = free_port()
    variables = {
        "AGENTMAIL_SUBMISSION_BIND": f"127.0.0.1:{front}",
        "AGENTMAIL_GATEWAY_A": f"127.0.0.1:{gateways[0].port}",
        "AGENTMAIL_GATEWAY_B": f"127.0.0.1:{gateways[1].port}",
    }
    haproxy = subprocess.Popen(
        ["haproxy", "-db", "-f", str(HAPROXY_CONFIG)],
        env={**os.environ, **variables},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", front), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        for n in range(10):
            # The client comes from 127.0.0.9; HAProxy reaches the gateways from 127.0.0.1.
            wire = Wire(front, source="127.0.0.9")
            wire.command("EHLO behind-haproxy.example")
            assert wire.command(GOOD).startswith("235 "), n
            wire.command("QUIT")
            wire.close()
    finally:
        haproxy.send_signal(signal.SIGTERM)
        haproxy.wait(timeout=10)
        outputs = [gateway.stop()[2] for gateway in gateways]
    addresses = set(AuthAttempt.objects.values_list("remote_addr", flat=True))
    assert addresses == {"127.0.0.9"}, addresses
    assert AuthAttempt.objects.filter(success=True).count() == 10
    assert all("Auth succeeded" in output for output in outputs), "both gateways served sessions"


def test_worker_exit_statuses() -> None:
    from smtpgateway.runtime.supervisor import exit_status

    assert exit_status(0, stopping=True) == 0 and exit_status(3, stopping=False) == 3
    assert exit_status(-signal.SIGTERM, stopping=True) == 0  # stopped by us while starting
    assert exit_status(-signal.SIGTERM, stopping=False) == 128 + signal.SIGTERM
    assert exit_status(-signal.SIGKILL, stopping=True) == 128 + signal.SIGKILL
