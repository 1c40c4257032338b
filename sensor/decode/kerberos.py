"""Kerberos AS-REQ (RFC 4120 §5.4.1): the client principal a machine asks a ticket for.

A domain member's first words to a KDC are an AS-REQ for its machine account
(``WS-NAME$@REALM``), whose ``req-body`` carries ``cname`` and ``realm`` in clear. Only
those are read, by a minimal DER reader: definite lengths only, at most ``MAX_PARTS`` name
components, no recursion; anything else is a DecodeError. Over TCP the message has a
4-byte length prefix (RFC 4120 §7.2.2) and is read only when the segment holds all of it.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from sensor.decode import DecodeError

KERBEROS_PORT: Final = 88
MAX_MESSAGE: Final = 65_535
MAX_PARTS: Final = 8  # principal name components read (a machine account has one)
AS_REQ: Final = 0x6A  # [APPLICATION 10], constructed
_SEQ: Final = 0x30
_GENERAL_STRING: Final = 0x1B


class AsReq(NamedTuple):
    name: tuple[str, ...]  # cname's name-string components
    realm: str


def _tlv(buf: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, start of the value, end of the value) of the DER item at ``pos``."""
    if pos + 2 > end:
        raise DecodeError("kerberos: truncated item")
    tag, first = buf[pos], buf[pos + 1]
    if tag & 0x1F == 0x1F:
        raise DecodeError("kerberos: multi-byte tag")
    pos += 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 3 or pos + n > end:
            raise DecodeError("kerberos: bad length")
        length = int.from_bytes(buf[pos : pos + n], "big")
        pos += n
    if pos + length > end:
        raise DecodeError("kerberos: item runs past its container")
    return tag, pos, pos + length


def _field(buf: bytes, start: int, end: int, number: int) -> tuple[int, int] | None:
    """The value bounds of context tag ``[number]`` among the items of a SEQUENCE body."""
    want, pos = 0xA0 | number, start
    while pos < end:
        tag, vstart, vend = _tlv(buf, pos, end)
        if tag == want:
            return vstart, vend
        pos = vend
    return None


def _string(buf: bytes, start: int, end: int) -> str:
    tag, vstart, vend = _tlv(buf, start, end)
    if tag != _GENERAL_STRING:
        raise DecodeError("kerberos: not a KerberosString")
    return buf[vstart:vend].decode("ascii", "replace")


def decode_as_req(payload: bytes, tcp: bool = False) -> AsReq | None:
    """The client principal of an AS-REQ; None for another Kerberos message or an AS-REQ
    without ``cname``; DecodeError when it is malformed."""
    if tcp:
        if len(payload) < 4:
            raise DecodeError("kerberos: truncated TCP record")
        length = int.from_bytes(payload[:4], "big")
        if length != len(payload) - 4:
            return None  # a record split over segments (or several): not read
        payload = payload[4:]
    if not payload or payload[0] != AS_REQ:
        return None
    buf = payload[:MAX_MESSAGE]
    _, start, end = _tlv(buf, 0, len(buf))
    tag, start, end = _tlv(buf, start, end)
    if tag != _SEQ:
        raise DecodeError("kerberos: KDC-REQ is not a SEQUENCE")
    body = _field(buf, start, end, 4)
    if body is None:
        raise DecodeError("kerberos: AS-REQ without req-body")
    tag, start, end = _tlv(buf, *body)
    if tag != _SEQ:
        raise DecodeError("kerberos: req-body is not a SEQUENCE")
    cname, realm = _field(buf, start, end, 1), _field(buf, start, end, 2)
    if realm is None:
        raise DecodeError("kerberos: req-body without realm")
    if cname is None:
        return None
    tag, start, end = _tlv(buf, *cname)
    if tag != _SEQ:
        raise DecodeError("kerberos: cname is not a SEQUENCE")
    strings = _field(buf, start, end, 1)
    if strings is None:
        raise DecodeError("kerberos: cname without name-string")
    tag, pos, end = _tlv(buf, *strings)
    if tag != _SEQ:
        raise DecodeError("kerberos: name-string is not a SEQUENCE")
    parts: list[str] = []
    while pos < end:
        if len(parts) == MAX_PARTS:
            raise DecodeError("kerberos: too many name components")
        _, _, item_end = _tlv(buf, pos, end)
        parts.append(_string(buf, pos, end))
        pos = item_end
    if not parts:
        raise DecodeError("kerberos: empty principal name")
    return AsReq(tuple(parts), _string(buf, *realm))
