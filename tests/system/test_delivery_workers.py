"""``manage.py deliver`` as real processes: several workers on one database
deliver each (message, recipient) exactly once; SIGTERM lets a delivery in
flight finish; a worker killed outright leaves its recipients to another once
its lease runs out."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from delivery.models import DeliveryAttempt, Recipient
from tests.helpers import (
    VALID_EMAIL,
    VALID_INBOX,
    VALID_KEY,
    LiveGateway,
    database_url,
    eventually,
    free_port,
    sample,
    scrape,
)
from tests.runsmtp import ROOT
from tests.sinks import Sink


class Deliver:
    """``manage.py deliver`` in a subprocess, on this test run's database."""

    def __init__(self, relay: str, **env: str) -> None:
        self._out = tempfile.NamedTemporaryFile("w+", prefix="deliver-", suffix=".log")
        environment = {
            **os.environ,
            "DATABASE_URL": database_url(),
            "DEBUG": "true",
            "DELIVERY_RELAY_URL": relay,
            "DELIVERY_POLL_INTERVAL": "0.05",
            "DELIVERY_METRICS_PORT": "0",
            **env,
        }
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "deliver"],
            cwd=ROOT,
            env=environment,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 60
        while "Quit with" not in self.output():
            assert self.process.poll() is None and time.monotonic() < deadline, (
                f"deliver did not start: {self.output()[-2000:]}"
            )
            time.sleep(0.05)

    def output(self) -> str:
        return Path(self._out.name).read_text()

    def stop(self, signum: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        return self.process.wait(timeout=60)


def submit_many(gateway: LiveGateway, count: int, recipients: list[str]) -> None:
    with gateway.smtp() as client:
        client.login(VALID_INBOX, VALID_KEY)
        for n in range(count):
            body = f"From: {VALID_EMAIL}\r\nSubject: n{n}\r\nMessage-ID: <n{n}@agentmail.dev>\r\n\r\nbody {n}\r\n"
            client.sendmail(VALID_EMAIL, recipients, body.encode())


@pytest.fixture
def sink() -> Iterator[Sink]:
    started = Sink("plain").start()
    yield started
    started.stop()


def delivered() -> int:
    return Recipient.objects.filter(status="delivered").count()


def test_four_workers_deliver_each_recipient_exactly_once(gateway: LiveGateway, sink: Sink) -> None:
    messages, recipients = 250, ["a@example.com", "b@example.com"]
    submit_many(gateway, messages, recipients)
    workers = [Deliver(sink.url(), DELIVERY_CONNECTIONS="2") for _ in range(4)]
    try:
        eventually(lambda: delivered() == messages * len(recipients), timeout=120)
    finally:
        codes = [worker.stop() for worker in workers]
    assert codes == [0, 0, 0, 0]
    counts = Counter(sink.handler.deliveries())
    assert len(counts) == messages * len(recipients)
    assert set(counts.values()) == {1}, [key for key, seen in counts.items() if seen > 1][:5]
    workers_that_worked = sum("Delivered " in worker.output() for worker in workers)
    assert workers_that_worked >= 2  # the work was shared, not done by one


def test_sigterm_lets_the_delivery_in_flight_finish(gateway: LiveGateway, sink: Sink) -> None:
    sink.handler.data_delay = 1.5
    submit_many(gateway, 1, ["a@example.com"])
    worker = Deliver(sink.url())
    eventually(lambda: Recipient.objects.filter(lease_owner__startswith="w-").exists())
    time.sleep(0.3)  # the DATA is in flight
    assert worker.stop(signal.SIGTERM) == 0
    assert Recipient.objects.get().status == "delivered"
    assert "agentmail-smtp delivery stopped" in worker.output() and "Traceback" not in worker.output()


def test_a_killed_worker_leaves_its_recipients_to_another_after_the_lease(gateway: LiveGateway, sink: Sink) -> None:
    sink.handler.data_delay = 3.0
    submit_many(gateway, 1, ["a@example.com"])
    first = Deliver(sink.url(), DELIVERY_LEASE="2")
    eventually(lambda: Recipient.objects.filter(lease_owner__startswith="w-").exists())
    first.stop(signal.SIGKILL)
    lease_until = Recipient.objects.get().lease_until  # renewed no more
    assert lease_until is not None
    sink.handler.data_delay = 0.0
    second = Deliver(sink.url(), DELIVERY_LEASE="2")
    try:
        eventually(lambda: Recipient.objects.get().status == "delivered", timeout=30)
    finally:
        assert second.stop() == 0
    retried = DeliveryAttempt.objects.get(result="delivered")
    assert retried.started_at >= lease_until  # not before the killed worker's lease ran out
    assert Recipient.objects.get().lease_owner == ""
    # At least once: the killed worker's DATA may have reached the sink too.
    assert 1 <= len(sink.handler.received) <= 2


def test_runsmtp_warns_when_nothing_delivers(scenarios: None, leak_guard: None) -> None:
    from tests.runsmtp import RunSmtp

    server = RunSmtp(env={"DELIVERY_RELAY_URL": ""})
    try:
        assert any(
            "DELIVERY_RELAY_URL is not set: accepted mail is queued but not delivered" in line for line in server.banner
        )
    finally:
        server.stop()


def test_deliver_serves_its_metrics(gateway: LiveGateway, sink: Sink) -> None:
    sink.handler.rcpt_replies["later@example.com"] = "451 4.3.0 Try again later"
    submit_many(gateway, 3, ["a@example.com", "later@example.com"])
    port = free_port()
    worker = Deliver(sink.url(), DELIVERY_METRICS_PORT=str(port))
    try:
        assert f"metrics:     http://127.0.0.1:{port}/metrics" in worker.output()

        def attempts(result: str) -> float:
            return sample(scrape(port), "agentmail_smtp_delivery_attempts_total", result=result)

        eventually(lambda: (attempts("delivered"), attempts("deferred")) == (3, 3), timeout=30)
        samples = scrape(port)
        assert sample(samples, "agentmail_smtp_delivery_attempts_total", result="bounced") == 0
        assert sample(samples, "agentmail_smtp_delivery_latency_seconds_count") == 3
        assert sample(samples, "agentmail_smtp_delivery_upstream_duration_seconds_count") == 3
        # The queue is read every 5 s: the three deferred recipients wait for their retry.
        eventually(
            lambda: sample(scrape(port), "agentmail_smtp_delivery_queue_recipients", state="deferred") == 3,
            timeout=15,
        )
        samples = scrape(port)
        assert sample(samples, "agentmail_smtp_delivery_queue_recipients", state="queued") == 0
        assert sample(samples, "agentmail_smtp_delivery_oldest_deferred_age_seconds") > 0
        assert not any(name.startswith("agentmail_smtp_auth") for name, _ in samples)  # the gateway's are not here
    finally:
        assert worker.stop() == 0
