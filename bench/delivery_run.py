"""The delivery benchmark (run by `make bench` after bench/run.py).

Two cells, against an aiosmtpd sink on loopback (in this process, on CPU 1),
with one `manage.py deliver` worker process pinned to CPU 0:

1. throughput: N messages queued (a recipient each), then `deliver --once`; its
   wall time and CPU time give messages/s per worker process, without DKIM and
   with an RSA-2048 key for the sender's domain;
2. latency while submissions run: `runsmtp` and `deliver` running, messages
   submitted at a steady rate; accepted -> delivered per message, p50/p99.

Uses its own SQLite database (var/bench/delivery.sqlite3). Prints the figures and
writes them to var/bench/delivery.md.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "var" / "bench"
DATABASE = BUILD / "delivery.sqlite3"
INBOX, KEY, EMAIL = "inb_valid1234567890", "am_validkey12345678901234567890123456", "test@agentmail.dev"
TWO_CPUS = (os.cpu_count() or 1) >= 2


class CountingSink:
    def __init__(self) -> None:
        self.count = 0
        self.arrived: dict[str, float] = {}

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.count += len(envelope.rcpt_tos)
        for line in envelope.original_content.split(b"\r\n"):
            if line.lower().startswith(b"subject: bench-"):
                self.arrived[line.split(b"bench-", 1)[1].decode()] = time.time()
                break
            if not line:
                break
        return "250 2.0.0 Ok"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def env(sink_port: int) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{DATABASE}",
        "DEBUG": "false",
        "SECRET_KEY": "bench-only-not-secret",
        "LOG_LEVEL": "WARNING",
        "DELIVERY_RELAY_URL": f"smtp://127.0.0.1:{sink_port}?tls=none",
        "DELIVERY_POLL_INTERVAL": "0.02",
        "SMTP_AUTH_REQUIRE_TLS": "false",
        "SMTP_TLS_CERT_FILE": "",
        "SMTP_TLS_KEY_FILE": "",
        "SMTP_TLS_PORT": "0",
        "SMTP_THROTTLE_EXEMPT": "127.0.0.0/8",
        "SMTP_HOSTNAME": "bench.agentmail.dev",
    }


def manage(*args: str, environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=environment, capture_output=True, text=True, check=True
    )


def pinned(command: list[str]) -> list[str]:
    return ["taskset", "-c", "0", *command] if TWO_CPUS and shutil.which("taskset") else command


def queue_messages(count: int, environment: dict[str, str]) -> None:
    """N messages of ~2 KB from the demo inbox, each to one recipient, as the gateway stores them."""
    script = f"""
import django; django.setup()
from django.utils import timezone
from delivery.models import Recipient
from inboxes.models import Inbox, Message
from smtpgateway.storage.messages import new_queue_id
inbox = Inbox.objects.get(inbox_id="{INBOX}")
now = timezone.now()
messages, recipients = [], []
for n in range({count}):
    queue_id = new_queue_id()
    raw = (f"From: {EMAIL}\\r\\nTo: r{{n}}@example.com\\r\\nSubject: bench-{{queue_id}}\\r\\n"
           f"Message-ID: <{{queue_id}}@agentmail.dev>\\r\\n\\r\\n" + "x" * 76 + "\\r\\n").encode() + (b"y" * 76 + b"\\r\\n") * 25
    messages.append(Message(queue_id=queue_id, inbox=inbox, envelope_from="{EMAIL}", envelope_to=[f"r{{n}}@example.com"], size=len(raw), raw=raw))
    recipients.append(Recipient(message_id=queue_id, address=f"r{{n}}@example.com", next_attempt_at=now))
Message.objects.bulk_create(messages, batch_size=500)
Recipient.objects.bulk_create(recipients, batch_size=500)
"""
    subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**environment, "DJANGO_SETTINGS_MODULE": "agentmail_site.settings"},
        check=True,
    )


def throughput(count: int, environment: dict[str, str], sink: CountingSink) -> dict[str, float]:
    """Messages/s of a running worker: timed from its banner (Django set up, the
    database connected, the queue not yet read) to its exit, so that the half
    second or more a Python process takes to start and import Django is not
    counted as delivery (it was a tenth of a 2,000-message cell)."""
    queue_messages(count, environment)
    before_sink = sink.count
    usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    process = subprocess.Popen(
        pinned([sys.executable, "manage.py", "deliver", "--once"]),
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("Quit with Ctrl-C."):
            break
    started, cpu_at_start = time.monotonic(), _cpu_seconds(process.pid)
    process.stdout.read()
    assert process.wait() == 0, "deliver --once failed"
    wall = time.monotonic() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (usage.ru_utime - usage_before.ru_utime) + (usage.ru_stime - usage_before.ru_stime) - cpu_at_start
    delivered = sink.count - before_sink
    assert delivered == count, f"the sink got {delivered} of {count}"
    return {"messages_per_s": count / wall, "cpu_ms_per_message": cpu / count * 1000, "wall_s": wall}


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far, from /proc (its start's share)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def latency(count: int, rate: float, environment: dict[str, str], sink: CountingSink) -> dict[str, float]:
    port = free_port()
    gateway = subprocess.Popen(
        pinned([sys.executable, "manage.py", "runsmtp", "--port", str(port)]),
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    worker = subprocess.Popen(
        pinned([sys.executable, "manage.py", "deliver"]),
        cwd=ROOT,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert gateway.stdout is not None
        while "Quit with" not in gateway.stdout.readline():
            pass
        time.sleep(1.0)
        accepted: dict[str, float] = {}
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.login(INBOX, KEY)
            for n in range(count):
                due = time.monotonic() + 1 / rate
                subject = f"{n}-{time.time_ns()}"
                client.sendmail(
                    EMAIL, [f"l{n}@example.com"], f"From: {EMAIL}\r\nSubject: bench-{subject}\r\n\r\nhi\r\n".encode()
                )
                accepted[subject] = time.time()
                time.sleep(max(0.0, due - time.monotonic()))
        deadline = time.monotonic() + 60
        while not all(key in sink.arrived for key in accepted) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        for process in (worker, gateway):
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
    waits = sorted((sink.arrived[key] - at) * 1000 for key, at in accepted.items() if key in sink.arrived)
    assert len(waits) == count, f"{count - len(waits)} message(s) never arrived"
    return {"p50_ms": statistics.median(waits), "p99_ms": waits[int(len(waits) * 0.99) - 1], "rate": rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000, help="messages per throughput cell (default 2000)")
    parser.add_argument("--quick", action="store_true", help="500 messages per cell, 200 in the latency cell")
    args = parser.parse_args()
    count = 500 if args.quick else args.messages
    BUILD.mkdir(parents=True, exist_ok=True)
    DATABASE.unlink(missing_ok=True)
    sink = CountingSink()
    sink_port = free_port()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        controller = Controller(sink, hostname="127.0.0.1", port=sink_port)
        controller.start()
    if TWO_CPUS:
        os.sched_setaffinity(0, {1})
    environment = env(sink_port)
    try:
        manage("migrate", "--noinput", environment=environment)
        manage("loaddata", "scenarios", environment=environment)
        plain = throughput(count, environment, sink)
        manage("dkimkey", "add", "agentmail.dev", "--selector", "bench", environment=environment)
        signed = throughput(count, environment, sink)
        waits = latency(200 if args.quick else 1000, 100.0, environment, sink)
    finally:
        controller.stop()
    lines = [
        "| cell | result |",
        "|---|---|",
        f"| {count} messages, no DKIM | {plain['messages_per_s']:.0f} messages/s per worker process, {plain['cpu_ms_per_message']:.2f} ms CPU each |",
        f"| {count} messages, RSA-2048 DKIM | {signed['messages_per_s']:.0f} messages/s per worker process, {signed['cpu_ms_per_message']:.2f} ms CPU each |",
        f"| accepted -> delivered at {waits['rate']:.0f} messages/s submitted | p50 {waits['p50_ms']:.0f} ms, p99 {waits['p99_ms']:.0f} ms |",
    ]
    report = "\n".join(lines)
    print(report)
    (BUILD / "delivery.md").write_text(report + "\n")


if __name__ == "__main__":
    main()
