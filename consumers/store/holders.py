"""Late binding of identities to hits: who held an address at a time, from the
``identities`` table, read when a query runs (so an identity stored after its hits still
names them)."""

from __future__ import annotations

import ipaddress

from consumers.store.base import Backend
from kaspwatch.identity import normalize_mac


class Holders:
    """Who held an address at a time, from the identities table (read once per address)."""

    def __init__(self, b: Backend) -> None:
        self.b = b
        self.by_address: dict[str, list[tuple[int, str, str, int | None]]] = {}
        self.loaded = False

    def load_all(self) -> Holders:
        """Read the whole table once (for a query over many hosts)."""
        rows = self.b.query(
            "SELECT address, ts_us, mac, hostname, fqdn, lease_s FROM identities "
            "ORDER BY address, ts_us"
        )
        for address, t, mac, name, fqdn, lease in rows:
            self.by_address.setdefault(str(address), []).append(
                (int(t), str(mac), str(name or fqdn.split(".")[0]), lease)
            )
        self.loaded = True
        return self

    def at(self, address: str, ts_us: int) -> dict[str, str]:
        hist = self.by_address.get(address)
        if hist is None and self.loaded:
            hist = []
        if hist is None:
            hist = self.by_address[address] = [
                (int(t), str(mac), str(name or fqdn.split(".")[0]), lease)
                for t, mac, name, fqdn, lease in self.b.query(
                    "SELECT ts_us, mac, hostname, fqdn, lease_s FROM identities "
                    "WHERE address = ? ORDER BY ts_us",
                    [address],
                )
            ]
        held = {"host_name": "", "mac": ""}
        for t, mac, name, lease in hist:
            if t > ts_us:
                break
            if name or held["mac"] not in (mac, ""):
                held = {"host_name": name, "mac": mac}
            else:  # an ARP record repeating (or adding) the MAC keeps the name
                held = {"host_name": held["host_name"], "mac": mac}
            if lease is not None and ts_us > t + lease * 1_000_000:
                held = {"host_name": "", "mac": ""}
        return held


def machine_named(text: str) -> tuple[str, str] | None:
    """("mac" | "host_name", value) when ``text`` is not an address but names a machine."""
    try:
        ipaddress.ip_address(text.strip().strip("[]"))
        return None
    except ValueError:
        pass
    try:
        return "mac", normalize_mac(text)
    except ValueError:
        return "host_name", text
