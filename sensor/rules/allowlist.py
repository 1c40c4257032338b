"""Sanctioned exceptions: hosts, networks and names whose hits are counted, not alerted.

```yaml
schema: kaspwatch-allowlist/1
entries:
  - id: lab-decommission
    hosts: [10.20.0.0/24, 10.9.8.7]   # client addresses or networks (optional)
    names: [upd.kaspersky.com]        # names, matched on label boundaries (optional)
    expires: 2026-12-31               # optional; the entry is ignored from that day on
    reason: KES lab being decommissioned, ticket CHG-1234
```
An entry applies when every condition it gives holds (hosts AND names).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from kaspwatch.yamlfile import load_yaml
from sensor.rules.indicators import PackError

ALLOWLIST_SCHEMA: Final = "kaspwatch-allowlist/1"
_ID: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    hosts: tuple[Network, ...]
    names: frozenset[str]
    expires: dt.date | None
    reason: str

    def active(self, today: dt.date) -> bool:
        return self.expires is None or today < self.expires

    def covers(self, host: str, name: str) -> bool:
        if self.hosts:
            try:
                addr = ipaddress.ip_address(host)
            except ValueError:
                return False
            if not any(addr in net for net in self.hosts):
                return False
        if self.names:
            labels = name.split(".")
            if not any(".".join(labels[i:]) in self.names for i in range(len(labels))):
                return False
        return True


class Allowlist:
    def __init__(self, entries: tuple[Entry, ...] = (), path: str = "") -> None:
        self.entries = entries
        self.path = path

    def active_entries(self, today: dt.date | None = None) -> list[Entry]:
        today = today or dt.datetime.now(dt.UTC).date()
        return [e for e in self.entries if e.active(today)]

    def find(self, host: str, name: str, today: dt.date | None = None) -> Entry | None:
        if not self.entries:
            return None
        for entry in self.active_entries(today):
            if entry.covers(host, name):
                return entry
        return None


def load_allowlist(path: str | Path) -> Allowlist:
    where = str(path)
    doc, _ = load_yaml(path, PackError)
    if not isinstance(doc, dict) or doc.get("schema") != ALLOWLIST_SCHEMA:
        raise PackError(f"{where}:1: an allowlist is a mapping with schema: {ALLOWLIST_SCHEMA}")
    items = doc.get("entries") or []
    if not isinstance(items, list):
        raise PackError(f"{where}:1: 'entries' must be a list")
    entries = []
    seen: set[str] = set()
    for item in items:
        entry = _entry(where, item)
        if entry.id in seen:
            raise PackError(f"{where}:{item['__line__']}: duplicate id {entry.id!r}")
        seen.add(entry.id)
        entries.append(entry)
    return Allowlist(tuple(entries), where)


def _entry(where: str, item: Any) -> Entry:
    if not isinstance(item, dict):
        raise PackError(f"{where}: every allowlist entry must be a mapping, got {item!r}")
    place = f"{where}:{item['__line__']}"
    entry_id = item.get("id")
    if not isinstance(entry_id, str) or not _ID.match(entry_id):
        raise PackError(f"{place}: 'id' is required (letters, digits, '.', '_', '-')")
    reason = item.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise PackError(f"{place}: 'reason' is required: say why this exception is sanctioned")
    hosts = []
    for h in item.get("hosts") or []:
        try:
            hosts.append(ipaddress.ip_network(str(h), strict=False))
        except ValueError:
            raise PackError(f"{place}: host {h!r} is not an IP address or network") from None
    names = []
    for n in item.get("names") or []:
        if not isinstance(n, str) or "." not in n.strip(".") or n != n.lower():
            raise PackError(
                f"{place}: name {n!r} must be a lowercase name with at least two labels"
            )
        names.append(n.rstrip("."))
    if not hosts and not names:
        raise PackError(f"{place}: an entry needs hosts, names or both (it would allow everything)")
    expires = item.get("expires")
    if expires is not None and not isinstance(expires, dt.date):
        raise PackError(f"{place}: expires must be a date, YYYY-MM-DD")
    return Entry(entry_id, tuple(hosts), frozenset(names), expires, reason.strip())
