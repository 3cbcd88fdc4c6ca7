"""``manage.py runsmtp``: options in, banner out, the server runs until a signal."""

from __future__ import annotations

import asyncio
import errno
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from smtpgateway.server import AUTH_MECHANISMS, GatewayConfig, GatewayServer, serve_until_signalled


def describe_database() -> str:
    """Which database the gateway uses, without credentials."""
    db = settings.DATABASES["default"]
    vendor = db["ENGINE"].rsplit(".", 1)[-1]
    if vendor == "sqlite3":
        return f"SQLite {db['NAME']}"
    host = db.get("HOST") or "local socket"
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"{vendor} {host}{port}/{db['NAME']}"


class Command(BaseCommand):
    help = "Run the SMTP submission gateway until Ctrl-C or SIGTERM."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", help=f"Address to listen on (default SMTP_HOST, {settings.SMTP_HOST}).")
        parser.add_argument("--port", type=int, help=f"Port to listen on (default SMTP_PORT, {settings.SMTP_PORT}).")

    def handle(self, *args: Any, **options: Any) -> None:
        config = GatewayConfig.from_settings(host=options["host"], port=options["port"])
        try:
            asyncio.run(serve_until_signalled(config, on_ready=self.print_banner))
        except OSError as error:
            reason = {
                errno.EADDRINUSE: "that port is already in use",
                errno.EACCES: "permission denied (ports below 1024 need privileges)",
                errno.EADDRNOTAVAIL: "that address is not on this machine",
            }.get(error.errno or 0, error.strerror or str(error))
            raise CommandError(f"Cannot listen on {config.host}:{config.port}: {reason}.") from error
        self.stdout.write("agentmail-smtp stopped.")

    def print_banner(self, server: GatewayServer) -> None:
        config = server.config
        auth_policy = "requires TLS" if config.auth_require_tls else "plaintext allowed (SMTP_AUTH_REQUIRE_TLS is off)"
        self.stdout.write(
            "\n".join(
                [
                    f"agentmail-smtp listening on {config.host}:{server.port}",
                    f"  hostname:  {config.hostname}",
                    f"  AUTH:      {' '.join(AUTH_MECHANISMS)}, {auth_policy}",
                    "  TLS:       off (no certificate configured)",
                    f"  limits:    {config.max_message_size} bytes per message, {config.max_recipients} recipients",
                    f"  database:  {describe_database()}",
                    "Quit with Ctrl-C.",
                ]
            )
        )
        self.stdout.flush()
