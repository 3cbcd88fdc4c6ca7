"""Deleting old ``AuthAttempt`` rows (``manage.py pruneattempts``), also while
gateways are running.

Every AUTH writes a row, so the table grows for as long as nobody prunes it: at
1,000 AUTHs a second, 86 million rows a day, each in six indexes. Rows go oldest
first, through the ``created_at`` index, in small batches of one short
transaction each. On SQLite a transaction holds the database's only write lock,
and one DELETE of millions of rows would hold every commit of every gateway (a
message's 250 waits for its commit) for as long as it ran; between batches the
gateways' committers get the lock back.

Rows inside the AUTH rate limit's window are never deleted: the limit counts
them, and pruning them would hand an attacker a fresh budget.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from smtpgateway.auth.limits import RateLimit
from smtpgateway.models import AuthAttempt

DEFAULT_BATCH_SIZE = 1000
# Between batches: long enough for a waiting committer to take the write lock.
PAUSE_BETWEEN_BATCHES = 0.01


def cutoff(keep: timedelta, rate_limit: RateLimit | None) -> datetime:
    """The time before which rows may go, keeping ``keep``; refused (ValueError)
    if that would reach into the rate limit's window."""
    if keep <= timedelta(0):
        raise ValueError("The rows to keep must cover a positive time.")
    if rate_limit is not None and keep < rate_limit.window:
        raise ValueError(
            f"Keeping {keep} would delete failures the AUTH rate limit still counts (its window is {rate_limit.window})."
        )
    return timezone.now() - keep


def prune_attempts(before: datetime, batch_size: int = DEFAULT_BATCH_SIZE, pause: float = PAUSE_BETWEEN_BATCHES) -> int:
    """Delete the rows created before ``before``; return how many went."""
    deleted = 0
    while True:
        with transaction.atomic():
            ids = list(
                AuthAttempt.objects.filter(created_at__lt=before)
                .order_by("created_at")
                .values_list("id", flat=True)[:batch_size]
            )
            if ids:
                # No other model refers to AuthAttempt, so this is one DELETE.
                AuthAttempt.objects.filter(id__in=ids).delete()
        deleted += len(ids)
        if len(ids) < batch_size:
            return deleted
        time.sleep(pause)
