"""DNS over TCP on any port (a strict guess off port 53) and answers whose segments arrive
out of order (StreamTable, and the sensor's early reject in front of it)."""

from __future__ import annotations

import dns.message
import dns.rrset
import pytest

from sensor.decode.dns import looks_like_dns_tcp
from sensor.decode.stream import StreamTable

C, S = b"\x0a\x00\x00\x02", b"\x0a\x00\x00\x01"


def _framed(wire: bytes) -> bytes:
    return len(wire).to_bytes(2, "big") + wire


def query(name: str, rdtype: str = "A") -> bytes:
    return _framed(dns.message.make_query(name, rdtype, use_edns=False).to_wire())


def answer(name: str, strings: int = 8) -> bytes:
    q = dns.message.make_query(name, "TXT")
    r = dns.message.make_response(q)
    txt = " ".join(f'"{chr(97 + i) * 250}"' for i in range(strings))
    r.answer.append(dns.rrset.from_text(name + ".", 60, "IN", "TXT", txt))
    return _framed(r.to_wire())


def feed(
    table: StreamTable, key: tuple[bytes, int, bytes, int], segs: list[tuple[int, bytes]]
) -> list[tuple[str, str]]:
    dns_port = 53 in (key[1], key[3])
    out = []
    for seq, data in segs:
        out += [(s.kind, s.name) for s in table.feed(key, seq, data, dns_port)]
    return out


def cut(data: bytes, size: int, seq: int = 1000) -> list[tuple[int, bytes]]:
    return [(seq + i, data[i : i + size]) for i in range(0, len(data), size)]


@pytest.mark.parametrize("port", [53, 5300, 8053])
@pytest.mark.parametrize("order", ["in-order", "reversed", "start-last"])
def test_answer_out_of_order_after_its_query(port: int, order: str) -> None:
    table = StreamTable()
    up, down = (C, 40000, S, port), (S, port, C, 40000)
    assert feed(table, up, [(1, query("big.example"))]) == [("dns_query", "big.example")]
    segs = cut(answer("big.example"), 700, seq=9000)
    assert len(segs) >= 3
    if order == "reversed":
        segs = segs[::-1]
    elif order == "start-last":
        segs = segs[1:] + segs[:1]
    assert feed(table, down, segs) == [("dns_answer", "big.example")]


def test_port_53_answer_with_its_length_in_a_segment_of_its_own() -> None:
    table = StreamTable()
    data = answer("split.example", 2)
    segs = [(500, data[:2]), (502, data[2:])]
    assert feed(table, (S, 53, C, 40001), segs) == [("dns_answer", "split.example")]


def test_port_53_reads_a_zone_transfer_query_the_guess_would_not() -> None:
    axfr = query("zone.example", "AXFR")
    assert looks_like_dns_tcp(axfr, strict=False) and not looks_like_dns_tcp(axfr, strict=True)
    assert feed(StreamTable(), (C, 40002, S, 53), [(1, axfr)]) == [("dns_query", "zone.example")]
    assert feed(StreamTable(), (C, 40002, S, 5300), [(1, axfr)]) == []


def test_the_guess_is_strict() -> None:
    table = StreamTable()
    junk = [
        b"\x00\x10" + bytes(16),  # zeros: no question
        b"\x00\x00\x00\x85\xffSMB" + bytes(40),  # NetBIOS session header, SMB
        b"\x01\x00" + bytes(range(256)),  # a length, then bytes that are no header
    ]
    for i, data in enumerate(junk):
        assert feed(table, (C, 41000 + i, S, 445), [(1, data)]) == []
    assert len(table) == 0  # no state for any of them


def test_answers_from_well_known_ports_are_left_as_the_prefilter_leaves_them() -> None:
    """Server data from a well-known port other than 53 is what the file prefilter drops:
    the guess stays off it, so both readers report the same (tests/test_prefilter.py)."""
    table = StreamTable()
    assert feed(table, (C, 40003, S, 530), [(1, query("q.example"))]) == [
        ("dns_query", "q.example")
    ]
    small = answer("q.example", 1)
    assert feed(table, (S, 530, C, 40003), [(1, small)]) == []
    assert (S, 530, C, 40003) not in table and (C, 40003, S, 530) in table
