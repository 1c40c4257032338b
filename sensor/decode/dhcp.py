"""DHCPv4 (RFC 2131/2132) and ARP (RFC 826): what the wire says about which machine holds
an address. Only the fields identity needs are read; anything malformed is a DecodeError.

DHCP options read: 53 message type, 12 host name, 81 client FQDN (RFC 4702, ASCII or
wire-format name), 60 vendor class, 50 requested address, 51 lease time. The client's MAC
is ``chaddr`` (its own, whatever relay or router forwarded the frame).
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

from sensor.decode import DecodeError

DHCP_PORTS: Final = frozenset({67, 68})
MAGIC: Final = b"\x63\x82\x53\x63"
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = range(1, 9)
_FIXED: Final = 236  # BOOTP header before the magic cookie
ETH_ARP: Final = 0x0806
_ETH_VLAN: Final = frozenset({0x8100, 0x88A8})


class Dhcp(NamedTuple):
    op: int  # 1 request (client), 2 reply (server)
    msg_type: int  # option 53, 0 when absent (plain BOOTP)
    mac: bytes  # chaddr, 6 bytes ("" when not Ethernet)
    ciaddr: bytes
    yiaddr: bytes
    requested: bytes  # option 50, or b""
    hostname: bytes  # option 12
    fqdn: str  # option 81's name
    vendor_class: bytes  # option 60
    lease_s: int | None  # option 51


def _fqdn(value: bytes) -> str:
    """Option 81: flags, two obsolete rcodes, then the name (wire format when flag E)."""
    if len(value) < 3:
        raise DecodeError("dhcp option 81 cut short")
    flags, name = value[0], value[3:]
    if not flags & 0x04:
        return name.decode("ascii", "replace").rstrip(".")
    return wire_name(name, "dhcp option 81")


def wire_name(name: bytes, what: str) -> str:
    """A host name in DNS wire format without compression (DHCP option 81, DHCPv6 option
    39): labels up to a zero length or the end; ``what`` starts the DecodeError."""
    labels, pos = [], 0
    while pos < len(name) and name[pos]:
        n = name[pos]
        if n > 63 or pos + 1 + n > len(name):
            raise DecodeError(f"{what} bad label")
        labels.append(name[pos + 1 : pos + 1 + n].decode("ascii", "replace"))
        pos += 1 + n
    return ".".join(labels)


def decode_dhcp(payload: bytes) -> Dhcp:
    if len(payload) < _FIXED + 4:
        raise DecodeError("dhcp message cut short")
    op, htype, hlen = payload[0], payload[1], payload[2]
    if op not in (1, 2):
        raise DecodeError(f"dhcp op {op}")
    if payload[_FIXED : _FIXED + 4] != MAGIC:
        raise DecodeError("dhcp magic cookie missing")
    mac = payload[28:34] if htype == 1 and hlen == 6 else b""
    opts: dict[int, bytes] = {}
    pos, end = _FIXED + 4, len(payload)
    while pos < end:
        code = payload[pos]
        if code == 255:
            break
        if code == 0:
            pos += 1
            continue
        if pos + 2 > end or pos + 2 + payload[pos + 1] > end:
            raise DecodeError("dhcp option cut short")
        size = payload[pos + 1]
        # RFC 3396: a repeated option is concatenated
        opts[code] = opts.get(code, b"") + payload[pos + 2 : pos + 2 + size]
        pos += 2 + size
    msg_type = opts.get(53, b"\0")[:1]
    requested = opts.get(50, b"")
    lease = opts.get(51, b"")
    return Dhcp(
        op=op,
        msg_type=msg_type[0] if msg_type else 0,
        mac=mac,
        ciaddr=payload[12:16],
        yiaddr=payload[16:20],
        requested=requested if len(requested) == 4 else b"",
        hostname=opts.get(12, b""),
        fqdn=_fqdn(opts[81]) if 81 in opts else "",
        vendor_class=opts.get(60, b""),
        lease_s=struct.unpack("!I", lease)[0] if len(lease) == 4 else None,
    )


class Arp(NamedTuple):
    op: int  # 1 request, 2 reply
    sender_mac: bytes
    sender_ip: bytes


def decode_arp(frame: bytes) -> Arp | None:
    """An Ethernet frame's ARP (IPv4 over Ethernet) sender; None when not ARP."""
    if len(frame) < 14:
        return None
    ethertype, off = struct.unpack_from("!H", frame, 12)[0], 14
    while ethertype in _ETH_VLAN and len(frame) >= off + 4:
        ethertype, off = struct.unpack_from("!H", frame, off + 2)[0], off + 4
    if ethertype != ETH_ARP:
        return None
    if len(frame) < off + 28:
        raise DecodeError("arp cut short")
    htype, ptype, hlen, plen, op = struct.unpack_from("!HHBBH", frame, off)
    if (htype, ptype, hlen, plen) != (1, 0x0800, 6, 4):
        return None
    return Arp(op, frame[off + 8 : off + 14], frame[off + 14 : off + 18])
