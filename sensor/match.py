"""Matching names and addresses against a pack: O(labels) per name, most specific wins.

Specificity, from most to least: exact (ranges expand to exact names), a wildcard
label directly under a zone, then suffix zones from the longest to the shortest.
"""

from __future__ import annotations

import ipaddress
import re
from collections import defaultdict
from typing import Final

from sensor.indicators import Indicator, Pack, expand_range

KIND_WHERE: Final = {
    "dns_query": "dns",
    "dns_answer": "dns",
    "tls_sni": "sni",
    "quic_sni": "sni",
    "http_host": "http",
    "http_connect": "http",
    "ip_flow": "ip",
}


class Matcher:
    def __init__(self, pack: Pack) -> None:
        self.pack = pack
        self._exact: dict[str, list[Indicator]] = defaultdict(list)
        self._suffix: dict[str, list[Indicator]] = defaultdict(list)
        self._wild: dict[str, list[tuple[re.Pattern[str], Indicator]]] = defaultdict(list)
        # prefix length -> {network int: indicators}, per address family
        self._nets: dict[int, dict[int, dict[int, list[Indicator]]]] = {4: {}, 6: {}}
        self._excl_exact = {e.pattern for e in pack.exclusions if e.match == "exact"}
        self._excl_suffix = {e.pattern for e in pack.exclusions if e.match == "suffix"}
        for ind in pack.indicators:
            if ind.match == "exact":
                self._exact[ind.pattern].append(ind)
            elif ind.match == "range":
                for name in expand_range(ind.pattern):
                    self._exact[name].append(ind)
            elif ind.match == "suffix":
                self._suffix[ind.pattern].append(ind)
            elif ind.match == "wildcard":
                first, parent = ind.pattern.split(".", 1)
                rx = re.compile(re.escape(first).replace(r"\*", "[a-z0-9_-]*") + r"\Z")
                self._wild[parent].append((rx, ind))
            elif ind.match == "cidr":
                net = ipaddress.ip_network(ind.pattern)
                by_len = self._nets[net.version].setdefault(net.prefixlen, {})
                by_len.setdefault(int(net.network_address), []).append(ind)
        self._v4_lens = sorted(self._nets[4], reverse=True)
        self._v6_lens = sorted(self._nets[6], reverse=True)

    def excluded(self, name: str) -> bool:
        if name in self._excl_exact:
            return True
        if not self._excl_suffix:
            return False
        labels = name.split(".")
        return any(".".join(labels[i:]) in self._excl_suffix for i in range(len(labels)))

    def match_name(self, name: str, kind: str = "dns_query") -> Indicator | None:
        """The most specific indicator for ``name`` that applies where ``kind`` was seen."""
        where = KIND_WHERE[kind]
        if self.excluded(name):
            return None
        for ind in self._exact.get(name, ()):
            if where in ind.where:
                return ind
        labels = name.split(".")
        if len(labels) > 1:
            parent = name[len(labels[0]) + 1 :]
            for rx, ind in self._wild.get(parent, ()):
                if where in ind.where and rx.match(labels[0]):
                    return ind
        suffix = self._suffix
        pos = 0
        for label in labels:
            zone = name[pos:]
            for ind in suffix.get(zone, ()):
                if where in ind.where:
                    return ind
            pos += len(label) + 1
        return None

    def match_ip(self, addr: bytes) -> Indicator | None:
        """Longest-prefix match of a packed IPv4 (4 bytes) or IPv6 (16 bytes) address."""
        if len(addr) == 4:
            lens, nets, bits = self._v4_lens, self._nets[4], 32
        else:
            lens, nets, bits = self._v6_lens, self._nets[6], 128
        if not lens:
            return None
        value = int.from_bytes(addr, "big")
        for plen in lens:
            key = value >> (bits - plen) << (bits - plen)
            hit = nets[plen].get(key)
            if hit:
                return hit[0]
        return None
