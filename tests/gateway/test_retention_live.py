"""Pruning AuthAttempt rows while a live gateway records new ones."""

from __future__ import annotations

import threading
from datetime import timedelta

from django.db import connection
from django.utils import timezone

from smtpgateway.models import AuthAttempt
from smtpgateway.storage.retention import prune_attempts
from tests.helpers import VALID_INBOX, VALID_KEY, LiveGateway, auth
from tests.unit.test_retention import make_attempts


def test_pruning_while_a_gateway_records(gateway: LiveGateway) -> None:
    """Batches are short transactions: a gateway committing meanwhile (SQLite's
    single write lock included) keeps every record and answers every AUTH."""
    make_attempts(3000, timedelta(days=100), "old")
    before = timezone.now() - timedelta(days=90)
    pruned: list[int] = []

    def prune() -> None:
        try:
            pruned.append(prune_attempts(before, batch_size=100))
        finally:
            connection.close()  # this thread's own connection

    pruning = threading.Thread(target=prune)
    pruning.start()
    replies = []
    for _ in range(30):
        with gateway.smtp() as client:
            replies.append(auth(client, "PLAIN", VALID_INBOX, VALID_KEY)[0])
    pruning.join(60)
    gateway.settle()
    assert pruned == [3000] and replies == [235] * 30
    assert AuthAttempt.objects.filter(session_id__startswith="old").count() == 0
    assert AuthAttempt.objects.filter(success=True).count() == 30
