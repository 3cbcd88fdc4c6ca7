"""A session's state: who it authenticated as, its per-connection and
per-message values (aiosmtpd's ``Session`` and ``Envelope``, extended)."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from aiosmtpd.smtp import Envelope, Session

from smtpgateway.auth.limits import Client
from smtpgateway.tls import TlsInfo

UNKNOWN_CLIENT = Client(None, None, exempt=False)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a session authenticated as."""

    inbox_pk: int
    inbox_id: str
    email: str
    organization_id: int
    api_key_id: int
    # Recipients per 24 hours, as of the AUTH (0: none).
    inbox_recipient_limit: int = 0
    organization_recipient_limit: int = 0


@dataclass(frozen=True, slots=True)
class Overlong:
    """A line longer than the session reads (then read to its end and dropped)."""

    start: bytes  # its first bytes: enough to tell an AUTH command


class GatewayEnvelope(Envelope):
    def __init__(self) -> None:
        super().__init__()
        # The recipients so far, domain in lower case: to keep each mailbox once.
        self.mailboxes: set[str] = set()
        # The daily-limit holds its recipients took (smtpgateway.storage.sending_limits).
        self.hold_ids: list[int] = []


class GatewaySession(Session):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.session_id: str = secrets.token_hex(6)
        self.identity: Identity | None = None
        self.tls: TlsInfo | None = None
        self.auth_failures = 0
        # Holds given back (ReleaseJob) that the next HoldJob deletes again first.
        self.released_holds: list[int] = []
        # The client as the limits see it (exempt or not, the network counted),
        # set once its address is known, before the first command.
        self.client = UNKNOWN_CLIENT

    @property
    def remote_addr(self) -> str | None:
        """The client's address (after a PROXY header, the real client's), as
        :func:`client_address` made it when the connection or header came in."""
        return self.peer[0] if isinstance(self.peer, tuple) else None

    def log_fields(self) -> dict[str, str]:
        """This session's fields for a log record (``extra=``), which
        ``LOG_FORMAT=json`` writes as fields of their own."""
        fields = {"session_id": self.session_id}
        if self.remote_addr is not None:
            fields["client_address"] = self.remote_addr
        if self.identity is not None:
            fields["inbox_id"] = self.identity.inbox_id
        return fields


def client_address(address: object) -> str | None:
    """An address as the gateway records, counts and limits it: the IP address's
    text without an IPv6 zone, or None if it is not an IP address.

    A link-local client's socket address carries a zone ("fe80::7%eth0"), naming
    an interface of this host rather than anything about the client; PostgreSQL's
    inet refuses it, and one such record would fail its whole batch. A PROXY v2
    header for a client on a UNIX socket gives a path (bytes), not an address."""
    if isinstance(address, (IPv4Address, IPv6Address)):
        address = str(address)
    if not isinstance(address, str):
        return None
    return address.partition("%")[0]


class ClientGone(Exception):
    """The client closed its side; the session ends quietly."""
