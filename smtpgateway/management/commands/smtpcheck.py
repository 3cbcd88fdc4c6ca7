"""``manage.py smtpcheck [HOST:PORT] [--starttls | --tls] [--auth INBOX]``: a real
EHLO (and AUTH) against a running gateway, as a Nagios check: one line, exit
0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (``smtpgateway/runtime/smtpcheck.py``)."""

from __future__ import annotations

import os
from typing import Any, NoReturn

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from smtpgateway.runtime.smtpcheck import (
    CheckResult,
    CheckTarget,
    Security,
    Status,
    Thresholds,
    check_smtp,
    local_address,
    parse_address,
)

# The API key for --auth comes from here, never from the command line (which
# `ps` shows to every user of the host). Read by this command only, not by the
# settings: no other process should hold it.
KEY_VARIABLE = "SMTPCHECK_KEY"


class Command(BaseCommand):
    help = (
        "Check a running gateway like a Nagios plugin: connect, EHLO, optionally STARTTLS or implicit TLS and "
        f"AUTH PLAIN (the key from ${KEY_VARIABLE}); print one line; exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN."
    )

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        parser = super().create_parser(prog_name, subcommand, **kwargs)

        # A usage error is UNKNOWN to a monitor, not argparse's 2 (CRITICAL).
        def usage_error(message: str) -> NoReturn:
            parser.exit(Status.UNKNOWN, f"SMTP UNKNOWN - {message}\n")

        parser.error = usage_error  # type: ignore[method-assign]
        return parser

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "address",
            nargs="?",
            metavar="HOST:PORT",
            help="The gateway (default SMTP_HOST and SMTP_PORT, or SMTP_TLS_PORT with --tls; 0.0.0.0 means 127.0.0.1).",
        )
        security = parser.add_mutually_exclusive_group()
        security.add_argument("--starttls", action="store_true", help="STARTTLS after EHLO, then EHLO again.")
        security.add_argument("--tls", action="store_true", help="TLS from the first byte (implicit TLS, port 465).")
        parser.add_argument(
            "--auth", metavar="INBOX", help=f"AUTH PLAIN as this inbox with the key in ${KEY_VARIABLE}."
        )
        parser.add_argument("--cafile", help="Trust this CA or self-signed certificate (default: the system's CAs).")
        parser.add_argument("--timeout", type=float, default=10.0, help="Seconds for each step (default 10).")
        parser.add_argument(
            "-w", "--warning", type=float, default=2.0, help="WARNING if it takes longer, in seconds (default 2)."
        )
        parser.add_argument(
            "-c", "--critical", type=float, default=8.0, help="CRITICAL if it takes longer, in seconds (default 8)."
        )
        parser.add_argument(
            "--certificate-days",
            type=float,
            default=14.0,
            help="WARNING if the TLS certificate ends within this many days (default 14).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        security: Security = "tls" if options["tls"] else "starttls" if options["starttls"] else "plain"
        key = os.environ.get(KEY_VARIABLE, "") if options["auth"] else None
        if options["auth"] and not key:
            self.finish(Status.UNKNOWN, f"--auth needs the API key in ${KEY_VARIABLE}")
        default_port = settings.SMTP_TLS_PORT if security == "tls" else settings.SMTP_PORT
        try:
            host, port = parse_address(options["address"] or local_address(settings.SMTP_HOST), default_port)
        except ValueError as error:
            hint = " (no SMTP_TLS_PORT is set: give HOST:PORT)" if default_port is None else ""
            self.finish(Status.UNKNOWN, f"{error}{hint}")
        target = CheckTarget(host, port, security, options["auth"], key, options["cafile"])
        thresholds = Thresholds(
            options["timeout"], options["warning"], options["critical"], options["certificate_days"]
        )
        result: CheckResult = check_smtp(target, thresholds)
        self.stdout.write(result.line(thresholds))
        raise SystemExit(result.status)

    def finish(self, status: Status, summary: str) -> NoReturn:
        self.stdout.write(f"SMTP {status.name} - {summary}")
        raise SystemExit(status)
