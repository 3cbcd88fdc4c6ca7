"""When to try again, as Postfix does it: the first deferral waits the minimal
backoff, each further one twice as long, never more than the maximal one; a
recipient still undelivered after the maximal lifetime in the queue expires at
its next temporary failure (Postfix's ``maximal_queue_lifetime``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class RetryPolicy:
    min_backoff: float
    max_backoff: float
    max_lifetime: float

    def backoff(self, attempts: int) -> timedelta:
        """The wait after the ``attempts``-th attempt failed for now."""
        seconds = self.min_backoff * 2 ** max(0, attempts - 1)
        return timedelta(seconds=min(self.max_backoff, seconds))

    def expired(self, accepted_at: datetime, now: datetime) -> bool:
        return (now - accepted_at).total_seconds() >= self.max_lifetime
