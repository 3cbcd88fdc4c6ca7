"""`runsmtp --workers N`: N gateway processes sharing one port (SO_REUSEPORT).

Each worker is a fresh `manage.py runsmtp` process (not a fork: no threads or
database connections are copied), with its own event loop and database
connections; the kernel spreads new connections across them. The parent
forwards SIGINT, SIGTERM and SIGHUP to every worker and exits when they have all
stopped: 0 if every worker exited 0.

A worker says when it listens (a byte on a pipe). One that dies before that
stops the others: a gateway that cannot start (its port taken, its
certificate unreadable) should not run half. One that dies after it served (the
OOM killer, a crash) is replaced, and the others serve on meanwhile.

With a metrics port, the supervisor serves it: the workers count in
prometheus-client's multiprocess mode, into files in a directory of this run
(PROMETHEUS_MULTIPROC_DIR, set in their environment), and one scrape sums them.
When a worker dies, ``mark_process_dead`` removes its live gauges (its open
sessions, its heartbeat); its counters stay in the sum, so totals never go back.

What workers share goes through the database: the AUTH rate limit and every
record. Connection limits are counted per worker process.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from smtpgateway.metrics import supervisor_families
from smtpgateway.runtime.health import DatabaseProbe, WorkersHealth
from smtpgateway.runtime.monitoring import MonitoringServer

MANAGE = Path(__file__).resolve().parents[2] / "manage.py"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
POLL_INTERVAL = 0.2


class Worker:
    """One worker process, and whether it has said that it listens."""

    def __init__(self, index: int, args: list[str], env: dict[str, str] | None, banner: bool) -> None:
        self.index = index
        read_end, write_end = os.pipe()
        command = [sys.executable, str(MANAGE), "runsmtp", *args, "--reuse-port", "--worker-index", str(index)]
        command += ["--ready-fd", str(write_end)] + ([] if banner else ["--no-banner"])
        try:
            self.process = subprocess.Popen(
                command,
                env=env,
                pass_fds=(write_end,),
                # Their own session: a terminal's Ctrl-C reaches only this parent, which
                # forwards it once (a second signal would cut a worker's grace short).
                start_new_session=True,
            )
        finally:
            os.close(write_end)
        os.set_blocking(read_end, False)
        self._ready_pipe: int | None = read_end
        self.ready = False
        self.returncode: int | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def poll(self) -> int | None:
        """Look for its "listening" byte; its return code once it has exited."""
        if self._ready_pipe is not None:
            try:
                said = os.read(self._ready_pipe, 1)
            except BlockingIOError:
                said = None
            if said is not None:  # the byte, or the end of the pipe (it closed it, or died)
                self.ready = self.ready or said == b"R"
                os.close(self._ready_pipe)
                self._ready_pipe = None
        self.returncode = self.process.poll()
        return self.returncode


class Supervisor:
    def __init__(
        self,
        count: int,
        worker_args: list[str],
        metrics: MonitoringServer | None = None,
        database: DatabaseProbe | None = None,
    ) -> None:
        """``metrics``: the metrics port, bound; this supervisor serves it.
        ``database``: the probe its /readyz uses."""
        self.count = count
        self.worker_args = worker_args
        self.metrics = metrics
        self.metrics_dir: Path | None = None
        self.env: dict[str, str] | None = None
        self.workers: list[Worker] = []
        self.stopping = False
        self.replaced = 0
        if metrics is not None:
            self.metrics_dir = Path(tempfile.mkdtemp(prefix="agentmail-metrics-"))
            self.env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir)}
            self.worker_args = [*worker_args, "--metrics-collect"]
            metrics.exposition = self.exposition
            if database is not None:
                metrics.health = WorkersHealth(database, self.metrics_dir, lambda: self.workers, lambda: self.stopping)

    def exposition(self) -> bytes:
        """One scrape: every worker's files summed, and the supervisor's own."""
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        assert self.metrics_dir is not None
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.metrics_dir))  # type: ignore[no-untyped-call]
        running = sum(worker.running() for worker in self.workers)
        return generate_latest(registry) + generate_latest(supervisor_families(running, self.replaced))

    def forward(self, signum: int, frame: object = None) -> None:
        self.stopping = self.stopping or signum in STOP_SIGNALS
        for worker in self.workers:
            if worker.running():
                worker.process.send_signal(signum)

    def run(self) -> int:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self.forward)
        try:
            self.workers = [Worker(index, self.worker_args, self.env, banner=True) for index in range(self.count)]
            if self.metrics is not None:
                self.metrics.start()
            while any(worker.returncode is None for worker in self.workers):
                time.sleep(POLL_INTERVAL)
                for slot, worker in enumerate(self.workers):
                    if worker.returncode is not None or worker.poll() is None:
                        continue
                    self._gone(worker)
                    if self.stopping:
                        continue
                    if worker.ready:
                        self._replace(slot, worker)
                    else:  # it never listened: stop the others
                        self.forward(signal.SIGTERM)
            return max(exit_status(worker.returncode or 0, self.stopping) for worker in self.workers)
        finally:
            if self.metrics is not None:
                self.metrics.stop()
            if self.metrics_dir is not None:
                shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def _gone(self, worker: Worker) -> None:
        if self.metrics_dir is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(worker.pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]

    def _replace(self, slot: int, worker: Worker) -> None:
        code = worker.returncode or 0
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        print(f"runsmtp: worker {worker.index} (pid {worker.pid}) {how}; starting another", file=sys.stderr, flush=True)
        self.replaced += 1
        self.workers[slot] = Worker(worker.index, self.worker_args, self.env, banner=False)


def run_workers(
    count: int, worker_args: list[str], metrics: MonitoringServer | None = None, database: DatabaseProbe | None = None
) -> int:
    return Supervisor(count, worker_args, metrics, database).run()


def exit_status(returncode: int, stopping: bool) -> int:
    """A worker's return code as a process exit status. A worker still starting up
    when we forwarded SIGINT/SIGTERM dies of it before installing its handlers:
    that is a clean stop. Any other death by signal N is 128 + N, as in shells."""
    if returncode >= 0:
        return returncode
    if stopping and -returncode in STOP_SIGNALS:
        return 0
    return 128 - returncode
