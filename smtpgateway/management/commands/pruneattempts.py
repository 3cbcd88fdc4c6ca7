"""``manage.py pruneattempts``: delete old AUTH attempt records (for cron or a
systemd timer; safe while gateways run)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from smtpgateway.auth.limits import RateLimit
from smtpgateway.storage.retention import DEFAULT_BATCH_SIZE, cutoff, prune_attempts
from smtpgateway.storage.sending_limits import delete_expired_holds, delete_old_tallies


class Command(BaseCommand):
    help = (
        "Delete AuthAttempt rows older than --days, in small batches (never inside the AUTH rate limit's window), "
        "and expired recipient holds."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days", type=float, default=90, help="Keep this many days of records (default 90).")
        parser.add_argument(
            "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="Rows per transaction (default %(default)s)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1.")
        try:
            keep = timedelta(days=options["days"])
        except (ValueError, OverflowError):
            raise CommandError(f"--days must be a number of days, not {options['days']}.") from None
        try:
            before = cutoff(keep, RateLimit.parse(settings.SMTP_AUTH_RATE_LIMIT))
        except ValueError as error:
            raise CommandError(str(error)) from None
        deleted = prune_attempts(before, batch_size=options["batch_size"])
        self.stdout.write(f"Deleted {deleted} AuthAttempt rows created before {before:%Y-%m-%d %H:%M:%S %Z}.")
        holds = delete_expired_holds(timezone.now())
        delete_old_tallies(timezone.now())
        if holds:
            self.stdout.write(f"Deleted {holds} expired recipient holds (left by a gateway that stopped abruptly).")
