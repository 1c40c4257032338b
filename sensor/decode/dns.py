"""DNS messages by hand: question names, and for responses the CNAME chain and addresses.

Parsed with ``struct`` and slicing (a message costs microseconds; dnspython's
``from_wire`` costs ~180 µs and read a capture's DNS at a few thousand messages/s). Names
are written the way dnspython writes them (``Name.to_text``: special characters
backslash-escaped, other bytes as ``\\DDD``), so names read the same as before.
Compression pointers may point forwards (legal, used by some encoders); loops and
over-long names raise ``DecodeError``. Only the question and answer sections are read.
"""

from __future__ import annotations

import socket
import struct
from typing import Final

from sensor.decode import DecodeError, Sighting, normalise_name

MAX_CHAIN: Final = 16
TYPE_A: Final = 1
TYPE_CNAME: Final = 5
TYPE_AAAA: Final = 28
CLASS_IN: Final = 1

_ESCAPED: Final = b'"().;\\@$'
# bytes that stand for themselves in a name's text; anything else goes through _BYTE_TEXT
_PLAIN: Final = bytes(b for b in range(0x21, 0x7F) if b not in _ESCAPED)
_BYTE_TEXT: Final = tuple(
    "\\" + chr(b) if b in _ESCAPED else chr(b) if 0x20 < b < 0x7F else f"\\{b:03d}"
    for b in range(256)
)
_counts = struct.Struct("!HH").unpack_from  # QDCOUNT, ANCOUNT
_record = struct.Struct("!HHIH").unpack_from  # type, class, TTL, RDLENGTH


def _name(msg: bytes, pos: int) -> tuple[str, int]:
    """(the name's text, where the record goes on after it) for a name at ``pos``."""
    labels: list[bytes] = []
    after = -1
    size = len(msg)
    for _ in range(128):  # bounded: pointer loops end here
        if pos >= size:
            raise DecodeError("dns name runs past the message")
        length = msg[pos]
        if length == 0:
            break
        if length < 0x40:
            end = pos + 1 + length
            if end > size:
                raise DecodeError("dns label runs past the message")
            labels.append(msg[pos + 1 : end])
            pos = end
        elif length >= 0xC0:
            if pos + 1 >= size:
                raise DecodeError("dns compression pointer cut short")
            if after < 0:
                after = pos + 2
            pos = ((length & 0x3F) << 8) | msg[pos + 1]
        else:
            raise DecodeError("dns label type is not supported")
    else:
        raise DecodeError("dns name compression pointers loop")
    raw = b"".join(labels)
    if len(raw) + len(labels) > 255:
        raise DecodeError("dns name longer than 255 bytes")
    if raw.translate(None, _PLAIN):  # something to escape (rare): label by label
        text = ".".join(["".join([_BYTE_TEXT[b] for b in label]) for label in labels])
    else:
        text = b".".join(labels).decode("ascii")
    return text, pos + 1 if after < 0 else after


def _host(text: str) -> str | None:
    """``normalise_name`` for a name's text from ``_name`` (ASCII, no final dot): the
    common case without its general steps."""
    if 0 < len(text) <= 253 and text[-1] != ".":
        return text.lower()
    return normalise_name(text)


def read_name(msg: bytes, pos: int) -> str:
    """The host name at ``pos`` (normalised); DecodeError if it does not read as one."""
    name = _host(_name(msg, pos)[0])
    if name is None:
        raise DecodeError("dns question name is not a host name")
    return name


def decode_dns(payload: bytes) -> list[Sighting]:
    """Sightings in one DNS message (UDP payload, or one TCP message without its length):
    one per question (mDNS packs several into a message)."""
    if len(payload) < 12:
        raise DecodeError("dns message shorter than its header")
    qdcount, ancount = _counts(payload, 4)
    response = payload[2] & 0x80
    questions: list[str] = []
    pos = 12
    try:
        for _ in range(qdcount):
            text, pos = _name(payload, pos)
            pos += 4  # QTYPE, QCLASS
            if pos > len(payload):
                raise DecodeError("dns question cut short")
            questions.append(text)
    except DecodeError:
        if len(questions) < 1:
            questions = [_name(payload, 12)[0]]  # the name may read where the rest does not
        questions = questions[:1]
        pos = -1  # the message is broken: no answers are read
    names = [_host(q) for q in questions]
    if None in names:
        raise DecodeError("dns question name is not a host name")
    if not response:
        return [Sighting("dns_query", q) for q in names if q is not None]
    try:
        answers = _answers(payload, pos, ancount) if pos >= 0 else None
    except (DecodeError, IndexError, struct.error):
        answers = None  # a damaged answer section must not hide the asked name
    if answers is None:
        return [Sighting("dns_answer", q) for q in names[:1] if q is not None]
    return [answer_sighting(q, *answers) for q in names if q is not None]


def announced(payload: bytes) -> dict[str, list[str]]:
    """A response's A/AAAA records by owner name: what an mDNS announcement or an LLMNR
    answer says about the host sending it; {} for a query. DecodeError when malformed."""
    if len(payload) < 12 or not payload[2] & 0x80:
        return {}
    qdcount, ancount = _counts(payload, 4)
    pos = 12
    for _ in range(qdcount):
        pos = _name(payload, pos)[1] + 4
    return _answers(payload, pos, ancount)[1]


_Answers = tuple[dict[str, str], dict[str, list[str]], dict[str, int]]


def _answers(msg: bytes, pos: int, count: int) -> _Answers:
    """CNAME targets, addresses and smallest address TTL per owner name."""
    cnames: dict[str, str] = {}
    addrs: dict[str, list[str]] = {}
    ttls: dict[str, int] = {}
    size = len(msg)
    for _ in range(count):
        raw_owner, pos = _name(msg, pos)
        if pos + 10 > size:
            raise DecodeError("dns record cut short")
        rtype, rclass, ttl, rdlen = _record(msg, pos)
        pos += 10
        rdata_end = pos + rdlen
        if rdata_end > size:
            raise DecodeError("dns record data cut short")
        # another class's A or CNAME names nothing on the Internet (mDNS sets the top bit)
        internet = rclass & 0x7FFF == CLASS_IN
        if internet and rtype in (TYPE_A, TYPE_AAAA):
            want = 4 if rtype == TYPE_A else 16
            if rdlen != want:
                raise DecodeError(f"dns address record of {rdlen} bytes")
            owner = _host(raw_owner)
            if owner is not None:
                family = socket.AF_INET if want == 4 else socket.AF_INET6
                addrs.setdefault(owner, []).append(socket.inet_ntop(family, msg[pos:rdata_end]))
                ttls[owner] = min(ttls.get(owner, ttl), ttl)
        elif internet and rtype == TYPE_CNAME:
            owner = _host(raw_owner)
            target = _host(_name(msg, pos)[0])
            if owner is not None and target is not None:
                cnames.setdefault(owner, target)
        pos = rdata_end
    return cnames, addrs, ttls


def answer_sighting(
    qname: str, cnames: dict[str, str], addrs: dict[str, list[str]], ttls: dict[str, int]
) -> Sighting:
    """The ``dns_answer`` sighting of ``qname``: its CNAME chain (bounded, loops cut) and the
    addresses and smallest TTL the chain ends in. Peer logs' answers take the same walk."""
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


def looks_like_dns_tcp(segment: bytes, strict: bool) -> bool:
    """Whether a TCP segment starts a DNS message: its 2-byte length, then the message.

    ``strict`` (a stream on no DNS port): ``looks_like_dns`` on the message, which must
    hold its whole question. Otherwise (a stream already known to carry DNS: port 53, or
    the answer side of a query read): a length of at least 12, then as much of a header
    with a standard opcode and at most one question, and of a question name whose labels
    read (any type: zone transfers too), as the segment holds (a server may send the
    length in a segment of its own; a client may be cut into tiny segments)."""
    if len(segment) < 2:
        return False
    mlen = int.from_bytes(segment[:2], "big")
    msg = segment[2 : 2 + mlen]
    if strict:
        return looks_like_dns(msg)
    if mlen < 12 or (len(msg) > 2 and (msg[2] >> 3) & 0xF not in (0, 1, 2, 4, 5)):
        return False
    qdcount = int.from_bytes(msg[4:6], "big") if len(msg) >= 6 else 0
    if qdcount > 1:
        return False
    pos = 12
    while qdcount and pos < len(msg) and msg[pos]:  # the question's labels, as far as they go
        if msg[pos] >= 64:
            return False
        pos += msg[pos] + 1
    return True
