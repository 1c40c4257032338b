"""The asset map: which site, zone, owner and criticality an address belongs to.

Critical-infrastructure networks are segmented (OT vs IT); a Kaspersky hit in an OT zone
is worse than one on an office laptop, so alerts carry the asset and escalate on it.

YAML (``schema: kaspwatch-assets/1``, a list under ``networks``) or CSV with the header
``cidr,site,zone,owner,criticality`` (optionally ``mac`` and ``host_name`` columns). An
entry names a network (``cidr``) or one machine (``mac`` or ``host_name``, exactly one of
the three). A machine's entry wins over any network when the identity valid at the hit
(consumers/identity.py) has that MAC or host name: a DHCP address moves, the machine does
not. Then the most specific network wins.
"""

from __future__ import annotations

import csv
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from kaspwatch.identity import normalize_mac
from kaspwatch.yamlfile import YamlError, load_yaml

ASSETS_SCHEMA: Final = "kaspwatch-assets/1"
CRITICALITIES: Final = ("low", "medium", "high", "critical", "unknown")
OT_ZONES: Final = frozenset({"ot", "scada", "ics", "dcs", "plc", "process", "control", "safety"})


class AssetError(YamlError):
    """The asset map is invalid. ``str()`` is ``file:line: message``."""


@dataclass(frozen=True, slots=True)
class Asset:
    site: str = "unknown"
    zone: str = "unknown"
    owner: str = ""
    criticality: str = "unknown"

    @property
    def is_ot(self) -> bool:
        """Operational technology: a zone named as such (ot, scada, ics, dcs, plc...)."""
        return self.zone.lower() in OT_ZONES or self.zone.lower().startswith("ot-")


UNKNOWN: Final = Asset()
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# what an entry is keyed by: a network, or ("mac", aa:bb:..) / ("host_name", lower-case name)
Key = Network | tuple[str, str]


class AssetMap:
    def __init__(self, entries: list[tuple[Key, Asset]]) -> None:
        nets = [(k, a) for k, a in entries if not isinstance(k, tuple)]
        # longest prefix first, so the first containing network is the most specific
        self._entries = sorted(nets, key=lambda e: e[0].prefixlen, reverse=True)
        self._machines = {k: a for k, a in entries if isinstance(k, tuple)}

    def __len__(self) -> int:
        return len(self._entries) + len(self._machines)

    def lookup(self, host: str, mac: str = "", host_name: str = "") -> Asset:
        """The asset of ``host``: the entry of its machine (``mac``, ``host_name``: the
        identity that held the address at the hit) if listed, else its network's."""
        if self._machines:
            for key in (("mac", mac), ("host_name", host_name.lower())):
                found = self._machines.get(key) if key[1] else None
                if found is not None:
                    return found
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return UNKNOWN
        for net, asset in self._entries:
            if addr.version == net.version and addr in net:
                return asset
        return UNKNOWN

    @property
    def sites(self) -> set[str]:
        return {a.site for _, a in self._entries} | {a.site for a in self._machines.values()}


_HOST_NAME: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,254}")


def _key(place: str, row: dict[str, object]) -> Key:
    given = [k for k in ("cidr", "mac", "host_name") if str(row.get(k) or "").strip()]
    if len(given) != 1:
        raise AssetError(
            f"{place}: an entry has exactly one of cidr, mac, host_name"
            f" ({', '.join(given) or 'none'} given)"
        )
    raw = str(row[given[0]]).strip()
    if given[0] == "mac":
        try:
            return ("mac", normalize_mac(raw))
        except ValueError:
            raise AssetError(f"{place}: mac {raw!r} is not a MAC (aa:bb:cc:dd:ee:ff)") from None
    if given[0] == "host_name":
        if not _HOST_NAME.fullmatch(raw):
            raise AssetError(f"{place}: host_name {raw!r} is not a host name")
        return ("host_name", raw.lower())
    try:
        return ipaddress.ip_network(raw, strict=False)
    except ValueError:
        raise AssetError(f"{place}: cidr {raw!r} is not a network") from None


def _asset(place: str, row: dict[str, object]) -> tuple[Key, Asset]:
    key = _key(place, row)
    crit = str(row.get("criticality") or "unknown").strip().lower()
    if crit not in CRITICALITIES:
        raise AssetError(f"{place}: criticality {crit!r} is not one of {', '.join(CRITICALITIES)}")
    site = str(row.get("site") or "").strip()
    if not site:
        raise AssetError(f"{place}: site is required")
    return key, Asset(
        site, str(row.get("zone") or "unknown").strip(), str(row.get("owner") or "").strip(), crit
    )


def load_assets(path: str | Path | None) -> AssetMap:
    if not path:
        return AssetMap([])
    where = str(path)
    if where.endswith(".csv"):
        try:
            with open(where, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                rows = [(f"{where}:{reader.line_num}", row) for row in reader]
        except OSError as exc:
            raise AssetError(f"{where}: cannot read: {exc.strerror}") from None
        return _unique([_asset(place, row) for place, row in rows], [p for p, _ in rows])
    doc, _ = load_yaml(where)
    if not isinstance(doc, dict) or doc.get("schema") != ASSETS_SCHEMA:
        raise AssetError(f"{where}:1: an asset map is a mapping with schema: {ASSETS_SCHEMA}")
    items = doc.get("networks") or []
    if not isinstance(items, list):
        raise AssetError(f"{where}:1: 'networks' must be a list")
    places = [(f"{where}:{r.get('__line__', 0)}", r) for r in items if isinstance(r, dict)]
    return _unique([_asset(place, r) for place, r in places], [p for p, _ in places])


def _unique(entries: list[tuple[Key, Asset]], places: list[str]) -> AssetMap:
    """The map; a machine listed twice is an error naming both places (which would win?)."""
    seen: dict[Key, int] = {}
    for i, (key, _) in enumerate(entries):
        if isinstance(key, tuple) and key in seen:
            raise AssetError(f"{places[i]}: {key[0]} {key[1]!r} listed twice (first at "
                             f"{places[seen[key]]})")  # fmt: skip
        seen[key] = i
    return AssetMap(entries)
