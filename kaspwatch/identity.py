"""Identity contract v1: which machine held an address, as the wire told a sensor.

A sensor that sees DHCP or ARP publishes one ``Identity`` per change (and refreshes it
now and then) to ``IDENTITY_TOPIC``, keyed by address: a compacted topic keeps the last
word per address. Consumers join it to hits by address and time. The JSON Schema in
``kaspwatch/schema/identity.v1.schema.json`` is the published form of this module.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import asdict, dataclass
from typing import Any, Final

from kaspwatch.event import EventError, parse_ts

IDENTITY_TOPIC: Final = "kaspwatch.identity.v1"
IDENTITY_SOURCES: Final = ("dhcp", "arp", "dhcpv6", "ndp", "mdns", "llmnr", "netbios", "kerberos")
_MAC: Final = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_TEXT_MAX: Final = 255


class IdentityError(EventError):
    """A message on the identity topic is not a valid v1 identity record."""


@dataclass(frozen=True, slots=True)
class Identity:
    """``address`` was held by the machine with ``mac`` (and these names) at ``ts``;
    ``first_seen`` is when this sensor first saw that binding; ``lease_s`` how long DHCP
    granted it (None: not from a lease)."""

    address: str
    ts: str
    sensor: str
    source: str
    mac: str = ""
    hostname: str = ""
    fqdn: str = ""
    vendor_class: str = ""
    first_seen: str = ""
    lease_s: int | None = None

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"schema": 1, "type": "identity"}
        doc.update({k: v for k, v in asdict(self).items() if v not in ("", None)})
        return doc

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    def names(self) -> str:
        """The best name for a person: the host name, else the FQDN's first label."""
        return self.hostname or self.fqdn.split(".")[0]


def normalize_mac(raw: bytes | str) -> str:
    """``aa:bb:cc:dd:ee:ff`` from six bytes or any common spelling; ValueError otherwise."""
    if isinstance(raw, bytes):
        if len(raw) != 6:
            raise ValueError(f"a MAC is 6 bytes, got {len(raw)}")
        return ":".join(f"{b:02x}" for b in raw)
    hexits = re.sub(r"[^0-9a-fA-F]", "", raw).lower()
    if len(hexits) != 12 or len(re.sub(r"[0-9a-fA-F:.\-]", "", raw)) != 0:
        raise ValueError(f"{raw!r} is not a MAC address")
    return ":".join(hexits[i : i + 2] for i in range(0, 12, 2))


def clean_text(raw: bytes) -> str:
    """A name from the wire as printable ASCII, bounded (host names are attacker-chosen)."""
    text = raw.split(b"\0", 1)[0].decode("ascii", "replace")
    return re.sub(r"[^\x21-\x7e]", "?", text)[:_TEXT_MAX]


def identity_from_json(raw: bytes) -> Identity:
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IdentityError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("schema") != 1 or doc.get("type") != "identity":
        raise IdentityError("not a v1 identity record (schema 1, type identity)")
    for key in ("address", "ts", "sensor", "source"):
        if not isinstance(doc.get(key), str) or not doc[key]:
            raise IdentityError(f"identity field {key!r} missing or not a string")
    try:
        ipaddress.ip_address(doc["address"])
        parse_ts(doc["ts"])
        if doc.get("first_seen"):
            parse_ts(doc["first_seen"])
    except ValueError as exc:
        raise IdentityError(f"identity: {exc}") from None
    if doc["source"] not in IDENTITY_SOURCES:
        raise IdentityError(f"identity source {doc['source']!r} is not one of {IDENTITY_SOURCES}")
    texts = {}
    for key in ("mac", "hostname", "fqdn", "vendor_class", "first_seen"):
        value = doc.get(key, "")
        if not isinstance(value, str) or len(value) > _TEXT_MAX:
            raise IdentityError(f"identity field {key!r} is not a string of at most 255")
        texts[key] = value
    if texts["mac"] and not _MAC.fullmatch(texts["mac"]):
        raise IdentityError(f"identity mac {texts['mac']!r} is not aa:bb:cc:dd:ee:ff")
    lease = doc.get("lease_s")
    if lease is not None and (not isinstance(lease, int) or isinstance(lease, bool)):
        raise IdentityError("identity field 'lease_s' is not an integer")
    return Identity(
        address=doc["address"], ts=doc["ts"], sensor=doc["sensor"], source=doc["source"],
        lease_s=lease, **texts,
    )  # fmt: skip
