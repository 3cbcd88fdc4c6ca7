"""``manage.py createapikey``: issue a key and print its plaintext once."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from apikeys.models import ApiKey
from apikeys.scopes import KNOWN_SCOPES, SMTP_SEND
from inboxes.models import Inbox, Organization


class Command(BaseCommand):
    help = "Create an API key for an organization and print it once. Only its digest is stored."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--org", required=True, help="Organization public id, e.g. org_abc.")
        parser.add_argument(
            "--scope",
            action="append",
            dest="scopes",
            help=f"A scope to grant; repeat for several (default {SMTP_SEND}). Known: {', '.join(KNOWN_SCOPES)}.",
        )
        parser.add_argument("--name", default="", help="What the key is for, shown to operators.")
        parser.add_argument(
            "--inbox",
            action="append",
            dest="inboxes",
            metavar="INBOX_ID",
            help="Limit the key to this inbox of the organization (inb_...); repeat for several (default: all).",
        )
        parser.add_argument("--expires-in-days", type=int, help="Expire the key after this many days (default: never).")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            organization = Organization.objects.get(public_id=options["org"])
        except Organization.DoesNotExist:
            raise CommandError(f"No organization {options['org']!r}.") from None
        days = options["expires_in_days"]
        if days is not None and days <= 0:
            raise CommandError("--expires-in-days must be a positive number of days.")
        expires_at = timezone.now() + timedelta(days=days) if days else None
        asked = options["inboxes"] or []
        inboxes = list(Inbox.objects.filter(inbox_id__in=asked))
        unknown = sorted(set(asked) - {inbox.inbox_id for inbox in inboxes})
        if unknown:
            raise CommandError(f"No inbox {', '.join(unknown)}.")
        try:
            api_key, plaintext = ApiKey.objects.create_key(
                organization=organization,
                name=options["name"],
                scopes=options["scopes"] or [SMTP_SEND],
                expires_at=expires_at,
                inboxes=inboxes,
            )
        except ValidationError as error:
            raise CommandError(" ".join(error.messages)) from None
        limited = f", limited to {', '.join(sorted(asked))}" if asked else ""
        self.stderr.write(
            f"Created key {api_key.prefix}… for {organization.public_id} with scopes {', '.join(api_key.scopes)}"
            f"{limited}."
        )
        self.stderr.write("This is the only time the key is shown; store it now:")
        self.stdout.write(plaintext)
