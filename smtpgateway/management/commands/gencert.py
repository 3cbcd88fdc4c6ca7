"""``manage.py gencert``: a self-signed certificate for development."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from smtpgateway.tls import write_self_signed

DEFAULT_CERT = "var/tls/dev-cert.pem"
DEFAULT_KEY = "var/tls/dev-key.pem"


class Command(BaseCommand):
    help = "Write a self-signed TLS certificate and key for development (under var/, which git ignores)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--hostname", default=settings.SMTP_HOSTNAME, help="Name the certificate is for (default SMTP_HOSTNAME)."
        )
        parser.add_argument(
            "--cert",
            default=settings.SMTP_TLS_CERT_FILE or DEFAULT_CERT,
            help="Certificate path (default SMTP_TLS_CERT_FILE or var/tls/dev-cert.pem).",
        )
        parser.add_argument(
            "--key",
            default=settings.SMTP_TLS_KEY_FILE or DEFAULT_KEY,
            help="Private key path (default SMTP_TLS_KEY_FILE or var/tls/dev-key.pem).",
        )
        parser.add_argument("--days", type=int, default=365, help="Validity in days (default 365).")
        parser.add_argument(
            "--key-type", choices=["ec", "rsa"], default="ec", help="ec (P-256, the default) or rsa (2048 bits)."
        )
        parser.add_argument(
            "--if-missing", action="store_true", help="Do nothing if the certificate file already exists."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        cert, key = settings.BASE_DIR / Path(options["cert"]), settings.BASE_DIR / Path(options["key"])
        if options["if_missing"] and cert.exists():
            return
        summary = write_self_signed(cert, key, options["hostname"], options["days"], options["key_type"])
        self.stdout.write(f"Wrote {cert} and {key}: {summary}")
