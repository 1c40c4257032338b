"""NetBIOS name service (RFC 1002, UDP 137): a Windows machine registers and refreshes its
own names, and answers queries for them, with the IPv4 address that holds each.

Read: registrations (opcode 5), refreshes (8, 9) and multi-homed registrations (15) the
machine sends, and positive name query responses (opcode 0); from each NB record its
name and addresses. Only unique names with the workstation (0x00) or server (0x20)
suffix name a machine (a group name is a domain or workgroup). Names are first-level
encoded (32 letters A-P); a compressed name may point back once, to an earlier name
without pointers. Bounded; anything malformed is a DecodeError.
"""

from __future__ import annotations

import struct
from typing import Final

from sensor.decode import DecodeError

NETBIOS_NS_PORT: Final = 137
MAX_RECORDS: Final = 16
_NAMING_OPCODES: Final = frozenset({5, 8, 9, 15})
_TYPE_NB: Final = 0x20
_GROUP: Final = 0x8000
_MACHINE_SUFFIXES: Final = frozenset({0x00, 0x20})


def _name(buf: bytes, pos: int, pointed: bool = False) -> tuple[bytes | None, int]:
    """(the decoded 16-byte NetBIOS name, or None when it is not one; the offset after)."""
    labels: list[bytes] = []
    for _ in range(64):
        if pos >= len(buf):
            raise DecodeError("netbios: truncated name")
        n = buf[pos]
        if n == 0:
            pos += 1
            break
        if n & 0xC0 == 0xC0:
            if pointed or pos + 2 > len(buf):
                raise DecodeError("netbios: bad name pointer")
            target = ((n & 0x3F) << 8) | buf[pos + 1]
            if target >= pos:
                raise DecodeError("netbios: name pointer forward")
            name, _ = _name(buf, target, pointed=True)
            return (name if not labels else None), pos + 2
        if n & 0xC0 or pos + 1 + n > len(buf):
            raise DecodeError("netbios: bad name label")
        labels.append(buf[pos + 1 : pos + 1 + n])
        pos += 1 + n
    else:
        raise DecodeError("netbios: too many labels")
    if not labels or len(labels[0]) != 32:
        return None, pos
    enc = labels[0]
    if any(not 0x41 <= c <= 0x50 for c in enc):
        raise DecodeError("netbios: name is not first-level encoded")
    return bytes(((enc[i] - 0x41) << 4) | (enc[i + 1] - 0x41) for i in range(0, 32, 2)), pos


def decode_nbns(payload: bytes) -> list[tuple[str, bytes]]:
    """(machine name, IPv4 address) for each unique machine name a registration or a
    positive query response binds; [] for any other message."""
    if len(payload) < 12:
        raise DecodeError("netbios: short header")
    _, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", payload)
    response, opcode, rcode = flags >> 15, (flags >> 11) & 0xF, flags & 0xF
    if rcode or not (opcode in _NAMING_OPCODES or (response and opcode == 0)):
        return []
    if qd + an + ns + ar > MAX_RECORDS:
        raise DecodeError("netbios: too many records")
    pos = 12
    for _ in range(qd):
        _, pos = _name(payload, pos)
        pos += 4
    out: list[tuple[str, bytes]] = []
    for _ in range(an + ns + ar):
        name, pos = _name(payload, pos)
        if pos + 10 > len(payload):
            raise DecodeError("netbios: truncated record")
        rtype, _, _, rdlen = struct.unpack_from("!HHIH", payload, pos)
        pos += 10
        rdata = payload[pos : pos + rdlen]
        if len(rdata) != rdlen:
            raise DecodeError("netbios: truncated record data")
        pos += rdlen
        if rtype != _TYPE_NB or name is None or name[15] not in _MACHINE_SUFFIXES:
            continue
        if rdlen % 6:
            raise DecodeError("netbios: NB data is not 6-byte entries")
        host = name[:15].rstrip(b" ").decode("ascii", "replace")
        for i in range(0, rdlen, 6):
            nb_flags = int.from_bytes(rdata[i : i + 2], "big")
            if not nb_flags & _GROUP and host:
                out.append((host, rdata[i + 2 : i + 6]))
    return out
