"""The metrics port's parts without a gateway: the database probe of /readyz
(its timeout, one probe at a time), the HTTP answers, and metrics that are off."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import OperationalError

from smtpgateway.metrics import OFF, GatewayMetrics, gateway_families
from smtpgateway.reasons import Reason
from smtpgateway.runtime.health import DatabaseProbe
from smtpgateway.runtime.monitoring import MonitoringServer
from tests.helpers import http_get, parse_metrics, sample


@pytest.mark.django_db(transaction=True)
def test_the_probe_reaches_the_real_database() -> None:
    assert DatabaseProbe(5.0).problem() is None


def test_a_database_that_hangs_is_one_stuck_probe_not_one_per_check() -> None:
    calls = []
    release = threading.Event()

    def hang() -> None:
        calls.append(1)
        release.wait(10)

    probe = DatabaseProbe(0.3, reach=hang)
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        said = list(pool.map(lambda _: probe.problem(), range(4)))
    assert said == ["database not reachable within 0.3s (DATABASE_TIMEOUT)"] * 4
    assert time.monotonic() - started < 2
    assert len(calls) == 1  # the checks waited for the one probe under way
    release.set()
    time.sleep(0.1)
    assert probe.problem() is None and len(calls) == 2


def test_a_database_error_is_named_by_its_type_only() -> None:
    def refuse() -> None:
        raise OperationalError('connection to server at "db.internal" failed: password authentication failed')

    assert DatabaseProbe(1.0, reach=refuse).problem() == "database not reachable (OperationalError)"


def test_the_port_answers_404_elsewhere_and_500_on_a_bug(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> bytes:
        raise RuntimeError("a bug")

    server = MonitoringServer("127.0.0.1", 0, exposition=broken, health=None)
    server.start()
    try:
        assert http_get(server.port, "/metrics") == (500, "internal error\n")
        assert http_get(server.port, "/healthz")[0] == 404  # no health checks given
        assert http_get(server.port, "/")[0] == 404
    finally:
        server.stop()
    assert "The metrics port failed to answer /metrics" in caplog.text


def test_metrics_off_count_nothing() -> None:
    families = gateway_families()
    before = parse_metrics(_text(families.registry))
    OFF.auth_attempt("PLAIN", Reason.OK)
    OFF.auth_success.observe(0.1)
    OFF.flush(sessions=5, records_kept=3, records_dropped=2, bodies_buffered=1, lag=0.0)
    assert parse_metrics(_text(families.registry)) == before
    on = GatewayMetrics(enabled=True)
    on.auth_attempt("CRAM-MD5", Reason.UNSUPPORTED_MECHANISM)  # a name no label may hold
    on.flush(sessions=0, records_kept=0, records_dropped=0, bodies_buffered=0, lag=0.0)
    after = parse_metrics(_text(families.registry))
    labels = {"mechanism": "other", "outcome": "failure", "reason": "UNSUPPORTED_MECHANISM"}
    assert sample(after, "agentmail_smtp_auth_attempts_total", **labels) == (
        before.get(("agentmail_smtp_auth_attempts_total", frozenset(labels.items())), 0) + 1
    )
    assert "CRAM-MD5" not in _text(families.registry)


def _text(registry: object) -> str:
    from prometheus_client import CollectorRegistry, generate_latest

    assert isinstance(registry, CollectorRegistry)
    return generate_latest(registry).decode()
