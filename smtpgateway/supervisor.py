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

MANAGE = Path(__file__).resolve().parent.parent / "manage.py"


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

    def forward(signum: int, frame: object) -> None:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    # If one worker dies, stop the others: a half-running gateway is worse than none.
    while all(worker.poll() is None for worker in workers):
        time.sleep(0.2)
    forward(signal.SIGTERM, None)
    return max((worker.wait() for worker in workers), key=abs)
