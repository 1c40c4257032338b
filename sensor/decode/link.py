"""Link layers other than Ethernet: 802.11 (plain and behind radiotap), PPP and Cisco HDLC.

Each function reads one link header at ``data[off:end]`` and returns ``(code, offset)``
like ``sensor.decode.tunnel``: an ethertype (or ``tunnel.IP_ANY``) and where the packet
it carries starts; None for a frame that carries no packet (management and control
frames, null data, another LLC). A header cut short raises ``DecodeError``.

802.11 follows what tshark reads (``wlan``): data frames only, the 3- or 4-address
layout (ToDS and FromDS both set), QoS data's QoS control and, with the order bit, the
HT control field; the payload is LLC/SNAP (RFC 1042 or bridge tunnel OUI) before an
ethertype. A protected (encrypted) frame cannot be read without keys, and an A-MSDU
holds several packets in one frame: both are returned as ``PROTECTED``/``AMSDU`` so
the caller counts them instead of losing them without a trace.
"""

from __future__ import annotations

import struct
from typing import Final

from sensor.decode import DecodeError
from sensor.decode.tunnel import IP_ANY, Inner, ppp

# a frame skipped on purpose (the caller counts it): never a real ethertype
PROTECTED: Final = 0x0002
AMSDU: Final = 0x0003

_DATA: Final = 2  # frame type
_SNAP_OUIS: Final = frozenset({b"\x00\x00\x00", b"\x00\x00\xf8"})  # RFC 1042, bridge tunnel
_RADIOTAP_FCS: Final = 0x10  # flags: the frame ends with its 4-byte FCS
_RADIOTAP_DATAPAD: Final = 0x20  # flags: padding between the 802.11 header and the payload
_MAX_PRESENT_WORDS: Final = 8
_CHDLC_ADDRESSES: Final = frozenset({0x0F, 0x8F})

_u16 = struct.Struct("!H").unpack_from
_u16le = struct.Struct("<H").unpack_from
_u32le = struct.Struct("<I").unpack_from


def radiotap(data: bytes, end: int) -> tuple[int, int, bool]:
    """A radiotap header (link type 127): ``(offset of the 802.11 frame, end of the frame
    without its FCS, data padding)``, from the header length and the Flags field."""
    if end < 8:
        raise DecodeError("radiotap header cut short")
    if data[0] != 0:
        raise DecodeError(f"radiotap version {data[0]}")
    hlen = _u16le(data, 2)[0]
    if hlen < 8 or hlen > end:
        raise DecodeError(f"radiotap header length {hlen} of {end}")
    present = _u32le(data, 4)[0]
    pos = 8
    word = present
    for _ in range(_MAX_PRESENT_WORDS):  # extended bitmaps: the fields follow the last
        if not word & 0x80000000:
            break
        if pos + 4 > hlen:
            raise DecodeError("radiotap present bitmaps cut short")
        word = _u32le(data, pos)[0]
        pos += 4
    flags = 0
    if present & 1:  # TSFT: 8 bytes, aligned to 8 from the header's start
        pos = (pos + 7) & ~7
        pos += 8
    if present & 2:
        if pos >= hlen:
            raise DecodeError("radiotap flags cut short")
        flags = data[pos]
    stop = end - 4 if flags & _RADIOTAP_FCS else end
    return hlen, stop, bool(flags & _RADIOTAP_DATAPAD)


def ieee80211(data: bytes, off: int, end: int, datapad: bool = False) -> Inner | None:
    """An 802.11 frame (link type 105, or after radiotap): the packet a data frame carries."""
    if end < off + 24:
        if end >= off + 1 and (data[off] >> 2) & 3 != _DATA:
            return None  # control frames are shorter than a data header
        raise DecodeError("80211 header cut short")
    fc0, fc1 = data[off], data[off + 1]
    if (fc0 >> 2) & 3 != _DATA or fc0 & 0x03:  # not data, or a protocol version but 0
        return None
    subtype = fc0 >> 4
    if subtype & 0x4:  # null data, CF-Ack/Poll without data: nothing carried
        return None
    if fc1 & 0x40:
        return PROTECTED, off
    if _u16le(data, off + 22)[0] & 0x000F:  # a later fragment: no header of its own
        return None
    hlen = 30 if fc1 & 0x03 == 0x03 else 24
    if subtype & 0x8:  # QoS data: QoS control, then HT control when the order bit is set
        if end < off + hlen + 2:
            raise DecodeError("80211 qos control cut short")
        if data[off + hlen] & 0x80:
            return AMSDU, off
        hlen += 2 + (4 if fc1 & 0x80 else 0)
    pos = off + hlen
    if datapad:
        pos = off + ((hlen + 3) & ~3)
    return llc_snap(data, pos, end)


def llc_snap(data: bytes, off: int, end: int) -> Inner | None:
    """LLC/SNAP before an ethertype (RFC 1042); None for any other LLC payload."""
    if end < off + 8:
        if end <= off:
            return None  # a data frame without payload
        raise DecodeError("llc header cut short")
    if data[off : off + 3] != b"\xaa\xaa\x03" or data[off + 3 : off + 6] not in _SNAP_OUIS:
        return None
    return _u16(data, off + 6)[0], off + 8


def ppp_link(data: bytes, off: int, end: int) -> Inner | None:
    """PPP as link types 9 and 50 carry it (tshark's ``ppp_hdlc``): HDLC-like framing
    (address 0xff, control 0x03) or none before the protocol field; a frame starting
    with 0x0f or 0x8f is Cisco HDLC."""
    if end < off + 2:
        raise DecodeError("ppp header cut short")
    if data[off] == 0xFF and data[off + 1] == 0x03:
        return ppp(data, off + 2, end)
    if data[off] in _CHDLC_ADDRESSES:
        return chdlc(data, off, end)
    return ppp(data, off, end)


def chdlc(data: bytes, off: int, end: int) -> Inner | None:
    """Cisco HDLC (link type 104): address, control, then an ethertype."""
    if end < off + 4:
        raise DecodeError("chdlc header cut short")
    return _u16(data, off + 2)[0], off + 4


def loop(data: bytes, end: int) -> Inner | None:
    """OpenBSD loopback (link type 108): a 4-byte address family, then IP."""
    if end < 4:
        raise DecodeError("loopback header cut short")
    return IP_ANY, 4
