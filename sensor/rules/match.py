"""Matching names and addresses against layered packs: O(labels) per name, most specific wins.

Specificity, from most to least: exact (ranges expand to exact names), a wildcard label
directly under a zone, then suffix zones from the longest to the shortest. Packs are
layered: a later pack (a site pack) overrides an earlier one's indicator of the same id,
and at equal specificity its indicators are tried first.
"""

from __future__ import annotations

import ipaddress
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import Final

from sensor.rules.indicators import CONTENT_WHERE, Indicator, Pack, expand_range

KIND_WHERE: Final = {
    "dns_query": "dns",
    "dns_answer": "dns",
    "tls_sni": "sni",
    "quic_sni": "sni",
    "http_host": "http",
    "http_connect": "http",
    "ip_flow": "ip",
    "http_request": "http_path",
    "file_magic": "http_body",
}


def _tails(patterns: Iterable[str]) -> set[str]:
    """The last two labels of each pattern: a name ending in none of them matches none."""
    return {".".join(p.split(".")[-2:]) for p in patterns}


def _has_tail(name: str, tails: set[str]) -> bool:
    last = name.rfind(".")
    return (
        name[name.rfind(".", 0, last) + 1 :] in tails
        or name[last + 1 :] in tails  # a one-label pattern (an exclusion of "local")
        or name in tails
    )


def _applies(ind: Indicator, where: str, path: str | None) -> bool:
    if where not in ind.where:
        return False
    return ind.path_prefix is None or (path is not None and path.startswith(ind.path_prefix))


class Matcher:
    def __init__(self, packs: Pack | Sequence[Pack]) -> None:
        self.packs: tuple[Pack, ...] = (packs,) if isinstance(packs, Pack) else tuple(packs)
        self._exact: dict[str, list[Indicator]] = defaultdict(list)
        self._suffix: dict[str, list[Indicator]] = defaultdict(list)
        self._wild: dict[str, list[tuple[re.Pattern[str], Indicator]]] = defaultdict(list)
        # prefix length -> {network int: indicators}, per address family
        self._nets: dict[int, dict[int, dict[int, list[Indicator]]]] = {4: {}, 6: {}}
        # content signals, in pack order: (compiled pattern or None for magic, indicator)
        self._content: dict[str, list[tuple[re.Pattern[str] | None, Indicator]]] = {
            m: [] for m in CONTENT_WHERE
        }
        self._excl_exact: set[str] = set()
        self._excl_suffix: set[str] = set()
        self.indicators: dict[str, Indicator] = {}
        for pack in reversed(self.packs):  # the last layer has priority
            self._excl_exact |= {e.pattern for e in pack.exclusions if e.match == "exact"}
            self._excl_suffix |= {e.pattern for e in pack.exclusions if e.match == "suffix"}
            for ind in pack.indicators:
                if ind.id in self.indicators:
                    continue  # overridden by a later layer
                self.indicators[ind.id] = ind
                self._add(ind)
        # whether any pack has a content signal (path, User-Agent, body magic)
        self.reads_content = any(self._content.values())
        self._v4_lens = sorted(self._nets[4], reverse=True)
        self._v6_lens = sorted(self._nets[6], reverse=True)
        self._has_exclusions = bool(self._excl_exact or self._excl_suffix)
        patterns = [*self._exact, *self._suffix, *(f"x.{parent}" for parent in self._wild)]
        self._tails = _tails(patterns)
        self._excl_tails = _tails(self._excl_exact | self._excl_suffix)

    @property
    def version(self) -> str:
        return "+".join(f"{p.name}@{p.version}" for p in self.packs)

    def _add(self, ind: Indicator) -> None:
        if ind.match in CONTENT_WHERE:
            rx = None if ind.match == "magic" else re.compile(ind.pattern, re.IGNORECASE)
            self._content[ind.match].append((rx, ind))
        elif ind.match == "exact":
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

    def match_request(self, path: str | None, user_agent: str | None) -> Indicator | None:
        """The first path indicator the request path (without its query) fits, else the
        first User-Agent indicator the whole User-Agent fits: the path is the stronger."""
        if path:
            bare = path.split("?", 1)[0]
            for rx, ind in self._content["path"]:
                if rx is not None and rx.search(bare):
                    return ind
        if user_agent:
            for rx, ind in self._content["user_agent"]:
                if rx is not None and rx.fullmatch(user_agent):
                    return ind
        return None

    def match_magic(self, magic: bytes, path_signal: bool) -> Indicator | None:
        """The indicator for a response body's first four bytes; one that asks for a path
        signal (``DIFF``) counts only when the request path was one."""
        for _rx, ind in self._content["magic"]:
            if ind.pattern.encode() == magic and (path_signal or not ind.with_path_signal):
                return ind
        return None

    def cidrs(self) -> list[str]:
        """Every watched network (``cidr`` indicators), for capture prefilters."""
        return [i.pattern for i in self.indicators.values() if i.match == "cidr"]

    def excluded(self, name: str) -> str | None:
        """The exclusion pattern that covers ``name``, if any."""
        if not _has_tail(name, self._excl_tails):
            return None
        if name in self._excl_exact:
            return name
        if self._excl_suffix:
            labels = name.split(".")
            for i in range(len(labels)):
                zone = ".".join(labels[i:])
                if zone in self._excl_suffix:
                    return zone
        return None

    def match_name(
        self, name: str, kind: str = "dns_query", path: str | None = None
    ) -> Indicator | None:
        """The most specific indicator for ``name`` that applies where ``kind`` was seen."""
        # Fast reject: every pattern ends in one of a few two-label tails (kaspersky.com,
        # co.uk ...); most names on a network end in none of them.
        if not _has_tail(name, self._tails):
            return None
        found = self._lookup(name, KIND_WHERE[kind], path)
        if found is not None and self._has_exclusions and self.excluded(name):
            return None
        return found

    def _lookup(self, name: str, where: str, path: str | None) -> Indicator | None:
        for ind in self._exact.get(name, ()):
            if _applies(ind, where, path):
                return ind
        dot = name.find(".")
        if dot > 0:
            first = name[:dot]
            for rx, ind in self._wild.get(name[dot + 1 :], ()):
                if rx.match(first) and _applies(ind, where, path):
                    return ind
        suffix = self._suffix
        pos = 0
        while pos >= 0:
            for ind in suffix.get(name[pos:], ()):
                if _applies(ind, where, path):
                    return ind
            pos = name.find(".", pos) + 1 or -1
        return None

    def candidates(self, name: str) -> Iterator[tuple[Indicator, str]]:
        """Every indicator that covers ``name``, most specific first, with the reason.
        For ``explain``; the hot path is ``match_name``."""
        for ind in self._exact.get(name, ()):
            how = "is one of the names of range" if ind.match == "range" else "equals"
            yield ind, f"{name} {how} {ind.pattern}"
        labels = name.split(".")
        if len(labels) > 1:
            parent = ".".join(labels[1:])
            for rx, ind in self._wild.get(parent, ()):
                if rx.match(labels[0]):
                    yield ind, f"label {labels[0]!r} fits wildcard {ind.pattern}"
        for i in range(len(labels)):
            zone = ".".join(labels[i:])
            for ind in self._suffix.get(zone, ()):
                yield (
                    ind,
                    f"{name} is {'the zone' if i == 0 else 'under zone'} {zone} (label boundary)",
                )

    def match_ip(self, addr: bytes) -> Indicator | None:
        """Longest-prefix match of a packed IPv4 (4 bytes) or IPv6 (16 bytes) address."""
        found = self.ip_candidates(addr)
        return found[0][0] if found else None

    def ip_candidates(self, addr: bytes) -> list[tuple[Indicator, str]]:
        if len(addr) == 4:
            lens, nets, bits = self._v4_lens, self._nets[4], 32
        else:
            lens, nets, bits = self._v6_lens, self._nets[6], 128
        value = int.from_bytes(addr, "big")
        out = []
        for plen in lens:
            key = value >> (bits - plen) << (bits - plen)
            for ind in nets[plen].get(key, ()):
                out.append((ind, f"{ipaddress.ip_address(addr)} is inside {ind.pattern}"))
        return out
