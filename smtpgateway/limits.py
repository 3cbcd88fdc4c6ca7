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


def client_network(address: str | None, ipv6_prefix: int) -> str | None:
    """What the per-address limits count by: an IPv4 address (also written
    IPv4-mapped, as a dual-stack socket gives it) as it is; an IPv6 address as its
    network of ``ipv6_prefix`` bits (``2001:db8:1:2::/64``), or as itself at 128.
    ``address`` is a client address as ``protocol.client_address`` makes it."""
    if address is None or ":" not in address:
        return address  # IPv4, the common case: no parsing
    try:
        ip = ipaddress.IPv6Address(address)
    except ValueError:
        return address
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    if ipv6_prefix >= 128:
        return str(ip)
    return str(ipaddress.IPv6Network((ip, ipv6_prefix), strict=False))


def parse_networks(entries: list[str]) -> tuple[Network, ...]:
    """CIDR list (``127.0.0.0/8``, ``::1``) as networks; a bare address is a /32 or /128."""
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries if entry.strip())


def is_exempt(address: str | None, exempt: tuple[Network, ...]) -> bool:
    if not address or not exempt:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return any(ip in network for network in exempt)


class ConnectionRegistry:
    """Counts open sessions overall and per client (:func:`client_network`; one
    event loop: no lock)."""

    def __init__(self, max_total: int, max_per_address: int, exempt: tuple[Network, ...], ipv6_prefix: int = 64) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.exempt = exempt
        self.ipv6_prefix = ipv6_prefix
        self.total = 0
        self._per_address: Counter[str] = Counter()

    def admit(self, address: str | None) -> bool:
        """Count a new session in, or return False if a limit is reached."""
        if self.max_total and self.total >= self.max_total:
            return False
        key = client_network(address, self.ipv6_prefix) or ""
        if self.max_per_address and not is_exempt(address, self.exempt) and self._per_address[key] >= self.max_per_address:
            return False
        self.total += 1
        self._per_address[key] += 1
        return True

    def release(self, address: str | None) -> None:
        key = client_network(address, self.ipv6_prefix) or ""
        self.total -= 1
        self._per_address[key] -= 1
        if self._per_address[key] <= 0:
            del self._per_address[key]
