"""Abuse limits as values: the AUTH rate limit, the throttle exemptions, and the
registry of open connections. No ORM and no I/O here.

Lockout is by client address, never by inbox or key: an attacker who fails
against a victim's inbox id from elsewhere cannot lock the victim out. The cost is
that each address of a distributed attack gets its own budget, which is acceptable
because a 238-bit key cannot be guessed anyway; the limit exists to shed the load
and noise of credential stuffing, not to protect weak secrets.
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
    """Counts open sessions overall and per client address (one event loop: no lock)."""

    def __init__(self, max_total: int, max_per_address: int, exempt: tuple[Network, ...]) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.exempt = exempt
        self.total = 0
        self._per_address: Counter[str] = Counter()

    def admit(self, address: str | None) -> bool:
        """Count a new session in, or return False if a limit is reached."""
        if self.max_total and self.total >= self.max_total:
            return False
        key = address or ""
        if self.max_per_address and not is_exempt(address, self.exempt) and self._per_address[key] >= self.max_per_address:
            return False
        self.total += 1
        self._per_address[key] += 1
        return True

    def release(self, address: str | None) -> None:
        key = address or ""
        self.total -= 1
        self._per_address[key] -= 1
        if self._per_address[key] <= 0:
            del self._per_address[key]
