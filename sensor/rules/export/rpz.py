"""A DNS Response Policy Zone for BIND, Unbound and PowerDNS Recursor (checked with Debian's
``named-checkzone`` and served by Debian's ``unbound``).

QNAME triggers: an exact or range name is itself, a suffix zone is itself plus ``*.zone``;
pack exclusions become ``rpz-passthru.`` (an exact trigger beats a wildcard, a longer wildcard
a shorter one). Prefixes are ``rpz-ip`` triggers: answers holding a Kaspersky address.
The action is one for the whole zone: ``nxdomain`` (``CNAME .``), ``nodata`` (``CNAME *.``) or
``passthru`` (log only: the resolver's RPZ log names every hit, the answer is unchanged).
"""

from __future__ import annotations

import ipaddress
import re
import zlib
from typing import Final

from sensor.rules.export.view import CONTENT, PackView, network
from sensor.rules.indicators import Indicator, expand_range

ORIGIN: Final = "rpz.kaspwatch."
ACTIONS: Final = {"nxdomain": ".", "nodata": "*.", "passthru": "rpz-passthru."}

CANNOT: Final = [
    "What a response policy zone cannot express (kaspwatch's own sensor does it):",
    "- names seen only in TLS SNI, QUIC SNI or HTTP Host (a resolver sees DNS only); an",
    "  indicator limited to HTTP, or to an HTTP path, is left out.",
    "- a '*' inside a label (wildcard indicators): RPZ wildcards cover whole labels only.",
    "- flows to Kaspersky addresses that no DNS answer named (rpz-ip acts on answers).",
    "- category, severity and sources: see the comment before each entry.",
]


def _groups(addr: ipaddress.IPv6Address) -> list[str]:
    """The eight 16-bit groups, the longest run of zero groups (two or more) as ``zz``."""
    words = [int.from_bytes(addr.packed[i : i + 2], "big") for i in range(0, 16, 2)]
    best, start = (0, 0), None
    for i, w in enumerate([*words, 1]):
        if w == 0 and start is None:
            start = i
        elif w != 0 and start is not None:
            if i - start > best[1] - best[0]:
                best = (start, i)
            start = None
    out = [f"{w:x}" for w in words]
    if best[1] - best[0] >= 2:
        out[best[0] : best[1]] = ["zz"]
    return out


def _trigger(ind: Indicator) -> str:
    net = network(ind)
    if isinstance(net, ipaddress.IPv4Network):
        octets = str(net.network_address).split(".")
    else:
        octets = _groups(net.network_address)
    return f"{net.prefixlen}.{'.'.join(reversed(octets))}.rpz-ip"


def _serial(version: str) -> int:
    """YYYYMMDDNN from a dated pack version (2026.11.27.2), so it grows with the pack; else a
    checksum of the version (still the same for the same packs)."""
    m = re.match(r"(\d{4})\.(\d{1,2})\.(\d{1,2})\.(\d{1,2})\b", version.split("@", 1)[-1])
    if m:
        y, mo, d, n = (int(g) for g in m.groups())
        return y * 1_000_000 + mo * 10_000 + d * 100 + n
    return zlib.crc32(version.encode()) % 2_000_000_000 + 1


def write(view: PackView, out_name: str, action: str = "nxdomain") -> dict[str, str]:
    target = ACTIONS[action]
    left_out: list[str] = []
    body: list[str] = []
    seen: set[str] = set()

    def entry(owner: str, rdata: str) -> None:
        if owner not in seen:  # a name two indicators share gets the first (the pack's order)
            seen.add(owner)
            body.append(f"{owner} CNAME {rdata}")

    for ind in view.indicators:
        if ind.match == "cidr":
            body.append(f"; {ind.id} {ind.category}/{ind.severity} {ind.pattern}")
            entry(_trigger(ind), target)
            continue
        if "dns" not in ind.where or ind.path_prefix or ind.match in CONTENT:
            left_out.append(f"- {ind.id} ({ind.pattern}): not a DNS indicator")
            continue
        if ind.match == "wildcard" or view.fully_excluded(ind):
            why = "a '*' inside a label" if ind.match == "wildcard" else "under an exclusion"
            left_out.append(f"- {ind.id} ({ind.pattern}): {why}")
            continue
        body.append(f"; {ind.id} {ind.category}/{ind.severity} {ind.match} {ind.pattern}")
        carved = {e.pattern for e in view.carve_outs(ind)}
        if ind.match == "suffix":
            entry(ind.pattern, target)
            entry(f"*.{ind.pattern}", target)
        else:
            for name in expand_range(ind.pattern):
                if name not in carved:
                    entry(name, target)
    body.append("; pack exclusions: answered normally")
    for e in view.exclusions:
        entry(e.pattern, "rpz-passthru.")
        if e.match == "suffix":
            entry(f"*.{e.pattern}", "rpz-passthru.")
    head = [
        *view.header(f"rpz (action {action})"),
        "",
        *CANNOT,
        *(["", "Indicators not exported:", *left_out] if left_out else []),
    ]
    serial = _serial(view.version)
    zone = [
        *(f"; {h}".rstrip() for h in head),
        f"$ORIGIN {ORIGIN}",
        "$TTL 300",
        f"@ SOA localhost. hostmaster.localhost. {serial} 3600 600 604800 300",
        "@ NS localhost.",
        *body,
    ]
    return {out_name: "\n".join(zone) + "\n"}
