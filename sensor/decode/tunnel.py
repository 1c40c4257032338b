"""Tunnel and shim headers: find where the encapsulated packet starts.

Each function reads one header at ``data[off:end]`` and returns ``(code, offset)``: what
follows and where it starts, or None when the bytes are not that header (the caller then
treats the outer packet as plain traffic). ``code`` is an ethertype (``IPV4``, ``IPV6``,
``ETHERNET``, ``MPLS``, ``PPPOE``...) or ``IP_ANY`` (an IP packet, version in its first
nibble). A header that is recognised but cut short raises ``DecodeError``.

The caller (``sensor.decode.packet``) does the recursion and bounds the nesting depth.
"""

from __future__ import annotations

import struct
from typing import Final

from sensor.decode import DecodeError

Inner = tuple[int, int]  # (code, offset of the inner header)

IP_ANY: Final = 0x0001  # below 0x0600, so never a real ethertype
IPV4: Final = 0x0800
IPV6: Final = 0x86DD
ETHERNET: Final = 0x6558  # Transparent Ethernet Bridging
MPLS: Final = frozenset({0x8847, 0x8848})
PPPOE: Final = 0x8864

PORT_VXLAN: Final = 4789
PORT_VXLAN_GPE: Final = 4790
PORT_GENEVE: Final = 6081
PORT_GTP_U: Final = 2152
PORT_TEREDO: Final = 3544
PORT_AYIYA: Final = 5072
UDP_TUNNEL_PORTS: Final = frozenset(
    {PORT_VXLAN, PORT_VXLAN_GPE, PORT_GENEVE, PORT_GTP_U, PORT_TEREDO, PORT_AYIYA}
)

_PPP: Final = {0x0021: IPV4, 0x0057: IPV6}  # also the compressed 1-byte form
_GPE_NEXT: Final = {1: IPV4, 2: IPV6, 3: ETHERNET}
_ERSPAN_II: Final = 0x88BE
_ERSPAN_III: Final = 0x22EB
_MAX_LABELS: Final = 16
_MAX_GTP_EXT: Final = 8
_TEREDO_PREFIX: Final = b"\x20\x01\x00\x00"  # 2001:0::/32
_IPV6_NEXT: Final = frozenset({0, 6, 17, 43, 44, 50, 51, 58, 59, 60})
_AYIYA_FORWARD: Final = 1
_AYIYA_NEXT: Final = {4: IPV4, 41: IPV6}

_u16 = struct.Struct("!H").unpack_from


def _need(data: bytes, off: int, n: int, end: int, what: str) -> None:
    if off + n > min(end, len(data)):
        raise DecodeError(f"{what} header cut short")


def udp_tunnel(
    sport: int, dport: int, data: bytes, off: int, end: int, claimed: int
) -> Inner | None:
    """A UDP payload at ``data[off:end]`` that carries a tunnel; ``claimed`` is the payload
    end the UDP length gives (it exceeds ``end`` when the capture cut the packet)."""
    if dport == PORT_VXLAN:
        return vxlan(data, off, end)
    if dport == PORT_GENEVE:
        return geneve(data, off, end)
    if dport == PORT_GTP_U or sport == PORT_GTP_U:
        return gtp_u(data, off, end)
    if dport == PORT_VXLAN_GPE:
        return vxlan_gpe(data, off, end)
    if dport == PORT_TEREDO or sport == PORT_TEREDO:
        return teredo(data, off, end, claimed, by_port=True)
    if dport == PORT_AYIYA or sport == PORT_AYIYA:
        return ayiya(data, off, end)
    return None


def vxlan(data: bytes, off: int, end: int) -> Inner | None:
    """VXLAN (RFC 7348): 8 bytes, the I flag set, then an Ethernet frame."""
    _need(data, off, 8, end, "vxlan")
    if not data[off] & 0x08:
        return None
    return ETHERNET, off + 8


def vxlan_gpe(data: bytes, off: int, end: int) -> Inner | None:
    """VXLAN-GPE: like VXLAN, with a next-protocol byte (P flag)."""
    _need(data, off, 8, end, "vxlan")
    if not data[off] & 0x04:
        return vxlan(data, off, end)
    code = _GPE_NEXT.get(data[off + 3])
    return None if code is None else (code, off + 8)


def geneve(data: bytes, off: int, end: int) -> Inner | None:
    """Geneve (RFC 8926): 8 bytes plus options; the protocol type names the inner layer."""
    _need(data, off, 8, end, "geneve")
    first = data[off]
    if first >> 6:  # version 0 only
        return None
    proto = _u16(data, off + 2)[0]
    if proto not in (ETHERNET, IPV4, IPV6):
        return None
    return proto, off + 8 + (first & 0x3F) * 4


def gtp_u(data: bytes, off: int, end: int) -> Inner | None:
    """GTPv1-U G-PDU (3GPP TS 29.281): an IP packet after the header and its extensions."""
    _need(data, off, 8, end, "gtp")
    flags = data[off]
    if flags >> 5 != 1 or not flags & 0x10 or data[off + 1] != 0xFF:
        return None  # not GTPv1, GTP' or not user data (echo, error indication...)
    if not flags & 0x07:
        return IP_ANY, off + 8
    _need(data, off, 12, end, "gtp")
    return IP_ANY, _gtp_extensions(data, off + 12, data[off + 11], end)


def _gtp_extensions(data: bytes, pos: int, nxt: int, end: int) -> int:
    for _ in range(_MAX_GTP_EXT):
        if not nxt:
            return pos
        _need(data, pos, 1, end, "gtp")
        size = data[pos] * 4
        if not size:
            raise DecodeError("gtp extension header of length 0")
        _need(data, pos, size, end, "gtp")
        nxt = data[pos + size - 1]
        pos += size
    raise DecodeError("gtp extension chain too long")


def teredo(data: bytes, off: int, end: int, claimed: int, by_port: bool) -> Inner | None:
    """Teredo (RFC 4380): optional authentication and origin indication, then IPv6.

    Off port 3544 it is found by shape: an IPv6 header whose length fills the UDP payload
    exactly, one of whose addresses is a Teredo (2001:0::/32) or link-local one.
    """
    off = _teredo_skip(data, off, end)
    if off + 40 > min(end, len(data)) or data[off] >> 4 != 6:
        return None
    if 40 + _u16(data, off + 4)[0] != claimed - off or data[off + 6] not in _IPV6_NEXT:
        return None
    if not by_port and not (_teredo_addr(data, off + 8) or _teredo_addr(data, off + 24)):
        return None
    return IPV6, off


def _teredo_addr(data: bytes, off: int) -> bool:
    return data[off : off + 4] == _TEREDO_PREFIX or (data[off] == 0xFE and data[off + 1] >> 6 == 2)


def _teredo_skip(data: bytes, off: int, end: int) -> int:
    """Skip the authentication (0x0001) then the origin indication (0x0000) header."""
    stop = min(end, len(data))
    if off + 4 <= stop and data[off] == 0 and data[off + 1] == 1:
        off += 13 + data[off + 2] + data[off + 3]  # 4 + id + auth + nonce 8 + confirmation 1
    if off + 8 <= stop and data[off] == 0 and data[off + 1] == 0:
        off += 8
    return off


def ayiya(data: bytes, off: int, end: int) -> Inner | None:
    """AYIYA (Anything In Anything, the SixXS tunnel; tshark's ``ayiya``): 8 bytes, an
    identity of 2^IDLen bytes and a signature of 4 * SigLen bytes, then the packet a
    forward message carries, named by its IP protocol number."""
    _need(data, off, 8, end, "ayiya")
    if data[off + 2] & 0x0F != _AYIYA_FORWARD:
        return None
    code = _AYIYA_NEXT.get(data[off + 3])
    if code is None:
        return None
    return code, off + 8 + (1 << (data[off] >> 4)) + 4 * (data[off + 1] >> 4)


def pppoe(data: bytes, off: int, end: int) -> Inner | None:
    """PPPoE session stage (RFC 2516): 6 bytes, then a PPP protocol field."""
    _need(data, off, 7, end, "pppoe")
    if data[off] != 0x11 or data[off + 1] != 0:
        return None
    return ppp(data, off + 6, end)


def ppp(data: bytes, off: int, end: int) -> Inner | None:
    """A PPP protocol field (1 byte when compressed, RFC 1661) before IPv4 or IPv6."""
    _need(data, off, 1, end, "ppp")
    if data[off] & 1:  # protocol-field compression: one odd byte
        code = _PPP.get(data[off])
        return None if code is None else (code, off + 1)
    _need(data, off, 2, end, "ppp")
    code = _PPP.get(_u16(data, off)[0])
    return None if code is None else (code, off + 2)


def gre(data: bytes, off: int, end: int) -> Inner | None:
    """GRE (RFC 2784/2890, and version 1 as PPTP uses it): ethertype of the payload."""
    _need(data, off, 4, end, "gre")
    flags, proto = struct.unpack_from("!HH", data, off)
    if flags & 0x4000:  # RFC 1701 source routing: not seen in practice
        return None
    version = flags & 0x07
    pos = off + 4 + 4 * ((flags >> 15) + (flags >> 13 & 1) + (flags >> 12 & 1))
    if version == 1:
        return _gre_pptp(data, pos + 4 * (flags >> 7 & 1), end, proto)
    if version:
        return None
    if proto == _ERSPAN_II:
        return ETHERNET, pos + 8
    if proto == _ERSPAN_III:
        _need(data, pos, 12, end, "erspan")
        return ETHERNET, pos + 12 + 8 * (data[pos + 11] & 1)
    return proto, pos


def _gre_pptp(data: bytes, pos: int, end: int, proto: int) -> Inner | None:
    if proto != 0x880B:
        return None
    _need(data, pos, 2, end, "gre")
    if data[pos] == 0xFF and data[pos + 1] == 0x03:  # PPP address and control
        pos += 2
    return ppp(data, pos, end)


def mpls(data: bytes, off: int, end: int) -> Inner | None:
    """An MPLS label stack, then IP (by version nibble) or a pseudowire control word and
    an Ethernet frame."""
    for _ in range(_MAX_LABELS):
        _need(data, off, 4, end, "mpls")
        off += 4
        if data[off - 2] & 1:  # bottom of stack
            break
    else:
        raise DecodeError(f"mpls label stack deeper than {_MAX_LABELS}")
    _need(data, off, 1, end, "mpls")
    version = data[off] >> 4
    if version in (4, 6):
        return IP_ANY, off
    if version == 0:
        return ETHERNET, off + 4
    return None


def nflog(data: bytes) -> Inner | None:
    """Linux NFLOG (link type 239): family, version, resource id, then TLVs.

    TLV length and type are in the capturing host's byte order; the type is small, which
    tells the order. Type 9 (NFULA_PAYLOAD) holds the IP packet.
    """
    _need(data, 0, 4, len(data), "nflog")
    family = data[0]
    code = IPV4 if family == 2 else IPV6 if family == 10 else IP_ANY
    off = 4
    fmt = None
    while off + 4 <= len(data):
        if fmt is None:
            fmt = "<HH" if data[off + 3] == 0 else ">HH"
        size, kind = struct.unpack_from(fmt, data, off)
        if size < 4:
            raise DecodeError(f"nflog TLV length {size}")
        if kind & 0x7FFF == 9:
            return code, off + 4
        off += (size + 3) & ~3
    return None
