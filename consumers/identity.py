"""Which machine held an address when: the consumers' side of the identity topic.

``IdentityBook`` keeps, per address, the last few identity observations in time order,
and answers ``at(address, ts)``: the identity valid when a hit happened (the latest
observation at or before it, unless its DHCP lease had run out by then). An ARP record
that repeats the MAC of the DHCP record before it (or adds a MAC to an mDNS/LLMNR name)
keeps that record's names. Bounded: at
most ``max_addresses`` addresses (the least recently updated go first) and ``per_address``
observations each, counted in ``evicted`` and ``dropped``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, Final

from consumers.loop import EVENT_FAULTS, DeadLetter, Parsed, parse_with
from kaspwatch.bus import Record
from kaspwatch.event import EventError, event_from_json, parse_ts
from kaspwatch.identity import Identity, identity_from_json

MAX_ADDRESSES: Final = 65_536
PER_ADDRESS: Final = 8


@lru_cache(maxsize=65_536)
def _when(ts: str) -> datetime:
    """A timestamp as a time (events may carry 1 to 6 fraction digits: strings do not sort)."""
    return parse_ts(ts)


@lru_cache(maxsize=4096)
def mac_vendor(mac: str) -> str:
    """The IEEE registrant of the MAC's OUI (netaddr's copy of the registry); "" for a
    locally administered (random, virtual) MAC or one not registered."""
    if not mac or int(mac[:2], 16) & 0x02:
        return ""
    import netaddr  # type: ignore[import-untyped]

    try:
        return str(netaddr.EUI(mac).oui.registration().org)
    except (netaddr.NotRegisteredError, netaddr.AddrFormatError, IndexError):
        return ""


@dataclass(frozen=True, slots=True)
class HostIdentity:
    """What an alert says about the machine."""

    hostname: str
    mac: str
    mac_vendor: str
    source: str  # dhcp, arp, ...
    seen: str  # when the identity was observed
    fqdn: str = ""
    vendor_class: str = ""

    @classmethod
    def of(cls, ident: Identity) -> HostIdentity:
        return cls(
            ident.names(), ident.mac, mac_vendor(ident.mac), ident.source, ident.ts,
            ident.fqdn, ident.vendor_class,
        )  # fmt: skip


class IdentityBook:
    def __init__(self, max_addresses: int = MAX_ADDRESSES, per_address: int = PER_ADDRESS) -> None:
        self.history: dict[str, list[Identity]] = {}
        self.max_addresses, self.per_address = max_addresses, per_address
        self.evicted = 0  # addresses forgotten (table full)
        self.dropped = 0  # old observations of an address forgotten

    def __len__(self) -> int:
        return len(self.history)

    def add(self, ident: Identity) -> None:
        hist = self.history.pop(ident.address, [])
        self.history[ident.address] = hist  # most recently updated last
        at = _when(ident.ts)
        before = [i for i in hist if _when(i.ts) <= at]
        if before and not ident.names() and before[-1].mac in (ident.mac, ""):
            prev = before[-1]
            ident = replace(ident, hostname=prev.hostname, fqdn=prev.fqdn,
                            vendor_class=prev.vendor_class, lease_s=prev.lease_s)  # fmt: skip
        hist.append(ident)
        hist.sort(key=lambda i: _when(i.ts))
        if len(hist) > self.per_address:
            del hist[0]
            self.dropped += 1
        if len(self.history) > self.max_addresses:
            del self.history[next(iter(self.history))]
            self.evicted += 1

    def at(self, address: str, ts: str) -> HostIdentity | None:
        """The identity ``address`` had at ``ts``, or None when unknown then."""
        hist = self.history.get(address)
        if not hist:
            return None
        when = _when(ts)
        valid = [i for i in hist if _when(i.ts) <= when]
        if not valid:
            return None
        last = valid[-1]
        lease = last.lease_s
        if lease is not None and when > _when(last.ts) + timedelta(seconds=lease):
            return None  # the lease ran out and nobody renewed it where we could see
        return HostIdentity.of(last)


def parse_with_identities(
    identity_topic: str, hit: Callable[[bytes], Any] = event_from_json
) -> Callable[[list[Record]], Parsed]:
    """A batch parser for a subscriber of hits and identities: each record by its topic,
    a hit through ``hit`` (the contract check, or the alerts consumer's re-match too)."""
    return parse_with(hit, {identity_topic: identity_from_json})


def apply_identities(
    book: IdentityBook, dead_letter: DeadLetter
) -> Callable[[list[Record]], Awaitable[None]]:
    """For a topic read outside the group (``kaspwatch.bus.globaltable``): each identity
    record into ``book``, one that is not a valid record to the dead-letter handler."""

    async def apply(records: list[Record]) -> None:
        for rec in records:
            try:
                book.add(identity_from_json(rec.value))
            except EventError as exc:
                await dead_letter(rec, str(exc))
            except EVENT_FAULTS as exc:  # a bug a record triggers: that record only
                await dead_letter(rec, f"identity failed: {type(exc).__name__}: {str(exc)[:300]}")

    return apply
