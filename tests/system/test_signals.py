"""SIGTERM and SIGINT to a real `runsmtp`: it drains, writes every record and
exits 0."""

from __future__ import annotations

import signal

import pytest

from inboxes.models import Message
from smtpgateway.models import AuthAttempt
from tests.gateway.test_shutdown import GOOD, start_data
from tests.helpers import Wire
from tests.runsmtp import RunSmtp


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_drains_and_exits_zero(scenarios: None, leak_guard: None, signum: int) -> None:
    server = RunSmtp()
    busy = Wire(server.port)
    start_data(busy)
    idle = Wire(server.port)
    idle.command("EHLO idle.example")
    server.process.send_signal(signum)
    assert idle.reply() == ["421 4.3.2 Service shutting down"]
    busy.sock.sendall(b"second half\r\n.\r\n")
    assert busy.reply()[-1].startswith("250 2.0.0 Ok: queued as ")
    assert busy.command("QUIT") == "421 4.3.2 Service shutting down"
    code, out, err = server.stop()  # already stopping: this only waits
    assert code == 0, err
    assert "agentmail-smtp stopped." in out and "Traceback" not in err
    assert Message.objects.get().subject == "in flight"


def test_sigterm_writes_the_records_of_replies_already_sent(scenarios: None, leak_guard: None) -> None:
    """AUTH is answered before its row is committed (milliseconds later): a
    SIGTERM right after the last reply must still leave one row per attempt."""
    server = RunSmtp()
    wires = [Wire(server.port) for _ in range(40)]
    for wire in wires:
        assert wire.command("EHLO burst.example").startswith("250 ")
    for wire in wires:
        wire.send(GOOD)  # all forty in flight at once
    answers = [wire.reply()[-1] for wire in wires]
    code, _, err = server.stop()  # at once, while their rows may still be pending
    assert code == 0, err[-2000:]
    assert answers == ["235 2.7.0 Authentication successful"] * 40
    assert AuthAttempt.objects.filter(reason="OK").count() == 40
