"""The benchmark's reference ceiling: bare aiosmtpd 1.4 with an in-memory
authenticator that accepts one inbox/key pair, and a handler that discards bodies.
Usage: python bench/reference_server.py PORT [--uvloop]"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

USER, PASSWORD = b"inb_valid1234567890", b"am_validkey12345678901234567890123456"


def authenticator(server, session, envelope, mechanism, auth_data):  # type: ignore[no-untyped-def]
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == USER and auth_data.password == PASSWORD
    return AuthResult(success=ok, handled=False)


class DiscardHandler:
    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        return "250 OK"


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    handler = DiscardHandler()
    server = await loop.create_server(
        lambda: SMTP(
            handler,
            authenticator=authenticator,
            auth_require_tls=False,
            hostname="reference",
            data_size_limit=11 * 2**20,
        ),
        host="127.0.0.1",
        port=port,
        backlog=1024,
    )
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print("ready", flush=True)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    if "--uvloop" in sys.argv:
        import uvloop

        uvloop.install()
    asyncio.run(main(int(sys.argv[1])))
