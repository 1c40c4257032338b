"""IP flows worth reporting: starts of flows to watched address space (the pack's CIDRs)
and to addresses that DNS answers for watched names pointed at (IP attribution).

Attribution is what catches a product that resolved ``dnl-03.geo.kaspersky.com`` once and
then only talks to the address (over QUIC, ECH or a pinned connection). Both tables are
bounded, oldest entries evicted and counted; attribution honours the DNS TTL within limits.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from sensor.decode.packet import PROTO_TCP, Segment
from sensor.rules.indicators import Indicator
from sensor.rules.match import Matcher

TCP_SYN: Final = 0x02
TCP_ACK: Final = 0x10
DNS_PORTS: Final = frozenset({53, 5353, 5355})
MIN_TTL_S: Final = 60  # a zero TTL still means the client is about to connect
MAX_TTL_S: Final = 86400


@dataclass(frozen=True, slots=True)
class Attribution:
    name: str
    indicator: Indicator
    expires_ns: int


class FlowWatch:
    def __init__(self, max_attributions: int = 65536, max_udp_flows: int = 65536) -> None:
        self.max_attributions = max_attributions
        self.max_udp_flows = max_udp_flows
        self._attr: OrderedDict[bytes, Attribution] = OrderedDict()
        self._udp: OrderedDict[tuple[bytes, bytes, int], None] = OrderedDict()
        # (address, name) -> expiry: every name a DNS answer pointed at an address (the
        # table above keeps only the latest per address), for a hit's ``backed_by``
        self._named: OrderedDict[tuple[bytes, str], int] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._attr)

    def attribute(
        self,
        addresses: tuple[str, ...],
        name: str,
        ind: Indicator,
        ttl: int,
        ts_ns: int,
        also: tuple[str, ...] = (),
    ) -> None:
        """Remember that these addresses serve a watched name (and the names in ``also``:
        the name asked, when the watched one came through a CNAME chain), for ``ttl``
        seconds."""
        ttl = min(max(ttl, MIN_TTL_S), MAX_TTL_S)
        expires = ts_ns + ttl * 1_000_000_000
        for text in addresses:
            try:
                packed = ipaddress.ip_address(text).packed
            except ValueError:
                continue
            self._attr[packed] = Attribution(name, ind, expires)
            self._attr.move_to_end(packed)
            if len(self._attr) > self.max_attributions:
                self._attr.popitem(last=False)
                self.evicted += 1
            for named in {name, *also}:
                key = (packed, named)
                self._named.pop(key, None)
                self._named[key] = expires
                if len(self._named) > self.max_attributions:
                    self._named.popitem(last=False)  # bounded like the table above; its
                    # evictions follow that table's, so they are not counted twice

    def attributed(self, addr: bytes, name: str, ts_ns: int) -> bool:
        """Whether a DNS answer the sensor saw (for any client: at the edge it sees the
        resolver's upstream answers) pointed ``name`` at ``addr`` within its TTL."""
        expires = self._named.get((addr, name))
        return expires is not None and expires >= ts_ns

    def flow_start(
        self, seg: Segment, ts_ns: int, matcher: Matcher
    ) -> tuple[str | None, Indicator] | None:
        """(attributed name or None, indicator) when this segment starts a watched flow."""
        if seg.sport in DNS_PORTS or seg.dport in DNS_PORTS:
            return None  # DNS is read as DNS (and resolver bypass flagged there)
        if seg.proto == PROTO_TCP and seg.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN:
            return None
        found: tuple[str | None, Indicator] | None = None
        attr = self._attr.get(seg.dst)
        if attr is not None:
            if attr.expires_ns >= ts_ns:
                found = (attr.name, attr.indicator)
            else:
                del self._attr[seg.dst]
        if found is None:
            ind = matcher.match_ip(seg.dst)
            if ind is None:
                return None
            found = (None, ind)
        if seg.proto != PROTO_TCP and not self._first_udp(seg):
            return None
        return found

    def _first_udp(self, seg: Segment) -> bool:
        key = (seg.src, seg.dst, seg.dport)
        if key in self._udp:
            self._udp.move_to_end(key)
            return False
        self._udp[key] = None
        if len(self._udp) > self.max_udp_flows:
            self._udp.popitem(last=False)
            self.evicted += 1
        return True
