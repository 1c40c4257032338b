"""The asset map: which site, zone, owner and criticality an address belongs to.

Critical-infrastructure networks are segmented (OT vs IT); a Kaspersky hit in an OT zone
is worse than one on an office laptop, so alerts carry the asset and escalate on it.

YAML (``schema: kaspwatch-assets/1``, a list under ``networks``) or CSV with the header
``cidr,site,zone,owner,criticality``. The most specific network wins.
"""

from __future__ import annotations

import csv
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Final

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


class AssetMap:
    def __init__(
        self, entries: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, Asset]]
    ) -> None:
        # longest prefix first, so the first containing network is the most specific
        self._entries = sorted(entries, key=lambda e: e[0].prefixlen, reverse=True)

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, host: str) -> Asset:
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
        return {a.site for _, a in self._entries}


def _asset(
    place: str, row: dict[str, object]
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, Asset]:
    try:
        net = ipaddress.ip_network(str(row.get("cidr", "")).strip(), strict=False)
    except ValueError:
        raise AssetError(f"{place}: cidr {row.get('cidr')!r} is not a network") from None
    crit = str(row.get("criticality") or "unknown").strip().lower()
    if crit not in CRITICALITIES:
        raise AssetError(f"{place}: criticality {crit!r} is not one of {', '.join(CRITICALITIES)}")
    site = str(row.get("site") or "").strip()
    if not site:
        raise AssetError(f"{place}: site is required")
    return net, Asset(
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
                return AssetMap([_asset(f"{where}:{reader.line_num}", row) for row in reader])
        except OSError as exc:
            raise AssetError(f"{where}: cannot read: {exc.strerror}") from None
    doc, _ = load_yaml(where)
    if not isinstance(doc, dict) or doc.get("schema") != ASSETS_SCHEMA:
        raise AssetError(f"{where}:1: an asset map is a mapping with schema: {ASSETS_SCHEMA}")
    rows = doc.get("networks") or []
    if not isinstance(rows, list):
        raise AssetError(f"{where}:1: 'networks' must be a list")
    return AssetMap(
        [_asset(f"{where}:{r.get('__line__', 0)}", r) for r in rows if isinstance(r, dict)]
    )
