"""Every Prometheus metric the gateway and the delivery worker export, defined here
and nowhere else (names, types, labels, buckets; the table is in
docs/operations.md#metrics).

Names follow Prometheus's conventions, with postfix_exporter as the anchor for what
operators graph: one prefix (``agentmail_smtp_``), the unit in the name, ``_total``
on counters, label values from closed sets only (never an address, a username or
anything else a client chooses).

The hot paths stay cheap. Counters touched per session or per reply are
:class:`Tally` objects: a plain integer the event loop adds to, handed to its
pre-bound prometheus-client child by :meth:`GatewayMetrics.flush` a few times a
second (in multiprocess mode every ``inc`` of a child is a locked write to a
memory-mapped file, ~3 µs; a tally's is ~0.05 µs). Gauges are set at the flush from
what the server already knows (its sessions, the kept records). Histograms are
observed directly, once per AUTH or message. Without a metrics port the gateway
gets :data:`OFF`: tallies nobody flushes and histograms that do nothing.

Under ``runsmtp --workers`` each worker writes its values to files in
``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess mode, chosen when
that variable is set as the process starts) and the supervisor serves their sum
(``smtpgateway.runtime.monitoring``). Gauges then say how they combine: ``livesum``
(sessions open in all workers), ``livemin`` (the oldest event-loop heartbeat); a
dead worker's live gauges are removed by ``mark_process_dead``, its counters stay
in the sum.

No ORM and no I/O here: the session layer imports this module.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable
from typing import Protocol

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from smtpgateway.reasons import Reason

PREFIX = "agentmail_smtp_"
# The *_created series prometheus-client adds beside every counter and histogram
# double the exposition for a start time nobody graphs.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

# Closed label sets: anything else a client sends is counted as "other".
MECHANISMS = ("PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER", "other")
LISTENERS = ("submission", "implicit_tls")
TLS_VERSIONS = ("TLSv1.2", "TLSv1.3", "other")
REPLY_CLASSES = ("2xx", "3xx", "4xx", "5xx")
CONNECTION_REFUSALS = ("max_connections", "max_connections_per_ip", "shutting_down")
MESSAGE_REFUSALS = (
    "sender_not_owned",  # MAIL FROM is not the inbox's address (553)
    "message_too_large",  # over SMTP_MAX_MESSAGE_SIZE (552)
    "line_too_long",  # a body line over 998 octets (500)
    "no_room",  # the bodies in memory are at SMTP_MAX_BUFFERED_DATA (452)
    "author_not_inbox",  # From:/Sender: names someone else (550)
    "not_stored",  # the database did not take it (451)
)
RECIPIENT_REFUSALS = (
    "daily_limit_inbox",  # the inbox's daily recipient limit (450 4.7.1)
    "daily_limit_organization",  # its organization's (450 4.7.1)
    "not_held",  # the database could not hold room under a limit (451)
)
DATABASE_THREADS = ("check", "commit")

# Seconds: AUTH replies (a failure is answered SMTP_AUTH_FAILURE_DELAY after the
# AUTH began, 1 s by default) and database batches.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.5, 5.0, 10.0)
# Bytes: 1 KiB to 16 MiB by fours (SMTP_MAX_MESSAGE_SIZE is 10 MiB by default).
SIZE_BUCKETS = tuple(float(1024 * 4**n) for n in range(8))
# Seconds from acceptance to delivery: the retries of a deferred recipient wait
# minutes to hours (DELIVERY_MIN_BACKOFF .. DELIVERY_MAX_LIFETIME).
DELIVERY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0)


class Incrementable(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class Observable(Protocol):
    def observe(self, amount: float) -> None: ...


class Settable(Protocol):
    def set(self, value: float) -> None: ...


class Tally:
    """A counter's increments, kept as a plain int by one thread (the event loop)
    and handed to the counter's child by :meth:`flush` (on that same thread)."""

    __slots__ = ("child", "pending")

    def __init__(self, child: Incrementable | None) -> None:
        self.child = child
        self.pending = 0

    def flush(self) -> None:
        if self.pending and self.child is not None:
            self.child.inc(self.pending)
        self.pending = 0


class _Nothing:
    """A histogram child, gauge or counter that records nothing (metrics off)."""

    def observe(self, amount: float) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def inc(self, amount: float = 1) -> None:
        pass


NOTHING = _Nothing()


class GatewayFamilies:
    """The gateway's metric families, created once per process (registering a
    name twice in one registry is an error; in-process tests run many servers)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def name(short: str) -> str:
            return PREFIX + short

        self.registry = registry
        self.connections = Counter(
            name("connections_total"),
            "TCP connections accepted, by listener (admitted or refused).",
            ["listener"],
            registry=registry,
        )
        self.connections_refused = Counter(
            name("connections_refused_total"),
            "Connections refused with a 421 at admission, by the limit that refused them.",
            ["reason"],
            registry=registry,
        )
        self.sessions = Counter(name("sessions_total"), "SMTP sessions admitted and greeted.", registry=registry)
        self.sessions_active = Gauge(
            name("sessions_active"), "SMTP sessions open now.", registry=registry, multiprocess_mode="livesum"
        )
        self.auth_attempts = Counter(
            name("auth_attempts_total"),
            "AUTH attempts, by mechanism (PLAIN, LOGIN, other), outcome (success, failure) and the "
            "recorded reason (AuthAttempt.reason).",
            ["mechanism", "outcome", "reason"],
            registry=registry,
        )
        self.auth_duration = Histogram(
            name("auth_duration_seconds"),
            "From the AUTH command to its final reply, by outcome (failures include SMTP_AUTH_FAILURE_DELAY).",
            ["outcome"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.messages_accepted = Counter(
            name("messages_accepted_total"), "Messages committed and answered 250.", registry=registry
        )
        self.messages_refused = Counter(
            name("messages_refused_total"), "Messages refused, by reason.", ["reason"], registry=registry
        )
        self.recipients_refused = Counter(
            name("recipients_refused_total"),
            "RCPTs refused by the daily recipient limits, by reason.",
            ["reason"],
            registry=registry,
        )
        self.message_size = Histogram(
            name("message_size_bytes"), "Size of the messages accepted.", buckets=SIZE_BUCKETS, registry=registry
        )
        self.replies = Counter(
            name("replies_total"), "SMTP replies sent, by code class.", ["code_class"], registry=registry
        )
        self.database_batch_duration = Histogram(
            name("database_batch_duration_seconds"),
            "How long one batch of database jobs took, by thread (check: AUTH reads; commit: group commit).",
            ["thread"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.records_kept = Gauge(
            name("auth_records_kept"),
            "AuthAttempt records held in memory because the database could not take them.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.records_dropped = Counter(
            name("auth_records_dropped_total"),
            "AuthAttempt records dropped from memory past SMTP_AUTH_BACKLOG_MAX (their log line is then the only copy).",
            registry=registry,
        )
        self.bodies_buffered = Gauge(
            name("message_bodies_buffered_bytes"),
            "Bytes of message bodies held in memory now (bounded by SMTP_MAX_BUFFERED_DATA per process).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.tls_handshakes = Counter(
            name("tls_handshakes_total"),
            "TLS handshakes completed, by listener (submission: STARTTLS) and TLS version.",
            ["listener", "version"],
            registry=registry,
        )
        self.tls_failures = Counter(
            name("tls_handshake_failures_total"),
            "TLS handshakes that failed, by listener.",
            ["listener"],
            registry=registry,
        )
        self.heartbeat = Gauge(
            name("event_loop_heartbeat_timestamp_seconds"),
            "Unix time of the event loop's last heartbeat (with several workers: the oldest).",
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.loop_lag = Gauge(
            name("event_loop_lag_seconds"),
            "How late the event loop ran its last heartbeat (with several workers: the latest).",
            registry=registry,
            multiprocess_mode="livemax",
        )


@functools.cache
def gateway_families() -> GatewayFamilies:
    return GatewayFamilies(CollectorRegistry(auto_describe=True))


def _mechanism(name: str) -> str:
    return name if name in MECHANISMS else "other"


class GatewayMetrics:
    """What the gateway's hot paths count, with pre-bound children; ``enabled``
    False (no metrics port) leaves every child a no-op."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        families = gateway_families()

        def tally(family: Counter, *labels: str) -> Tally:
            if not enabled:
                return Tally(None)
            return Tally(family.labels(*labels) if labels else family)

        self.connections = {listener: tally(families.connections, listener) for listener in LISTENERS}
        self.connections_refused = {
            reason: tally(families.connections_refused, reason) for reason in CONNECTION_REFUSALS
        }
        self.sessions = tally(families.sessions)
        # (mechanism, reason) -> its tally; the outcome follows from the reason.
        self.auth_attempts = {
            (mechanism, reason.value): tally(
                families.auth_attempts,
                mechanism,
                "success" if reason is Reason.OK else "failure",
                reason.value,
            )
            for mechanism in MECHANISMS
            for reason in Reason
        }
        self.messages_accepted = tally(families.messages_accepted)
        self.messages_refused = {reason: tally(families.messages_refused, reason) for reason in MESSAGE_REFUSALS}
        self.recipients_refused = {reason: tally(families.recipients_refused, reason) for reason in RECIPIENT_REFUSALS}
        # By a reply's first character, as text or bytes: "2" and b"2" -> the 2xx tally.
        self.replies = {code_class: tally(families.replies, code_class) for code_class in REPLY_CLASSES}
        self.reply_tallies: dict[str | bytes, Tally] = {}
        for code_class, reply_tally in self.replies.items():
            self.reply_tallies[code_class[0]] = self.reply_tallies[code_class[0].encode()] = reply_tally
        self.tls_handshakes = {
            (listener, version): tally(families.tls_handshakes, listener, version)
            for listener in LISTENERS
            for version in TLS_VERSIONS
        }
        self.tls_failures = {listener: tally(families.tls_failures, listener) for listener in LISTENERS}
        self._tallies: list[Tally] = [
            *self.connections.values(),
            *self.connections_refused.values(),
            self.sessions,
            *self.auth_attempts.values(),
            self.messages_accepted,
            *self.messages_refused.values(),
            *self.recipients_refused.values(),
            *self.replies.values(),
            *self.tls_handshakes.values(),
            *self.tls_failures.values(),
        ]
        self.auth_success: Observable = families.auth_duration.labels("success") if enabled else NOTHING
        self.auth_failure: Observable = families.auth_duration.labels("failure") if enabled else NOTHING
        self.message_size: Observable = families.message_size if enabled else NOTHING
        self.check_batch: Observable = families.database_batch_duration.labels("check") if enabled else NOTHING
        self.commit_batch: Observable = families.database_batch_duration.labels("commit") if enabled else NOTHING
        self._records_dropped: Incrementable = families.records_dropped if enabled else NOTHING
        self._dropped_seen = 0
        self._sessions_active: Settable = families.sessions_active if enabled else NOTHING
        self._records_kept: Settable = families.records_kept if enabled else NOTHING
        self._bodies_buffered: Settable = families.bodies_buffered if enabled else NOTHING
        self._heartbeat: Settable = families.heartbeat if enabled else NOTHING
        self._loop_lag: Settable = families.loop_lag if enabled else NOTHING

    # --- on the event loop ----------------------------------------------------------
    def auth_attempt(self, mechanism: str, reason: Reason) -> None:
        self.auth_attempts[(_mechanism(mechanism), reason.value)].pending += 1

    def tls_handshake(self, listener: str, version: str) -> None:
        self.tls_handshakes[(listener, version if version in TLS_VERSIONS else "other")].pending += 1

    def flush(self, sessions: int, records_kept: int, records_dropped: int, bodies_buffered: int, lag: float) -> None:
        """Hand the tallies to their counters and set the gauges: a few times a
        second, by the server's heartbeat, and once more when it stops.
        ``records_dropped``: how many the recorder has dropped ever."""
        for tally in self._tallies:
            if tally.pending:
                tally.flush()
        if records_dropped > self._dropped_seen:
            self._records_dropped.inc(records_dropped - self._dropped_seen)
            self._dropped_seen = records_dropped
        self._sessions_active.set(sessions)
        self._records_kept.set(records_kept)
        self._bodies_buffered.set(bodies_buffered)
        self._heartbeat.set(time.time())
        self._loop_lag.set(lag)


OFF = GatewayMetrics(enabled=False)


# --- the runsmtp --workers supervisor -----------------------------------------------
class _SupervisorCollector(Collector):
    def __init__(self, running: int, replaced: int) -> None:
        self.running, self.replaced = running, replaced

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        yield GaugeMetricFamily(
            PREFIX + "workers", "Gateway worker processes running (runsmtp --workers).", self.running
        )
        yield CounterMetricFamily(
            PREFIX + "worker_replacements",  # prometheus-client adds _total
            "Worker processes that died after they had served, and were replaced.",
            self.replaced,
        )


def supervisor_families(running: int, replaced: int) -> CollectorRegistry:
    """The supervisor's own metrics, as one scrape shows them beside the workers' sum."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SupervisorCollector(running, replaced))
    return registry


# --- the delivery worker (manage.py deliver) ----------------------------------------
DELIVERY_STATES = ("queued", "deferred")  # the recipients still to deliver
DELIVERY_RESULTS = ("delivered", "deferred", "bounced")


class DeliveryMetrics:
    """The delivery worker's metrics, in a registry of its own (the worker serves
    it on DELIVERY_METRICS_PORT). Counted by the dispatcher thread only."""

    def __init__(self) -> None:
        def name(short: str) -> str:
            return PREFIX + "delivery_" + short

        self.registry = CollectorRegistry(auto_describe=True)
        queue = Gauge(
            name("queue_recipients"),
            "Recipients waiting in the queue (all workers), by state: queued (not tried yet) or deferred (to retry).",
            ["state"],
            registry=self.registry,
        )
        self.queue = {state: queue.labels(state) for state in DELIVERY_STATES}
        self.oldest_deferred_age = Gauge(
            name("oldest_deferred_age_seconds"),
            "Age of the oldest deferred recipient's message (0: none deferred).",
            registry=self.registry,
        )
        attempts = Counter(
            name("attempts_total"),
            "Delivery attempts of this worker, per recipient, by result.",
            ["result"],
            registry=self.registry,
        )
        self.attempts = {result: attempts.labels(result) for result in DELIVERY_RESULTS}
        self.latency = Histogram(
            name("latency_seconds"),
            "From the gateway's 250 to the upstream's acceptance, per delivered recipient.",
            buckets=DELIVERY_BUCKETS,
            registry=self.registry,
        )
        self.upstream_duration = Histogram(
            name("upstream_duration_seconds"),
            "How long one message's transaction with the upstream took.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def queue_depth(self, counts: dict[str, int], oldest_deferred_age: float) -> None:
        for state, gauge in self.queue.items():
            gauge.set(counts.get(state, 0))
        self.oldest_deferred_age.set(oldest_deferred_age)

    def attempted(self, results: Iterable[str]) -> None:
        for result in results:
            counter = self.attempts.get(result)
            if counter is not None:
                counter.inc()
