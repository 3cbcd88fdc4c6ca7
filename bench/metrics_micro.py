"""What the metrics add to one AUTH session, in CPU time, measured in isolation
(the load benchmark's cells drift by more than this on a shared machine).

Times the calls a successful AUTH session makes on the event loop with metrics
on, the ones smtpgateway/session/ makes: a connection and a session counted,
four replies (220, EHLO, 235, 221), the attempt by mechanism and reason, the AUTH
duration observed; and the heartbeat's flush, which runs four times a second
whatever the load (its cost per second, not per session). In one process, and
with PROMETHEUS_MULTIPROC_DIR (a runsmtp --workers worker), where every counter
child's inc is a locked write to a memory-mapped file.

    python bench/metrics_micro.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def measure() -> None:
    sys.path.insert(0, str(ROOT))
    from smtpgateway.metrics import GatewayMetrics
    from smtpgateway.reasons import Reason

    metrics = GatewayMetrics(enabled=True)
    tallies = metrics.reply_tallies
    connections, sessions = metrics.connections["submission"], metrics.sessions
    replies = ["220 mail ESMTP", "250 mail", "235 2.7.0 Authentication successful", "221 2.0.0 Bye"]

    def session() -> None:
        connections.pending += 1
        sessions.pending += 1
        for reply in replies:
            tally = tallies.get(reply[:1])
            if tally is not None:
                tally.pending += 1
        metrics.auth_attempt("PLAIN", Reason.OK)
        metrics.auth_success.observe(0.004)

    def flush() -> None:
        metrics.flush(sessions=100, records_kept=0, records_dropped=0, bodies_buffered=0, lag=0.0)

    runs = 200_000
    per_session = min(timeit.repeat(session, number=runs, repeat=5)) / runs * 1e6
    session()  # something pending for each flush below, as under load

    def session_and_flush() -> None:
        session()
        flush()

    per_flush = min(timeit.repeat(session_and_flush, number=20_000, repeat=5)) / 20_000 * 1e6 - per_session
    mode = "multiprocess" if os.environ.get("PROMETHEUS_MULTIPROC_DIR") else "one process"
    print(f"{mode:13}: {per_session:.2f} µs per successful AUTH session; a flush {per_flush:.1f} µs (4 a second)")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        measure()
        return
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "agentmail_site.settings", "DEBUG": "true"}
    subprocess.run([sys.executable, __file__, "--child"], env=env, check=True, cwd=ROOT)
    with tempfile.TemporaryDirectory(prefix="metrics-micro-") as directory:
        subprocess.run(
            [sys.executable, __file__, "--child"],
            env={**env, "PROMETHEUS_MULTIPROC_DIR": directory},
            check=True,
            cwd=ROOT,
        )


if __name__ == "__main__":
    main()
