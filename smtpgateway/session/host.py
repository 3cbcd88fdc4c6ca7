"""What a session reads of the server it belongs to, as typing protocols.

The session layer depends on these, never on the server's classes
(``smtpgateway.session.handler.GatewayHandler`` and
``smtpgateway.runtime.server.GatewayServer`` provide them), so the layers have no
import cycle, not even one for the type checker.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from smtpgateway.auth.limits import Client, ConnectionRegistry
from smtpgateway.auth.rules import Outcome
from smtpgateway.config import GatewayConfig
from smtpgateway.metrics import GatewayMetrics
from smtpgateway.session.body import BodyBudget
from smtpgateway.storage.jobs import AuthJob, Job


class DatabaseJobs(Protocol):
    """The database threads, as a session hands them work (``smtpgateway.storage.threads``)."""

    async def check(self, job: AuthJob) -> Outcome:
        """Decide an AUTH attempt (and record it)."""
        ...

    async def commit(self, job: Job) -> Any:
        """Run ``job`` in the next batch; its result once committed."""
        ...

    def submit(self, job: Job) -> None:
        """Run ``job`` without waiting for it."""
        ...


class LiveSession(Protocol):
    """A session as the server stops it."""

    @property
    def busy(self) -> bool:
        """A command is being carried out (a stop waits for it)."""
        ...

    def begin_shutdown(self) -> None: ...

    def abort(self) -> None: ...


class SessionHost(Protocol):
    """What every session of a server consults and shares."""

    @property
    def config(self) -> GatewayConfig: ...

    @property
    def db(self) -> DatabaseJobs: ...

    @property
    def connections(self) -> ConnectionRegistry: ...

    @property
    def metrics(self) -> GatewayMetrics: ...

    @property
    def body_budget(self) -> BodyBudget: ...

    @property
    def sessions(self) -> set[LiveSession]: ...

    @property
    def shutting_down(self) -> bool: ...

    @property
    def hooks(self) -> dict[str, Callable[..., Awaitable[str]]]:
        """aiosmtpd's hook table ("MAIL" -> handle_MAIL), built once."""
        ...

    def admission_refusal(self, client: Client) -> str | None:
        """The reply that refuses a new connection, or None to admit it."""
        ...
