"""``manage.py deliver``: one worker process.

The main thread (the dispatcher) is the only one that touches the database: it
claims due recipients, hands their messages to the sender threads, renews its
leases, and records each batch of results in one transaction. Each of the
``DELIVERY_CONNECTIONS`` sender threads holds one upstream connection and carries
message after message over it (signing each with DKIM first), so a slow upstream
delays only the messages on its own connection, and no thread waits on another's
network I/O. Claims are bounded by what the senders can take soon, so leases
stay short-lived.

SIGTERM/SIGINT: no more claims; the deliveries in flight finish (up to
``DELIVERY_SHUTDOWN_GRACE``) and are recorded; messages claimed but not yet
started are given back at once; then exit 0. A second signal cuts the grace
short.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from django.db import close_old_connections

from delivery import queue as work
from delivery.relay import RelayTarget, Upstream
from delivery.retry import RetryPolicy
from delivery.signing import SigningKey, sign
from smtpgateway.metrics import DeliveryMetrics

log = logging.getLogger(__name__)

PER_SENDER = 16  # messages queued ahead for each sender thread
IDLE_CLOSE = 10.0  # seconds an upstream connection may sit unused before it is closed
KEYS_REFRESH = 30.0  # seconds between re-reads of the DKIM keys
RESULT_WAIT = 0.02  # seconds the dispatcher waits for results before it looks again
RESULT_GATHER = 0.02  # seconds it then gathers more before recording them together
QUEUE_METRICS_INTERVAL = 5.0  # seconds between reads of the queue's depth (with metrics on)


@dataclass(frozen=True)
class WorkerSettings:
    target: RelayTarget
    hostname: str
    policy: RetryPolicy
    connections: int
    lease: float
    poll_interval: float
    shutdown_grace: float
    connect_timeout: float
    command_timeout: float


_STOP_SENDER = None


class DeliveryWorker:
    def __init__(self, settings: WorkerSettings, metrics: DeliveryMetrics | None = None) -> None:
        """``metrics``: counted by the dispatcher (``deliver --metrics-port``)."""
        self.settings = settings
        self.metrics = metrics
        self._queue_read = -QUEUE_METRICS_INTERVAL
        self.owner = work.new_owner()
        self.stopping = threading.Event()
        self.stop_now = threading.Event()
        self._work: queue.Queue[tuple[work.ClaimedMessage, list[SigningKey]] | None] = queue.Queue()
        self._results: queue.Queue[work.Delivered] = queue.Queue()
        self._in_flight = 0  # claimed and not yet recorded (dispatcher only)
        self._keys: dict[str, list[SigningKey]] = {}
        self._keys_read = 0.0
        self._senders = [
            threading.Thread(target=self._send_forever, name=f"deliver-send-{n}", daemon=True)
            for n in range(max(1, settings.connections))
        ]
        self.delivered = 0  # recipients recorded, for the --once summary

    # --- the dispatcher ------------------------------------------------------------
    def run(self, once: bool = False, on_ready: Callable[[], None] | None = None) -> None:
        for sender in self._senders:
            sender.start()
        if on_ready is not None:
            on_ready()
        renewed = time.monotonic()
        try:
            while not self.stopping.is_set():
                close_old_connections()
                self._read_queue_depth()
                self._record(self._collect(wait=self._in_flight > 0))
                if time.monotonic() - renewed > self.settings.lease / 3 and self._in_flight:
                    work.renew(self.owner, self.settings.lease)
                    renewed = time.monotonic()
                claimed = self._claim()
                if not claimed and not self._in_flight:
                    if once:
                        return
                    self.stopping.wait(self.settings.poll_interval)
        finally:
            self._drain()

    def _read_queue_depth(self) -> None:
        if self.metrics is None or time.monotonic() - self._queue_read < QUEUE_METRICS_INTERVAL:
            return
        self._queue_read = time.monotonic()
        counts, oldest = work.queue_depth()
        self.metrics.queue_depth(counts, time.time() - oldest.timestamp() if oldest else 0.0)

    def _claim(self) -> int:
        # Claim in batches, when half the senders' queue has room: a claim is a
        # write transaction, and one per message would cost more than the message.
        capacity = PER_SENDER * len(self._senders)
        room = capacity - self._in_flight
        if room < capacity // 2:
            return 0
        claimed = work.claim(self.owner, room, self.settings.lease)
        if claimed:
            keys = self._signing_keys()
            for message in claimed:
                self._in_flight += 1
                self._work.put((message, keys.get(message.from_domain or self._own_domain(), [])))
        return len(claimed)

    def _own_domain(self) -> str:
        """The domain bounces come from (MAILER-DAEMON@<SMTP_HOSTNAME>)."""
        return self.settings.hostname.lower()

    def _signing_keys(self) -> dict[str, list[SigningKey]]:
        if time.monotonic() - self._keys_read > KEYS_REFRESH:
            self._keys, self._keys_read = work.signing_keys(), time.monotonic()
        return self._keys

    def _collect(self, wait: bool) -> list[work.Delivered]:
        """The results that are in; with ``wait``, wait a little for the first,
        then gather what comes within RESULT_GATHER, so that one transaction
        records several (each is a write transaction, with its fsync)."""
        done: list[work.Delivered] = []
        try:
            done.append(self._results.get(timeout=RESULT_WAIT) if wait else self._results.get_nowait())
            until = time.monotonic() + RESULT_GATHER
            while len(done) < self._in_flight:
                done.append(self._results.get(timeout=max(0.0, until - time.monotonic())))
        except queue.Empty:
            pass
        return done

    def _record(self, done: list[work.Delivered]) -> None:
        if not done:
            return
        work.record(done, self.settings.policy, self.settings.hostname)
        self._in_flight -= len(done)
        if self.metrics is not None:
            self._count(done)
        for delivered in done:
            for outcome in delivered.result.recipients:
                self.delivered += 1
                log.info(
                    "%s %s to <%s> via %s: %s",
                    outcome.status.capitalize(),
                    delivered.message.queue_id,
                    outcome.address,
                    delivered.result.upstream,
                    outcome.reply or "-",
                    extra={
                        "queue_id": delivered.message.queue_id,
                        "recipient": outcome.address,
                        "status": outcome.status,
                    },
                )

    def _count(self, done: list[work.Delivered]) -> None:
        assert self.metrics is not None
        now = time.time()
        for delivered in done:
            self.metrics.upstream_duration.observe(delivered.result.duration)
            outcomes = delivered.result.recipients
            self.metrics.attempted(outcome.status for outcome in outcomes)
            accepted = delivered.message.accepted_at.timestamp()
            for outcome in outcomes:
                if outcome.status == "delivered":
                    self.metrics.latency.observe(max(0.0, now - accepted))

    def _drain(self) -> None:
        """Stop: give back what no sender started, let the others finish within
        the grace period, record them, stop the senders."""
        unstarted: list[int] = []
        while True:
            try:
                item = self._work.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                unstarted.extend(item[0].recipients.values())
                self._in_flight -= 1
        if unstarted:
            work.release(self.owner, unstarted)
        deadline = time.monotonic() + self.settings.shutdown_grace
        while self._in_flight > 0 and time.monotonic() < deadline and not self.stop_now.is_set():
            self._record(self._collect(wait=True))
        if self._in_flight:
            log.warning(
                "Stopped with %d message(s) in flight: their leases run out and others retry them", self._in_flight
            )
        for _ in self._senders:
            self._work.put(_STOP_SENDER)
        for sender in self._senders:
            sender.join(1.0)

    # --- a sender thread -----------------------------------------------------------
    def _send_forever(self) -> None:
        settings = self.settings
        upstream = Upstream(settings.target, settings.hostname, settings.connect_timeout, settings.command_timeout)
        try:
            while True:
                try:
                    item = self._work.get(timeout=IDLE_CLOSE)
                except queue.Empty:
                    upstream.close()
                    continue
                if item is _STOP_SENDER:
                    return
                message, keys = item
                self._results.put(self._send(upstream, message, keys))
        finally:
            upstream.close()

    def _send(self, upstream: Upstream, message: work.ClaimedMessage, keys: list[SigningKey]) -> work.Delivered:
        content = message.content
        if keys:
            try:
                signatures, used = sign(content, keys)
                content, dkim = signatures + content, ", ".join(used)
            except Exception as error:  # a key dkimpy cannot use: deliver unsigned, say why
                log.exception("DKIM signing of %s failed", message.queue_id, extra={"queue_id": message.queue_id})
                dkim = f"unsigned: signing failed ({type(error).__name__})"
        else:
            dkim = f"unsigned: no DKIM key for {message.from_domain or self._own_domain()}"
        result = upstream.send(message.queue_id, message.sender, list(message.recipients), content)
        return work.Delivered(message, result, dkim)
