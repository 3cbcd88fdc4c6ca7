"""The health checks of the metrics port: ``/healthz`` and ``/readyz``.

* ``/healthz``: the event loop answers within a second. One process
  (:class:`GatewayHealth`): the check asks the loop to run a callback and waits up
  to :data:`LOOP_DEADLINE` for it. Under ``runsmtp --workers``
  (:class:`WorkersHealth`): every worker's loop writes a heartbeat to its
  metrics file every 0.25 s (``smtpgateway.runtime.server.HEARTBEAT_INTERVAL``),
  and the supervisor reads them; one older than :data:`LOOP_DEADLINE` is a loop
  that has not run for that long.
* ``/readyz``: listening, not draining (a stop has begun), and the database
  reachable within ``DATABASE_TIMEOUT`` (:class:`DatabaseProbe`).

Both run in the metrics port's threads, never on the event loop; the database
probe in a thread of its own, waited for with a timeout.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from django.db import DatabaseError, connection, transaction

LOOP_DEADLINE = 1.0  # seconds within which an event loop must answer
HEARTBEAT_METRIC = "agentmail_smtp_event_loop_heartbeat_timestamp_seconds"


def _reach_database() -> None:
    """A transaction with a query in it, on a connection made for it. On SQLite
    the transaction begins IMMEDIATE (settings), so this waits for the write lock,
    as every commit of the gateway does: a writer holding it is SQLite's outage."""
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    finally:
        connection.close()


class DatabaseProbe:
    """Whether the database answers within ``timeout`` seconds. One probe at a
    time, in a thread of its own: checks that come while one is under way wait
    for it, so a database that hangs costs one stuck thread, not one per check."""

    def __init__(self, timeout: float, reach: Callable[[], None] = _reach_database) -> None:
        self.timeout = timeout
        self._reach = reach
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="health-db")
        self._lock = threading.Lock()
        self._current: Future[float] | None = None

    def _timed(self) -> float:
        started = time.perf_counter()
        self._reach()
        return time.perf_counter() - started

    def problem(self) -> str | None:
        """None if the database answered; else one line saying how it did not."""
        with self._lock:
            if self._current is None or self._current.done():
                self._current = self._executor.submit(self._timed)
            probe = self._current
        try:
            probe.result(timeout=self.timeout)
        except TimeoutError:
            return f"database not reachable within {self.timeout:g}s (DATABASE_TIMEOUT)"
        except DatabaseError as error:  # its type only: a driver's message may name hosts and users
            return f"database not reachable ({type(error).__name__})"
        return None


class Server(Protocol):
    """What the checks read of a ``GatewayServer``."""

    @property
    def listening(self) -> bool: ...


class GatewayHealth:
    """The checks of one gateway process; ``attach`` once its server listens."""

    def __init__(self, database: DatabaseProbe) -> None:
        self.database = database
        self._server: Server | None = None
        self._loop: _Loop | None = None

    def attach(self, server: Server, loop: _Loop) -> None:
        self._server, self._loop = server, loop

    def alive(self) -> tuple[bool, str]:
        loop = self._loop
        if loop is None:
            return False, "starting: the event loop is not serving yet"
        answered = threading.Event()
        started = time.perf_counter()
        try:
            loop.call_soon_threadsafe(answered.set)
        except RuntimeError:  # the loop is closed: the gateway has stopped
            return False, "stopped: the event loop is closed"
        if not answered.wait(LOOP_DEADLINE):
            return False, f"the event loop did not answer within {LOOP_DEADLINE:g}s"
        return True, f"ok: the event loop answered in {(time.perf_counter() - started) * 1000:.1f} ms"

    def ready(self) -> tuple[bool, str]:
        server = self._server
        if server is None:
            return False, "starting: not listening yet"
        if not server.listening:
            return False, "draining: the gateway is stopping"
        problem = self.database.problem()
        if problem is not None:
            return False, problem
        return True, "ready: listening, database reachable"


class _Loop(Protocol):
    def call_soon_threadsafe(self, callback: Callable[[], None]) -> object: ...


class WorkerView(Protocol):
    """A worker process as the supervisor knows it (``smtpgateway.runtime.supervisor``)."""

    @property
    def pid(self) -> int: ...

    @property
    def ready(self) -> bool:
        """It has said that it listens."""
        ...

    def running(self) -> bool: ...


class WorkersHealth:
    """The checks of ``runsmtp --workers``, answered by the supervisor from the
    workers' heartbeats in the metrics directory and what it knows of them."""

    def __init__(
        self,
        database: DatabaseProbe,
        directory: Path,
        workers: Callable[[], Sequence[WorkerView]],
        stopping: Callable[[], bool],
    ) -> None:
        self.database = database
        self.directory = directory
        self._workers = workers
        self._stopping = stopping

    def heartbeat(self, pid: int) -> float | None:
        """The Unix time of worker ``pid``'s last heartbeat, or None if it wrote none."""
        from prometheus_client.multiprocess import MultiProcessCollector

        path = self.directory / f"gauge_livemin_{pid}.db"
        if not path.exists():
            return None
        for family in MultiProcessCollector.merge([str(path)], accumulate=False):  # type: ignore[no-untyped-call]
            for sample in family.samples:
                if sample.name == HEARTBEAT_METRIC:  # 0 from its creation until the first heartbeat
                    return float(sample.value) or None
        return None

    def alive(self) -> tuple[bool, str]:
        now = time.time()
        ages = []
        for worker in self._workers():
            if not worker.running():
                return False, f"worker {worker.pid} has exited"
            beat = self.heartbeat(worker.pid)
            if beat is None:
                return False, f"starting: worker {worker.pid} has not run its event loop yet"
            age = now - beat
            if age > LOOP_DEADLINE:
                return False, f"the event loop of worker {worker.pid} has not answered for {age:.1f}s"
            ages.append(age)
        return True, f"ok: the event loops of {len(ages)} workers ran within the last {max(ages) * 1000:.0f} ms"

    def ready(self) -> tuple[bool, str]:
        if self._stopping():
            return False, "draining: the gateway is stopping"
        workers = self._workers()
        waiting = [worker.pid for worker in workers if not (worker.ready and worker.running())]
        if waiting:
            return False, f"starting: worker {waiting[0]} is not listening yet"
        problem = self.database.problem()
        if problem is not None:
            return False, problem
        return True, f"ready: {len(workers)} workers listening, database reachable"
