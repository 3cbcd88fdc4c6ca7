"""``manage.py dkimkey``: make DKIM signing keys and show their DNS records."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import IntegrityError
from django.utils import timezone

from delivery.models import DkimKey
from delivery.signing import new_key
from delivery.states import DkimAlgorithm


class Command(BaseCommand):
    help = "Create a DKIM key for a domain (dkimkey add DOMAIN) or list the keys and their DNS records (dkimkey list)."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        add = actions.add_parser("add", help="Create a key and print the DNS TXT record to publish.")
        add.add_argument("domain", help="The From domain to sign for, e.g. agentmail.dev.")
        add.add_argument("--selector", help="The selector (default: the algorithm and the month, e.g. rsa202612).")
        add.add_argument(
            "--algorithm",
            choices=[DkimAlgorithm.RSA_SHA256.value, DkimAlgorithm.ED25519_SHA256.value],
            default=DkimAlgorithm.RSA_SHA256.value,
            help="rsa-sha256 (2048 bits, the default) or ed25519-sha256.",
        )
        actions.add_parser("list", help="Print every key's DNS record (never a private key).")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["action"] == "list":
            for key in DkimKey.objects.order_by("domain", "selector"):
                state = "active" if key.active else "inactive"
                self.stdout.write(f"{key.dns_record}  ; {key.algorithm}, {state}")
            return
        domain = options["domain"].strip().lower().rstrip(".")
        if not domain or "." not in domain:
            raise CommandError(f"{options['domain']!r} is not a domain name.")
        algorithm = options["algorithm"]
        selector = options["selector"] or f"{'ed' if algorithm.startswith('ed25519') else 'rsa'}{timezone.now():%Y%m}"
        private, public = new_key(algorithm)
        try:
            key = DkimKey.objects.create(
                domain=domain, selector=selector, algorithm=algorithm, private_key=private, public_key=public
            )
        except IntegrityError:
            raise CommandError(
                f"{domain} already has a key with selector {selector}; choose another --selector."
            ) from None
        self.stdout.write(f"Created {algorithm} key {selector} for {domain}. Publish this TXT record:\n")
        self.stdout.write(key.dns_record)
