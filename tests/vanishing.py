"""Clients that vanish at every stage of a session, and the process's open
file descriptors: shared by the vanishing and session-release tests."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
from collections import Counter

from tests.helpers import VALID_EMAIL, VALID_INBOX, VALID_KEY, b64

STAGES = ["connect", "greeting", "ehlo", "auth-login-midway", "authenticated", "mid-data", "mid-tls", "reset"]


# What each stage leaves in AuthAttempt: (reason or None)
RECORDED = {"auth-login-midway": "ABORTED", "authenticated": "OK"}


async def vanish(port: int, tls_port: int | None, stage: str) -> None:
    if stage == "mid-tls":
        reader, writer = await asyncio.open_connection("127.0.0.1", tls_port)
        writer.write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(20))  # a ClientHello, cut short
        await writer.drain()
        writer.close()
        return
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if stage == "connect":
            return
        await reader.readline()
        if stage == "greeting":
            return
        writer.write(b"EHLO vanishing.example\r\n")
        while not (line := await reader.readline()).startswith(b"250 "):
            if not line:
                raise ConnectionError("closed by the server after EHLO")
        if stage == "ehlo":
            return
        if stage == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST
            return
        if stage == "auth-login-midway":
            writer.write(b"AUTH LOGIN\r\n")
            await reader.readline()
            writer.write(b64(VALID_INBOX).encode() + b"\r\n")
            await reader.readline()  # the password prompt; we leave instead
            return
        writer.write(f"AUTH PLAIN {b64(chr(0) + VALID_INBOX + chr(0) + VALID_KEY)}\r\n".encode())
        reply = await reader.readline()
        if not reply.startswith(b"235"):
            raise ConnectionError(f"AUTH answered {reply[:40]!r}")
        if stage == "authenticated":
            return
        writer.write(f"MAIL FROM:<{VALID_EMAIL}>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n".encode())
        for _ in range(3):
            await reader.readline()
        writer.write(b"From: test@agentmail.dev\r\nSubject: never finished\r\n\r\n" + b"x" * 5000 + b"\r\n")
        await writer.drain()
    finally:
        writer.close()


async def swarm(port: int, tls_port: int | None, sessions: int, concurrency: int = 50) -> Counter[str]:
    rng = random.Random(1234)
    choices = STAGES if tls_port else [stage for stage in STAGES if stage != "mid-tls"]
    stages = [rng.choice(choices) for _ in range(sessions)]
    gate = asyncio.Semaphore(concurrency)
    surprises: list[str] = []

    async def one(stage: str) -> None:
        async with gate:
            try:
                await asyncio.wait_for(vanish(port, tls_port, stage), 10)
            except (TimeoutError, OSError) as error:
                surprises.append(f"{stage}: {error!r}")

    await asyncio.gather(*(one(stage) for stage in stages))
    assert not surprises, f"{len(surprises)} sessions did not go as planned, e.g. {surprises[:3]}"
    return Counter(stages)


def fd_count(pid: int | str = "self") -> int:
    return len(open_fds(pid))


def open_fds(pid: int | str = "self") -> list[str]:
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:  # the directory listing's own descriptor
            pass
    return sorted(targets)
