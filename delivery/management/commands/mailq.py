"""``manage.py mailq``: the queue as Postfix's ``mailq`` prints it."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from delivery.models import Recipient
from delivery.states import PENDING, RecipientStatus
from inboxes.models import Message


class Command(BaseCommand):
    help = "List the messages still to deliver: queue id, size, time, sender, recipients with why they wait."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--limit", type=int, default=1000, help="At most this many messages (default 1000).")

    def handle(self, *args: Any, **options: Any) -> None:
        pending = (
            Recipient.objects.filter(status__in=PENDING)
            .order_by("message__created_at", "id")
            .values_list("message__queue_id", "address", "status", "last_reply", "next_attempt_at", "lease_owner")
        )
        waiting: dict[str, list[str]] = defaultdict(list)
        for queue_id, address, status, reply, due, owner in pending.iterator():
            if queue_id not in waiting and len(waiting) >= options["limit"]:
                break
            if owner:
                why = f"being delivered by {owner}"
            elif status == RecipientStatus.QUEUED:
                why = "not tried yet"
            else:
                why = f"{reply or 'deferred'}; next try {due:%Y-%m-%d %H:%M:%S %Z}"
            waiting[queue_id].append(f"    ({why})\n                                         {address}")
        if not waiting:
            self.stdout.write("Mail queue is empty")
            return
        self.stdout.write("-Queue ID-        --Size-- ----Arrival Time---- -Sender/Recipient-------")
        messages = Message.objects.filter(queue_id__in=waiting).values_list(
            "queue_id", "size", "created_at", "envelope_from"
        )
        recipients = 0
        for queue_id, size, created_at, sender in sorted(messages, key=lambda row: row[2]):
            self.stdout.write(f"{queue_id:17} {size:8} {created_at:%a %b %d %H:%M:%S} {sender or 'MAILER-DAEMON'}")
            for line in waiting[queue_id]:
                self.stdout.write(line)
                recipients += 1
            self.stdout.write("")
        self.stdout.write(f"-- {len(waiting)} message(s), {recipients} recipient(s) to deliver.")
