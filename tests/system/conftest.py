"""Fixtures of the system tier: `runsmtp` in a subprocess."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import DEMO_KEYS, secret_markers
from tests.runsmtp import RunSmtp


@pytest.fixture
def runsmtp(scenarios: None, leak_guard: None) -> Iterator[RunSmtp]:
    """`runsmtp` with the demo data; its output must hold no demo key in any form."""
    server = RunSmtp()
    yield server
    if server.process.poll() is None:
        server.stop()
    output = server.output
    assert not [marker for marker in secret_markers(DEMO_KEYS) if marker in output], "a secret in runsmtp's output"
