"""`runsmtp --workers N`: N gateway processes sharing one port (SO_REUSEPORT).

Each worker is a fresh `manage.py runsmtp` process (not a fork: no threads or
database connections are copied), with its own event loop and database
connections; the kernel spreads new connections across them. The parent
forwards SIGINT, SIGTERM and SIGHUP to every worker and exits when they have all
stopped: 0 if every worker exited 0.

What workers share goes through the database: the AUTH rate limit and every
record. Connection limits are counted per worker process.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

MANAGE = Path(__file__).resolve().parents[2] / "manage.py"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def run_workers(count: int, worker_args: list[str]) -> int:
    workers = [
        subprocess.Popen(
            [sys.executable, str(MANAGE), "runsmtp", *worker_args, "--reuse-port", "--worker-index", str(index)],
            # Their own session: a terminal's Ctrl-C reaches only this parent, which
            # forwards it once (a second signal would cut a worker's grace short).
            start_new_session=True,
        )
        for index in range(count)
    ]

    stopping = False

    def forward(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = stopping or signum in STOP_SIGNALS
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    # If one worker dies, stop the others: a half-running gateway is worse than none.
    while all(worker.poll() is None for worker in workers):
        time.sleep(0.2)
    forward(signal.SIGTERM, None)
    return max(exit_status(worker.wait(), stopping) for worker in workers)


def exit_status(returncode: int, stopping: bool) -> int:
    """A worker's return code as a process exit status. A worker still starting up
    when we forwarded SIGINT/SIGTERM dies of it before installing its handlers:
    that is a clean stop. Any other death by signal N is 128 + N, as in shells."""
    if returncode >= 0:
        return returncode
    if stopping and -returncode in STOP_SIGNALS:
        return 0
    return 128 - returncode
