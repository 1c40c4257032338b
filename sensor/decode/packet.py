"""Link, network and transport layers: a frame -> ``Segment`` (addresses, ports, payload).

Hand-parsed with ``struct``; no per-packet objects beyond the returned tuple. Tunnels
(VXLAN, Geneve, GTP-U, Teredo, AYIYA, GRE, IP-in-IP, MPLS, PPPoE; see ``sensor.decode.tunnel``)
are opened to the innermost IP packet, whose addresses the ``Segment`` carries. Link
layers besides Ethernet, raw IP and Linux cooked (802.11 with or without radiotap, PPP,
Cisco HDLC) are read in ``sensor.decode.link``; ``LINKTYPES`` lists every one read.

Segmentation offload super-packets, as a capture on the sending host sees them, are read
as tshark reads them: an IPv4 total length of 0 (TSO, BIG TCP) takes the captured length,
an IPv6 jumbogram (payload length 0, a hop-by-hop Jumbo Payload option) its option's
length, and a UDP length of 0 over IPv6 the rest of the packet (RFC 2675).

``PacketDecoder`` also reassembles IPv4 and IPv6 fragments (``sensor.decode.ipfrag``);
the stateless ``decode_frame`` does not: it reads a first fragment as far as it goes and
drops the others.
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

from sensor.decode import DecodeError, link, tunnel
from sensor.decode.ipfrag import Reassembler

PROTO_TCP: Final = 6
PROTO_UDP: Final = 17
PROTO_IPIP: Final = 4
PROTO_IPV6: Final = 41
PROTO_GRE: Final = 47

MAX_TUNNEL_DEPTH: Final = 4

# pcap link types the decoder reads: BSD loopback, Ethernet, PPP, raw IP (12/14 are the
# platform values of 101), PPP in HDLC framing, Cisco HDLC, 802.11, OpenBSD loopback,
# Linux cooked v1, 802.11 with radiotap, raw IPv4, raw IPv6, NFLOG, Linux cooked v2
LINKTYPES: Final = frozenset(
    {0, 1, 9, 12, 14, 50, 101, 104, 105, 108, 113, 127, 228, 229, 239, 276}
)

_ETH_IPV4: Final = 0x0800
_ETH_IPV6: Final = 0x86DD
_ETH_VLAN: Final = frozenset({0x8100, 0x88A8, 0x9100})
_IPV6_EXT: Final = frozenset({0, 43, 60, 51})  # hop-by-hop, routing, destination, AH
_IPV6_FRAG: Final = 44
_IPV6_HOP_BY_HOP: Final = 0
_JUMBO_OPTION: Final = 0xC2
_MAX_IPV6_EXT: Final = 8
_TUNNEL_PORTS: Final = tunnel.UDP_TUNNEL_PORTS

_u16 = struct.Struct("!H").unpack_from
_u32 = struct.Struct("!I").unpack_from
# version/IHL, total length, flags/fragment offset, protocol, source, destination
_ipv4_header = struct.Struct("!BxHxxHxBxx4s4s").unpack_from
_tcp_header = struct.Struct("!HHIxxxxBB").unpack_from  # ports, seq, data offset, flags
_udp_header = struct.Struct("!HHH").unpack_from
_new = tuple.__new__  # builds a Segment in C, skipping NamedTuple's Python-level __new__
# Ethernet + IPv4 without options + TCP, and Ethernet + IPv6 + TCP, in one read each (for
# tcp_data_head), from byte 14 and 18: [version/IHL, total length, flags/fragment offset,
# protocol | payload length, next header], source, destination, ports, data offset, flags
_ipv4_tcp_at_14 = struct.Struct("!BxH2xHxB2x4s4sHH8xBB").unpack_from
_ipv6_tcp_at_18 = struct.Struct("!HBx16s16sHH8xBB").unpack_from
_TCP_SYN: Final = 0x02


class Segment(NamedTuple):
    src: bytes  # 4 or 16 bytes
    dst: bytes
    proto: int  # PROTO_TCP or PROTO_UDP
    sport: int
    dport: int
    tcp_flags: int
    payload: bytes
    seq: int = 0  # TCP sequence number (0 for UDP)


class PacketDecoder:
    """Frames -> Segments, reassembling IP fragments. One per capture; not thread-safe.

    ``max_fragments`` datagrams (each up to 64 KiB) may be in flight at once; the oldest
    is evicted beyond that or after ``frag_ttl_s`` of capture time. ``max_fragments=0``
    turns reassembly off (as ``decode_frame``).
    """

    __slots__ = ("_frags", "_ts", "wifi_skipped")

    def __init__(self, max_fragments: int = 1024, frag_ttl_s: float = 30.0) -> None:
        self._frags = (
            Reassembler(max_fragments, int(frag_ttl_s * 1e9)) if max_fragments > 0 else None
        )
        self._ts = 0
        # 802.11 data frames not read: "protected" (encrypted, no keys), "a-msdu"
        self.wifi_skipped: dict[str, int] = {}

    @property
    def fragments_reassembled(self) -> int:
        """Datagrams put back together from fragments."""
        return self._frags.reassembled if self._frags is not None else 0

    @property
    def fragments_evicted(self) -> int:
        """Datagrams dropped unfinished: table full or older than the TTL."""
        return self._frags.evicted if self._frags is not None else 0

    def decode(self, linktype: int, data: bytes, ts_ns: int) -> Segment | None:
        """Decode a captured frame; None for traffic that carries no TCP/UDP we read
        (including a fragment that does not yet complete its datagram)."""
        self._ts = ts_ns
        end = len(data)
        if linktype == 1:
            return self._ethernet(data, 0, end, 0)
        if linktype in (101, 12, 14):  # raw IP
            return self._l3(tunnel.IP_ANY, data, 0, end, 0)
        if linktype == 228:
            return self._ipv4(data, 0, end, 0)
        if linktype == 229:
            return self._ipv6(data, 0, end, 0)
        return self._other_link(linktype, data, end)

    def _other_link(self, linktype: int, data: bytes, end: int) -> Segment | None:
        if linktype == 113:  # Linux cooked v1
            if end < 16:
                raise DecodeError("sll header cut short")
            return self._l3(_u16(data, 14)[0], data, 16, end, 0)
        if linktype == 276:  # Linux cooked v2
            if end < 20:
                raise DecodeError("sll2 header cut short")
            return self._l3(_u16(data, 0)[0], data, 20, end, 0)
        if linktype == 0:  # BSD loopback: 4-byte host-order family
            if end < 4:
                raise DecodeError("loopback header cut short")
            return self._l3(tunnel.IP_ANY, data, 4, end, 0)
        if linktype == 239:  # Linux NFLOG
            return self._link(tunnel.nflog(data), data, end)
        if linktype == 127:  # 802.11 with radiotap
            off, stop, pad = link.radiotap(data, end)
            return self._wifi(link.ieee80211(data, off, stop, pad), data, stop)
        if linktype == 105:
            return self._wifi(link.ieee80211(data, 0, end), data, end)
        if linktype in (9, 50):  # PPP, PPP in HDLC-like framing
            return self._link(link.ppp_link(data, 0, end), data, end)
        if linktype == 104:
            return self._link(link.chdlc(data, 0, end), data, end)
        if linktype == 108:
            return self._link(link.loop(data, end), data, end)
        return None

    def _link(self, inner: tunnel.Inner | None, data: bytes, end: int) -> Segment | None:
        return None if inner is None else self._l3(inner[0], data, inner[1], end, 0)

    def _wifi(self, inner: tunnel.Inner | None, data: bytes, end: int) -> Segment | None:
        if inner is not None and inner[0] in (link.PROTECTED, link.AMSDU):
            why = "protected" if inner[0] == link.PROTECTED else "a-msdu"
            self.wifi_skipped[why] = self.wifi_skipped.get(why, 0) + 1
            return None
        return self._link(inner, data, end)

    # -- link and shim layers --------------------------------------------------------

    def _ethernet(self, data: bytes, off: int, end: int, depth: int) -> Segment | None:
        if end < off + 14:
            raise DecodeError("ethernet header cut short")
        ethertype = _u16(data, off + 12)[0]
        off += 14
        while ethertype in _ETH_VLAN:
            if end < off + 4:
                raise DecodeError("vlan tag cut short")
            ethertype = _u16(data, off + 2)[0]
            off += 4
        if ethertype == _ETH_IPV4:  # the common case, without the dispatch
            return self._ipv4(data, off, end, depth)
        return self._l3(ethertype, data, off, end, depth)

    def _l3(self, code: int, data: bytes, off: int, end: int, depth: int) -> Segment | None:
        """Dispatch on an ethertype (or ``tunnel.IP_ANY``) for the header at ``off``."""
        if code == _ETH_IPV4:
            return self._ipv4(data, off, end, depth)
        if code == _ETH_IPV6:
            return self._ipv6(data, off, end, depth)
        if code == tunnel.IP_ANY:
            if end <= off:
                raise DecodeError("ip packet empty")
            version = data[off] >> 4
            if version == 4:
                return self._ipv4(data, off, end, depth)
            if version == 6:
                return self._ipv6(data, off, end, depth)
            raise DecodeError(f"ip version {version}")
        if code == tunnel.PPPOE:
            return self._inner(tunnel.pppoe(data, off, end), data, end, depth)
        if code in tunnel.MPLS:
            return self._inner(tunnel.mpls(data, off, end), data, end, depth)
        return None

    def _inner(
        self, inner: tunnel.Inner | None, data: bytes, end: int, depth: int
    ) -> Segment | None:
        """Decode what a tunnel or shim header encloses, one level deeper."""
        if inner is None:
            return None
        if depth >= MAX_TUNNEL_DEPTH:
            raise DecodeError(f"tunnel nesting deeper than {MAX_TUNNEL_DEPTH}")
        code, off = inner
        if code == tunnel.ETHERNET:
            return self._ethernet(data, off, end, depth + 1)
        return self._l3(code, data, off, end, depth + 1)

    # -- IP ----------------------------------------------------------------------------

    def _ipv4(self, data: bytes, off: int, end: int, depth: int) -> Segment | None:
        if end < off + 20:
            raise DecodeError("ipv4 header cut short")
        vihl, total, frag, proto, src, dst = _ipv4_header(data, off)
        ihl = (vihl & 0x0F) * 4
        if ihl < 20:
            raise DecodeError(f"ipv4 header length {ihl}")
        if not total:  # segmentation offload (TSO): the packet is what was captured
            total = end - off
        if total < ihl:
            raise DecodeError(f"ipv4 total length {total} < header length {ihl}")
        stop = min(end, off + total)
        if frag & 0x3FFF:  # more-fragments set or an offset: a fragment
            if self._frags is None:
                if frag & 0x1FFF:  # not the first: no transport header here
                    return None
            else:
                if off + total > end:
                    raise DecodeError("ipfrag fragment cut short by the capture")
                key = (src, dst, _u16(data, off + 4)[0], proto)
                whole = self._frags.add(
                    key, (frag & 0x1FFF) * 8, bool(frag & 0x2000), data, off + ihl, stop, self._ts
                )
                if whole is None:
                    return None
                return self._l4(proto, src, dst, whole, 0, len(whole), depth)
        return self._l4(proto, src, dst, data, off + ihl, stop, depth)

    def _ipv6(self, data: bytes, off: int, end: int, depth: int) -> Segment | None:
        if end < off + 40:
            raise DecodeError("ipv6 header cut short")
        plen = _u16(data, off + 4)[0]
        src = data[off + 8 : off + 24]
        dst = data[off + 24 : off + 40]
        nxt = data[off + 6]
        if not plen and nxt == _IPV6_HOP_BY_HOP:
            plen = _jumbo_length(data, off + 40, end)
        stop = min(end, off + 40 + plen) if plen else end
        return self._ipv6_next(nxt, src, dst, data, off + 40, stop, depth)

    def _ipv6_next(
        self, nxt: int, src: bytes, dst: bytes, data: bytes, pos: int, end: int, depth: int
    ) -> Segment | None:
        """Walk the extension headers (bounded) to the transport header."""
        for _ in range(_MAX_IPV6_EXT):
            if nxt in _IPV6_EXT:
                if pos + 2 > end:
                    raise DecodeError("ipv6 extension header cut short")
                hlen = (data[pos + 1] + 2) * 4 if nxt == 51 else (data[pos + 1] + 1) * 8
                nxt = data[pos]
                pos += hlen
            elif nxt == _IPV6_FRAG:
                return self._ipv6_fragment(src, dst, data, pos, end, depth)
            else:
                break
        return self._l4(nxt, src, dst, data, pos, end, depth)

    def _ipv6_fragment(
        self, src: bytes, dst: bytes, data: bytes, pos: int, end: int, depth: int
    ) -> Segment | None:
        if pos + 8 > end:
            raise DecodeError("ipv6 fragment header cut short")
        nxt = data[pos]
        field = _u16(data, pos + 2)[0]
        offset = field & 0xFFF8
        if field & 1 or offset:
            if self._frags is None:
                if offset:
                    return None
            else:
                key = (src, dst, _u32(data, pos + 4)[0], nxt)
                whole = self._frags.add(key, offset, bool(field & 1), data, pos + 8, end, self._ts)
                if whole is None:
                    return None
                return self._ipv6_next(nxt, src, dst, whole, 0, len(whole), depth)
        return self._ipv6_next(nxt, src, dst, data, pos + 8, end, depth)

    # -- transport and IP-level tunnels ------------------------------------------------

    def _l4(
        self, proto: int, src: bytes, dst: bytes, data: bytes, pos: int, end: int, depth: int
    ) -> Segment | None:
        if proto == PROTO_UDP:
            return self._udp(src, dst, data, pos, end, depth)
        if proto == PROTO_TCP:
            if end - pos < 20:
                raise DecodeError("tcp header cut short")
            sport, dport, seq, doff, flags = _tcp_header(data, pos)
            doff = (doff >> 4) * 4
            if doff < 20:
                raise DecodeError(f"tcp data offset {doff}")
            payload = data[pos + doff : end]
            return _new(Segment, (src, dst, PROTO_TCP, sport, dport, flags, payload, seq))
        if proto == PROTO_IPIP:
            return self._inner((_ETH_IPV4, pos), data, end, depth)
        if proto == PROTO_IPV6:
            return self._inner((_ETH_IPV6, pos), data, end, depth)
        if proto == PROTO_GRE:
            return self._inner(tunnel.gre(data, pos, end), data, end, depth)
        return None

    def _udp(
        self, src: bytes, dst: bytes, data: bytes, pos: int, end: int, depth: int
    ) -> Segment | None:
        if end - pos < 8:
            raise DecodeError("udp header cut short")
        sport, dport, ulen = _udp_header(data, pos)
        if not ulen and len(src) == 16:  # over IPv6: a jumbogram's (RFC 2675), as tshark
            ulen = end - pos
        if ulen < 8:
            # length 0 is legal only for jumbograms; anything else: no payload we trust
            return _new(Segment, (src, dst, PROTO_UDP, sport, dport, 0, b"", 0))
        stop = min(end, pos + ulen)
        inner = None
        # a client whose ephemeral port is a tunnel's (old 1025-5000 ranges reach 2152,
        # 3544, 4789, 4790) talking to port 53 is DNS, not a tunnel
        if (dport in _TUNNEL_PORTS or sport in _TUNNEL_PORTS) and sport != 53 and dport != 53:
            inner = tunnel.udp_tunnel(sport, dport, data, pos + 8, stop, pos + ulen)
        elif sport > 1023 and dport > 1023 and stop - pos >= 48 and data[pos + 8] >> 4 == 6:
            inner = tunnel.teredo(data, pos + 8, stop, pos + ulen, by_port=False)
        if inner is not None:
            return self._inner(inner, data, stop, depth)
        return _new(Segment, (src, dst, PROTO_UDP, sport, dport, 0, data[pos + 8 : stop], 0))


def _jumbo_length(data: bytes, pos: int, end: int) -> int:
    """The Jumbo Payload option's length in the hop-by-hop header at ``pos`` (RFC 2675),
    or 0 without one."""
    if pos + 2 > end:
        return 0
    stop = min(end, pos + (data[pos + 1] + 1) * 8)
    i = pos + 2
    while i + 2 <= stop:
        kind = data[i]
        if kind == 0:  # Pad1
            i += 1
            continue
        if kind == _JUMBO_OPTION and data[i + 1] == 4 and i + 6 <= stop:
            return int(_u32(data, i + 2)[0])
        i += 2 + data[i + 1]
    return 0


def tcp_data_head(data: bytes) -> tuple[bytes, int, bytes, int, int, int] | None:
    """``(src, sport, dst, dport, flags, first payload byte)`` of an Ethernet frame holding
    a TCP segment without SYN, over IPv4 without options (not a fragment) or IPv6 without
    extension headers; the first byte is -1 for a segment without payload. None for
    anything else, or anything the full decode would question (cut short, bad lengths):
    the caller then decodes it in full. Reads fixed offsets only, so a sensor can reject
    most mid-stream data without building a ``Segment``."""
    size = len(data)
    if size < 48:
        return None
    # the protocol and flags bytes first: most frames that are not such a segment (UDP,
    # SYN) are turned away before the full read
    if data[12:15] == b"\x08\x00\x45":
        if data[23] != PROTO_TCP or data[47] & _TCP_SYN:
            return None
        _vihl, total, frag, _proto, src, dst, sport, dport, doff, flags = _ipv4_tcp_at_14(data, 14)
        if frag & 0x3FFF:
            return None
        start, stop = 34 + (doff >> 4) * 4, 14 + total
    elif data[12:14] == b"\x86\xdd" and size >= 68:
        if data[20] != PROTO_TCP or data[67] & _TCP_SYN:
            return None
        plen, _nxt, src, dst, sport, dport, doff, flags = _ipv6_tcp_at_18(data, 18)
        if not plen:
            return None
        start, stop = 54 + (doff >> 4) * 4, 54 + plen
    else:
        return None
    if doff < 0x50 or start > stop or start > size:  # the full decode says what is wrong
        return None
    return (src, sport, dst, dport, flags, data[start] if start < min(stop, size) else -1)


_STATELESS: Final = PacketDecoder(max_fragments=0)


def decode_frame(linktype: int, data: bytes) -> Segment | None:
    """Decode a captured frame without fragment reassembly (tunnels are opened); None for
    traffic that carries no TCP/UDP we read."""
    return _STATELESS.decode(linktype, data, 0)
