"""DNS messages (dnspython): question names, and for responses the CNAME chain and addresses."""

from __future__ import annotations

import struct
from typing import Final

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rdatatype

from sensor.decode import DecodeError, Sighting, normalise_name

MAX_CHAIN: Final = 16


def _text(name: dns.name.Name) -> str | None:
    try:
        return normalise_name(name.to_text(omit_final_dot=True))
    except (dns.exception.DNSException, UnicodeError):
        return None


def decode_dns(payload: bytes) -> list[Sighting]:
    """Sightings in one DNS message (UDP payload, or one TCP message without its length)."""
    if len(payload) < 12:
        raise DecodeError("dns message shorter than its header")
    try:
        msg = dns.message.from_wire(payload, ignore_trailing=True, one_rr_per_rrset=True)
    except dns.message.ShortHeader:
        raise DecodeError("dns header cut short") from None
    except (dns.exception.DNSException, ValueError, struct.error, UnicodeError) as exc:
        return _question_only(payload, exc)
    out: list[Sighting] = []
    for question in msg.question:  # mDNS packs many questions into one message
        qname = _text(question.name)
        if qname is None:
            raise DecodeError("dns question name is not a host name")
        if msg.flags & dns.flags.QR:
            out.append(_answer(msg, qname))
        else:
            out.append(Sighting("dns_query", qname))
    return out


def _answer(msg: dns.message.Message, qname: str) -> Sighting:
    cnames: dict[str, str] = {}
    addrs: dict[str, list[str]] = {}
    ttls: dict[str, int] = {}
    for rrset in msg.answer:
        owner = _text(rrset.name)
        if owner is None:
            continue
        if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            ttls[owner] = min(ttls.get(owner, rrset.ttl), rrset.ttl)
        for rdata in rrset:
            # a record of an unknown class comes back as GenericRdata (no .target/.address)
            if rdata.rdtype == dns.rdatatype.CNAME:
                raw = getattr(rdata, "target", None)
                target = _text(raw) if isinstance(raw, dns.name.Name) else None
                if target is not None:
                    cnames.setdefault(owner, target)
            elif rdata.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                address = getattr(rdata, "address", None)
                if isinstance(address, str):
                    addrs.setdefault(owner, []).append(address)
    chain: list[str] = []
    seen = {qname}
    cur = qname
    while cur in cnames and len(chain) < MAX_CHAIN:
        cur = cnames[cur]
        if cur in seen:
            break
        seen.add(cur)
        chain.append(cur)
    answers = tuple(addrs.get(cur, ()))
    return Sighting("dns_answer", qname, chain=tuple(chain), answers=answers, ttl=ttls.get(cur, 0))


def _question_only(payload: bytes, exc: Exception) -> list[Sighting]:
    """The whole message did not parse (bad rdata, pointer loop in an answer...).

    The question usually still does: parse just the header and question so a damaged
    answer section cannot hide the asked name. A bad question raises DecodeError.
    """
    qdcount = struct.unpack_from("!H", payload, 4)[0]
    if qdcount == 0:
        raise DecodeError(f"dns message does not parse: {exc}")
    qname = read_name(payload, 12)
    kind = "dns_answer" if payload[2] & 0x80 else "dns_query"
    return [Sighting(kind, qname)]


def read_name(msg: bytes, pos: int) -> str:
    """A domain name at ``pos``, following compression pointers in either direction.

    dnspython refuses forward pointers (legal on the wire, used by some encoders);
    loops and over-long names still raise DecodeError.
    """
    labels: list[str] = []
    total = 0
    for _ in range(128):  # bounded: pointer loops end here
        if pos >= len(msg):
            raise DecodeError("dns name runs past the message")
        length = msg[pos]
        if length == 0:
            name = normalise_name(".".join(labels))
            if name is None:
                raise DecodeError("dns question name is not a host name")
            return name
        if length & 0xC0 == 0xC0:
            if pos + 1 >= len(msg):
                raise DecodeError("dns compression pointer cut short")
            pos = ((length & 0x3F) << 8) | msg[pos + 1]
            continue
        if length & 0xC0:
            raise DecodeError("dns label type is not supported")
        label = msg[pos + 1 : pos + 1 + length]
        if len(label) < length:
            raise DecodeError("dns label runs past the message")
        total += length + 1
        if total > 255:
            raise DecodeError("dns name longer than 255 bytes")
        labels.append(label.decode("ascii", "backslashreplace").replace(".", "\\."))
        pos += 1 + length
    raise DecodeError("dns name compression pointers loop")


def looks_like_dns(payload: bytes) -> bool:
    """A cheap, strict guess that a UDP payload on an unusual port is one DNS message:
    standard opcode, one question, few records, and a question name that reads."""
    if len(payload) < 17:
        return False
    flags = int.from_bytes(payload[2:4], "big")
    counts = struct.unpack_from("!HHHH", payload, 4)
    if (flags >> 11) & 0xF != 0 or counts[0] != 1 or sum(counts[1:]) > 64 or flags & 0x0040:
        return False
    pos = 12
    while pos < len(payload) and payload[pos] and payload[pos] < 64:  # the question's labels
        pos += payload[pos] + 1
    if pos + 5 > len(payload) or payload[pos] != 0:
        return False
    qtype, qclass = struct.unpack_from("!HH", payload, pos + 1)
    # NetBIOS name service shares DNS's format but asks NB/NBSTAT (32/33 in class IN... its
    # own): only the record types names are looked up by count here
    if qtype not in _COMMON_QTYPES or qclass & 0x7FFF not in (1, 255):
        return False
    try:
        read_name(payload, 12)
    except DecodeError:
        return False
    return True


_COMMON_QTYPES: Final = frozenset({1, 2, 5, 6, 12, 15, 16, 28, 33, 64, 65, 255})
