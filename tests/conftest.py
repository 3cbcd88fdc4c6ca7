"""Shared fixtures: demo data, a live gateway, and the no-secret-leaks guard."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from django.core.management import call_command

from smtpgateway.tls import write_self_signed
from tests.helpers import DEMO_KEYS, GatewayFactory, LiveGateway, secret_markers


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run long load, fuzz and timing tests")


TIERS = ("unit", "gateway", "system", "browser")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = Path(item.path).parent.name
        assert tier in TIERS, f"{item.nodeid}: a test lives in tests/unit, tests/gateway, tests/system or tests/browser"
        item.add_marker(tier)
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="long run: use --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def log_lines_stay_with_their_test() -> Iterator[None]:
    """The log writer thread writes behind; let it write a test's lines while
    pytest still captures that test, not over a later test's output or the summary."""
    yield
    for handler in logging.getLogger().handlers:
        handler.flush()


@pytest.fixture
def scenarios(transactional_db: None) -> None:
    """The demo organizations, inboxes and keys (`manage.py loaddata scenarios`)."""
    call_command("loaddata", "scenarios", verbosity=0)


@pytest.fixture
def extra_secrets() -> list[str]:
    """Plaintexts a test creates; the leak guard looks for these too."""
    return []


@pytest.fixture
def leak_guard(caplog: pytest.LogCaptureFixture, extra_secrets: list[str]) -> Iterator[None]:
    """Capture every log record at DEBUG (aiosmtpd's included) and, after the test,
    fail if any key or AUTH payload appears in the logs or in stored rows."""
    caplog.set_level(logging.DEBUG)
    for name in ("mail.log", "smtpgateway", "apikeys", "inboxes"):
        caplog.set_level(logging.DEBUG, logger=name)
    yield
    markers = secret_markers(list(DEMO_KEYS) + extra_secrets)
    # In teardown, caplog.text holds only the teardown phase: read every phase.
    formatter = logging.Formatter("%(name)s %(message)s")
    phases: tuple[Literal["setup"], Literal["call"]] = ("setup", "call")
    log_text = "\n".join(formatter.format(record) for when in phases for record in caplog.get_records(when))
    leaked = sorted(marker for marker in markers if marker in log_text)
    assert not leaked, f"{len(leaked)} secret marker(s) found in the logs"

    from django.db import connection

    with connection.cursor() as cursor:
        for table in ("smtpgateway_authattempt", "apikeys_apikey", "django_session"):
            cursor.execute(f"SELECT * FROM {table}")  # noqa: S608 - fixed table names
            dump = repr(cursor.fetchall())
            found = [marker for marker in markers if marker in dump]
            assert not found, f"a secret is stored in {table}"


@pytest.fixture
def gateway_factory(transactional_db: None, leak_guard: None, caplog: pytest.LogCaptureFixture) -> Iterator[Any]:
    started: list[LiveGateway] = []

    def start(**overrides: Any) -> LiveGateway:
        live = LiveGateway(**overrides).start()
        started.append(live)
        return live

    yield start
    for live in started:
        live.stop()
    from smtpgateway.storage.records import recorder

    assert len(recorder) == 0, "the gateway stopped with AuthAttempt records unwritten"
    if started:
        assert caplog.get_records("call"), "no log records were captured: the leak guard would see nothing"


@pytest.fixture
def gateway(gateway_factory: GatewayFactory, scenarios: None) -> LiveGateway:
    """A gateway with the demo data, on a free loopback port."""
    return gateway_factory()


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for mail.test and 127.0.0.1: (cert file, key file)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    write_self_signed(cert, key, "mail.test")
    return cert, key


@pytest.fixture
def client_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    """A client that verifies the gateway's certificate (127.0.0.1 is in its SANs)."""
    return ssl.create_default_context(cafile=str(certificate[0]))
