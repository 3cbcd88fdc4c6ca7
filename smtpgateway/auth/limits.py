"""Abuse limits as values: the AUTH rate limit, the throttle exemptions, and the
registry of open connections. No ORM and no I/O here.

Lockout is by client address, never by inbox or key: an attacker who fails
against a victim's inbox id from elsewhere cannot lock the victim out. The cost is
that each address of a distributed attack gets its own budget, which is acceptable
because a 238-bit key cannot be guessed anyway; the limit exists to shed the load
and noise of credential stuffing, not to protect weak secrets.

An IPv6 client is counted by its network (``SMTP_IPV6_CLIENT_PREFIX``, /64), not
its address: one host is given a whole /64 and can take a new address from it
for every attempt, which would otherwise give it a fresh budget each time. A /64
is one network, as one IPv4 address is one NAT: the hosts behind either share a
budget.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``failures`` failed AUTH attempts per client address per ``window``."""

    failures: int
    window: timedelta

    @classmethod
    def parse(cls, text: str) -> RateLimit | None:
        """``"10/600"`` is 10 failures per 600 seconds; ``""`` or ``"0"`` is no limit."""
        text = text.strip()
        if text in ("", "0"):
            return None
        failures, _, seconds = text.partition("/")
        try:
            limit = cls(int(failures), timedelta(seconds=float(seconds)))
        except ValueError:
            raise ValueError(f"SMTP_AUTH_RATE_LIMIT must look like 10/600 (failures/seconds), not {text!r}") from None
        if limit.failures < 1 or limit.window <= timedelta(0):
            raise ValueError(f"SMTP_AUTH_RATE_LIMIT needs positive numbers, not {text!r}")
        return limit


def checked_ipv6_prefix(bits: int) -> int:
    """``SMTP_IPV6_CLIENT_PREFIX``: shorter than /32 would lump providers together."""
    if not 32 <= bits <= 128:
        raise ValueError(f"SMTP_IPV6_CLIENT_PREFIX must be between 32 and 128, not {bits}")
    return bits


def parse_networks(entries: list[str]) -> tuple[Network, ...]:
    """CIDR list (``127.0.0.0/8``, ``::1``) as networks; a bare address is a /32 or /128."""
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries if entry.strip())


@dataclass(frozen=True, slots=True)
class Client:
    """A client address as the limits see it, worked out once per connection
    (parsing, masking and formatting an IPv6 address is not free)."""

    address: str | None
    # What the per-address limits count by: an IPv4 address as it is, an IPv6
    # address as its network ("2001:db8:1:2::/64"), or as itself at /128.
    network: str | None
    # In SMTP_THROTTLE_EXEMPT: no rate limit, failure delay or per-address limit.
    exempt: bool


def classify_client(address: str | None, exempt: tuple[Network, ...], ipv6_prefix: int) -> Client:
    """``address`` as ``protocol.client_address`` makes it. An IPv4 address
    written IPv4-mapped (``::ffff:192.0.2.1``, from a dual-stack socket) is that
    IPv4 address, for the exemptions and the count alike."""
    if address is None:
        return Client(None, None, False)
    if ":" not in address and not exempt:
        return Client(address, address, False)  # IPv4, nothing exempt: no parsing
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return Client(address, address, False)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.version == 4 or ipv6_prefix >= 128:
        network = str(ip)
    else:
        host_bits = 128 - ipv6_prefix
        network = f"{ipaddress.IPv6Address(int(ip) >> host_bits << host_bits)}/{ipv6_prefix}"
    return Client(address, network, any(ip in candidate for candidate in exempt))


class ConnectionRegistry:
    """Counts open sessions overall and per client (:attr:`Client.network`; one
    event loop: no lock)."""

    def __init__(self, max_total: int, max_per_address: int) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.total = 0
        self._per_address: Counter[str] = Counter()

    def admit(self, client: Client) -> bool:
        """Count a new session in, or return False if a limit is reached."""
        if self.max_total and self.total >= self.max_total:
            return False
        key = client.network or ""
        if self.max_per_address and not client.exempt and self._per_address[key] >= self.max_per_address:
            return False
        self.total += 1
        self._per_address[key] += 1
        return True

    def refused_by(self) -> str:
        """Which limit :meth:`admit` has just refused by (for the metrics)."""
        if self.max_total and self.total >= self.max_total:
            return "max_connections"
        return "max_connections_per_ip"

    def release(self, client: Client) -> None:
        key = client.network or ""
        self.total -= 1
        self._per_address[key] -= 1
        if self._per_address[key] <= 0:
            del self._per_address[key]
