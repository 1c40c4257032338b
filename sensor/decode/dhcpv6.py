"""DHCPv6 (RFC 8415) and NDP (RFC 4861): which machine holds an
IPv6 address. Only what identity needs is read; anything malformed is a DecodeError.

DHCPv6 options read: 1 client DUID (its MAC when a DUID-LLT or DUID-LL of Ethernet),
39 client FQDN (RFC 4704), 16 vendor class, 3 IA_NA with its 5 IA addresses (address,
valid lifetime). Relay messages are not opened. NDP: the sender's own address and
link-layer address from an advertisement or a solicitation, in an Ethernet frame (VLAN
tags skipped).
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

from sensor.decode import DecodeError
from sensor.decode.dhcp import wire_name

DHCPV6_PORTS: Final = frozenset({546, 547})
SOLICIT, ADVERTISE, REQUEST, CONFIRM, RENEW, REBIND, REPLY = range(1, 8)
INFORMATION_REQUEST: Final = 11
CLIENT_MESSAGES: Final = frozenset({SOLICIT, REQUEST, CONFIRM, RENEW, REBIND, INFORMATION_REQUEST})
MAX_OPTIONS: Final = 64
MAX_ADDRESSES: Final = 8
_ETH_IPV6: Final = 0x86DD
_ETH_VLAN: Final = frozenset({0x8100, 0x88A8})
_ICMPV6: Final = 58
_NEIGHBOR_SOLICIT: Final = 135
_NEIGHBOR_ADVERT: Final = 136


class Dhcpv6(NamedTuple):
    msg_type: int
    duid: bytes  # option 1, b"" when absent
    mac: bytes  # from the DUID (6 bytes), b"" when it holds none
    fqdn: str
    vendor_class: bytes
    addresses: tuple[tuple[bytes, int], ...]  # IA_NA addresses (16 bytes, valid lifetime s)


class Neighbour(NamedTuple):
    address: bytes  # the sender's own IPv6 address (16 bytes)
    mac: bytes  # its link-layer address (6 bytes)


def _options(buf: bytes) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(buf):
        if len(out) == MAX_OPTIONS or pos + 4 > len(buf):
            raise DecodeError("dhcpv6 options cut short or too many")
        code, length = struct.unpack_from("!HH", buf, pos)
        if pos + 4 + length > len(buf):
            raise DecodeError("dhcpv6 option runs past the message")
        out.append((code, buf[pos + 4 : pos + 4 + length]))
        pos += 4 + length
    return out


def _duid_mac(duid: bytes) -> bytes:
    if len(duid) == 14 and duid[:4] == b"\x00\x01\x00\x01":  # LLT, Ethernet
        return duid[8:]
    if len(duid) == 10 and duid[:4] == b"\x00\x03\x00\x01":  # LL, Ethernet
        return duid[4:]
    return b""


def decode_dhcpv6(payload: bytes) -> Dhcpv6:
    if len(payload) < 4:
        raise DecodeError("dhcpv6 message cut short")
    msg_type = payload[0]
    duid = mac = vendor = b""
    fqdn = ""
    addrs: list[tuple[bytes, int]] = []
    if msg_type not in CLIENT_MESSAGES and msg_type != REPLY:
        return Dhcpv6(msg_type, b"", b"", "", b"", ())
    for code, value in _options(payload[4:]):
        if code == 1:
            duid, mac = value, _duid_mac(value)
        elif code == 39:
            if not value:
                raise DecodeError("dhcpv6 fqdn option empty")
            fqdn = wire_name(value[1:], "dhcpv6 fqdn")
        elif code == 16:
            vendor = value[4:]  # enterprise number, then length-prefixed strings
            vendor = vendor[2 : 2 + int.from_bytes(vendor[:2], "big")] if len(vendor) > 2 else b""
        elif code == 3:
            if len(value) < 12:
                raise DecodeError("dhcpv6 IA_NA cut short")
            for sub, sval in _options(value[12:]):
                if sub == 5 and len(addrs) < MAX_ADDRESSES:
                    if len(sval) < 24:
                        raise DecodeError("dhcpv6 IA address cut short")
                    addrs.append((sval[:16], int.from_bytes(sval[20:24], "big")))
    return Dhcpv6(msg_type, duid, mac, fqdn, vendor, tuple(addrs))


def decode_ndp(frame: bytes) -> Neighbour | None:
    """An Ethernet frame's NDP message naming its sender's own (address, MAC): a neighbour
    advertisement whose target is its source, with a target link-layer address option, or
    a solicitation from a real (not unspecified) source with a source link-layer address
    option. None for anything else (a proxy's advertisement for another address too)."""
    if len(frame) < 14:
        return None
    ethertype, off = struct.unpack_from("!H", frame, 12)[0], 14
    for _ in range(2):
        if ethertype not in _ETH_VLAN or len(frame) < off + 4:
            break
        ethertype, off = struct.unpack_from("!H", frame, off + 2)[0], off + 4
    if ethertype != _ETH_IPV6 or len(frame) < off + 40 or frame[off + 6] != _ICMPV6:
        return None
    src, icmp = frame[off + 8 : off + 24], off + 40
    end = min(len(frame), icmp + int.from_bytes(frame[off + 4 : off + 6], "big"))
    if end < icmp + 1 or frame[icmp] not in (_NEIGHBOR_SOLICIT, _NEIGHBOR_ADVERT):
        return None
    if end < icmp + 24:
        raise DecodeError("ndp message cut short")
    advert, target = frame[icmp] == _NEIGHBOR_ADVERT, frame[icmp + 8 : icmp + 24]
    want, mac, pos = (2 if advert else 1), b"", icmp + 24  # target / source link-layer
    while pos + 2 <= end:
        kind, units = frame[pos], frame[pos + 1]
        if units == 0 or pos + 8 * units > end:
            raise DecodeError("ndp option length")
        if kind == want and units == 1:
            mac = frame[pos + 2 : pos + 8]
        pos += 8 * units
    if not mac or src == bytes(16) or (advert and target != src):
        return None
    return Neighbour(src, mac)
