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
    for rrset in msg.answer:
        owner = _text(rrset.name)
        if owner is None:
            continue
        for rdata in rrset:
            if rdata.rdtype == dns.rdatatype.CNAME:
                target = _text(rdata.target)
                if target is not None:
                    cnames.setdefault(owner, target)
            elif rdata.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                addrs.setdefault(owner, []).append(rdata.address)
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
    return Sighting("dns_answer", qname, chain=tuple(chain), answers=answers)


def _question_only(payload: bytes, exc: Exception) -> list[Sighting]:
    """The whole message did not parse (bad rdata, pointer loop in an answer...).

    The question usually still does: parse just the header and question so a damaged
    answer section cannot hide the asked name. A bad question raises DecodeError.
    """
    qdcount = struct.unpack_from("!H", payload, 4)[0]
    if qdcount == 0:
        raise DecodeError(f"dns message does not parse: {exc}")
    try:
        qname_wire, _ = dns.name.from_wire(payload, 12)
    except dns.exception.DNSException as qexc:
        raise DecodeError(f"dns question does not parse: {qexc}") from None
    qname = _text(qname_wire)
    if qname is None:
        raise DecodeError("dns question name is not a host name")
    kind = "dns_answer" if payload[2] & 0x80 else "dns_query"
    return [Sighting(kind, qname)]
