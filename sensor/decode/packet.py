"""Link, network and transport layers: a frame -> ``Segment`` (addresses, ports, payload).

Hand-parsed with ``struct``; no per-packet objects beyond the returned tuple.
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

from sensor.decode import DecodeError

PROTO_TCP: Final = 6
PROTO_UDP: Final = 17

_ETH_IPV4: Final = 0x0800
_ETH_IPV6: Final = 0x86DD
_ETH_VLAN: Final = frozenset({0x8100, 0x88A8, 0x9100})
_IPV6_EXT: Final = frozenset({0, 43, 60, 51})  # hop-by-hop, routing, destination, AH
_IPV6_FRAG: Final = 44

_u16 = struct.Struct("!H").unpack_from
_tcp_ports = struct.Struct("!HH").unpack_from


class Segment(NamedTuple):
    src: bytes  # 4 or 16 bytes
    dst: bytes
    proto: int  # PROTO_TCP or PROTO_UDP
    sport: int
    dport: int
    tcp_flags: int
    payload: bytes


def decode_frame(linktype: int, data: bytes) -> Segment | None:
    """Decode a captured frame; None for traffic that carries no TCP/UDP we read."""
    if linktype == 1:  # Ethernet
        if len(data) < 14:
            raise DecodeError("ethernet header cut short")
        ethertype = _u16(data, 12)[0]
        off = 14
        while ethertype in _ETH_VLAN:
            if len(data) < off + 4:
                raise DecodeError("vlan tag cut short")
            ethertype = _u16(data, off + 2)[0]
            off += 4
        return _decode_l3(ethertype, data, off)
    if linktype in (101, 12, 14):  # raw IP
        return _decode_ip_version(data, 0)
    if linktype == 228:
        return _decode_ipv4(data, 0)
    if linktype == 229:
        return _decode_ipv6(data, 0)
    if linktype == 113:  # Linux cooked v1
        if len(data) < 16:
            raise DecodeError("sll header cut short")
        return _decode_l3(_u16(data, 14)[0], data, 16)
    if linktype == 276:  # Linux cooked v2
        if len(data) < 20:
            raise DecodeError("sll2 header cut short")
        return _decode_l3(_u16(data, 0)[0], data, 20)
    if linktype == 0:  # BSD loopback: 4-byte host-order family
        if len(data) < 4:
            raise DecodeError("loopback header cut short")
        return _decode_ip_version(data, 4)
    return None


def _decode_l3(ethertype: int, data: bytes, off: int) -> Segment | None:
    if ethertype == _ETH_IPV4:
        return _decode_ipv4(data, off)
    if ethertype == _ETH_IPV6:
        return _decode_ipv6(data, off)
    return None


def _decode_ip_version(data: bytes, off: int) -> Segment | None:
    if len(data) <= off:
        raise DecodeError("empty IP packet")
    version = data[off] >> 4
    if version == 4:
        return _decode_ipv4(data, off)
    if version == 6:
        return _decode_ipv6(data, off)
    raise DecodeError(f"IP version {version}")


def _decode_ipv4(data: bytes, off: int) -> Segment | None:
    if len(data) < off + 20:
        raise DecodeError("ipv4 header cut short")
    ihl = (data[off] & 0x0F) * 4
    if ihl < 20:
        raise DecodeError(f"ipv4 header length {ihl}")
    total = _u16(data, off + 2)[0]
    if total < ihl:
        raise DecodeError(f"ipv4 total length {total} < header length {ihl}")
    frag = _u16(data, off + 6)[0]
    if frag & 0x1FFF:  # not the first fragment: no transport header here
        return None
    proto = data[off + 9]
    end = min(len(data), off + total)
    return _decode_l4(
        proto, data[off + 12 : off + 16], data[off + 16 : off + 20], data, off + ihl, end
    )


def _decode_ipv6(data: bytes, off: int) -> Segment | None:
    if len(data) < off + 40:
        raise DecodeError("ipv6 header cut short")
    plen = _u16(data, off + 4)[0]
    nxt = data[off + 6]
    src = data[off + 8 : off + 24]
    dst = data[off + 24 : off + 40]
    end = min(len(data), off + 40 + plen) if plen else len(data)
    pos = off + 40
    for _ in range(8):  # bounded walk over extension headers
        if nxt in _IPV6_EXT:
            if pos + 2 > end:
                raise DecodeError("ipv6 extension header cut short")
            hlen = (data[pos + 1] + 2) * 4 if nxt == 51 else (data[pos + 1] + 1) * 8
            nxt = data[pos]
            pos += hlen
        elif nxt == _IPV6_FRAG:
            if pos + 8 > end:
                raise DecodeError("ipv6 fragment header cut short")
            if _u16(data, pos + 2)[0] & 0xFFF8:  # offset != 0
                return None
            nxt = data[pos]
            pos += 8
        else:
            break
    return _decode_l4(nxt, src, dst, data, pos, end)


def _decode_l4(
    proto: int, src: bytes, dst: bytes, data: bytes, pos: int, end: int
) -> Segment | None:
    if proto == PROTO_UDP:
        if end - pos < 8:
            raise DecodeError("udp header cut short")
        sport, dport, ulen = struct.unpack_from("!HHH", data, pos)
        if ulen < 8:
            # length 0 is legal only for jumbograms; anything else: no payload we trust
            return Segment(src, dst, proto, sport, dport, 0, b"")
        return Segment(src, dst, proto, sport, dport, 0, data[pos + 8 : min(end, pos + ulen)])
    if proto == PROTO_TCP:
        if end - pos < 20:
            raise DecodeError("tcp header cut short")
        sport, dport = _tcp_ports(data, pos)
        doff = (data[pos + 12] >> 4) * 4
        if doff < 20:
            raise DecodeError(f"tcp data offset {doff}")
        return Segment(src, dst, proto, sport, dport, data[pos + 13], data[pos + doff : end])
    return None
