"""Graceful shutdown: stop accepting, tell idle sessions, let a DATA in progress
finish, write every record, exit 0."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from inboxes.models import Message
from smtpgateway.models import AuthAttempt
from tests.helpers import VALID_EMAIL, VALID_INBOX, VALID_KEY, LiveGateway, Wire, b64

GOOD = "AUTH PLAIN " + b64(f"\0{VALID_INBOX}\0{VALID_KEY}")


def start_data(wire: Wire) -> None:
    """Authenticate and begin a message whose end has not been sent yet."""
    wire.command("EHLO tester.example")
    assert wire.command(GOOD).startswith("235 ")
    wire.command(f"MAIL FROM:<{VALID_EMAIL}>")
    wire.command("RCPT TO:<a@example.com>")
    assert wire.command("DATA").startswith("354 ")
    wire.sock.sendall(b"From: test@agentmail.dev\r\nSubject: in flight\r\n\r\nfirst half\r\n")


def stop_in_background(gateway: LiveGateway) -> Any:
    return asyncio.run_coroutine_threadsafe(gateway.server.stop(), gateway.loop)


def test_stop_drains_a_data_in_progress(gateway: LiveGateway) -> None:
    idle = Wire(gateway.port)
    idle.command("EHLO idle.example")
    busy = Wire(gateway.port)
    start_data(busy)

    stopping = stop_in_background(gateway)
    assert idle.reply() == ["421 4.3.2 Service shutting down"]
    assert idle.closed_by_server()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", gateway.port), timeout=5)

    busy.sock.sendall(b"second half\r\n.\r\n")
    assert busy.reply()[-1].startswith("250 2.0.0 Ok: queued as ")
    assert busy.command("NOOP") == "421 4.3.2 Service shutting down"
    stopping.result(10)
    assert bytes(Message.objects.get().raw).endswith(b"first half\r\nsecond half\r\n")
    assert AuthAttempt.objects.filter(reason="OK").count() == 1


def test_grace_period_ends_an_unfinished_data(gateway_factory: Any, scenarios: None) -> None:
    gateway = gateway_factory(shutdown_grace=0.5)
    busy = Wire(gateway.port)
    start_data(busy)
    started = time.monotonic()
    stop_in_background(gateway).result(10)
    assert 0.4 < time.monotonic() - started < 3
    assert busy.closed_by_server()
    assert not Message.objects.exists()  # nothing half-stored


def test_silent_tls_client_does_not_hold_shutdown(
    gateway_factory: Any, scenarios: None, certificate: tuple[Path, Path]
) -> None:
    """An idle TLS client that never answers the server's close_notify: stop() must
    not wait for it (asyncio would, for up to 30 s) when nothing is busy."""
    import smtplib
    import ssl

    cert, key = certificate
    gateway = gateway_factory(tls_cert_file=cert, tls_key_file=key, tls_port=0, shutdown_grace=20)
    silent = smtplib.SMTP_SSL(
        "127.0.0.1", gateway.tls_port, context=ssl.create_default_context(cafile=str(cert)), timeout=30
    )
    silent.ehlo("silent.example")  # then never reads again
    started = time.monotonic()
    stop_in_background(gateway).result(30)
    assert time.monotonic() - started < 5
    assert silent.sock is not None
    silent.sock.close()
