"""Link, tunnel and IP layers on real bytes: decapsulation, fragment reassembly, hostile input.

Corpus files give the innermost addresses tshark reports (truth/<file>.tsv); every one of
them must be among the decoded Segments. Tunnels the corpus lacks (GRE, IP-in-IP, MPLS...)
are built around real inner packets from the corpus with ``struct``. A mutation pass feeds
every corpus frame, cut short and with flipped bytes, to both decoders: only a Segment,
None or DecodeError may come back.
"""

from __future__ import annotations

import random
import socket
import struct
from collections import Counter
from pathlib import Path

import dns.message
import pytest

from sensor.decode import DecodeError
from sensor.decode.ipfrag import Reassembler
from sensor.decode.packet import (
    MAX_TUNNEL_DEPTH,
    PROTO_TCP,
    PROTO_UDP,
    PacketDecoder,
    Segment,
    decode_frame,
)
from sensor.sources.pcapfile import CaptureFile
from tests.testenv import CORPUS

TUNNEL_FILES = [
    "suricata-verify_vxlan-decoder-03_vxlan.pcap",
    "zeek_geneve-vxlan-dns-truncated.pcap",
    "zeek_gtp1_gn_normal_incl_fragmentation.pcap",
    "zeek_pppoe-over-qinq.pcap",
    "zeek_Teredo.pcap",
    "tcpdump_nflog.pcap",
    "zeek_ipv6-fragmented-dns.pcap",
    "tcpdump_LINKTYPE_RAW_ipv6.pcap",
    "zeek_http-vlan-0.pcap",
]
DNS_QUERY = ("zeek_dns_original_case.pcap", 1)  # Ethernet, IPv4, UDP to 53
DNS_RESPONSE = ("zeek_Teredo.pcap", 61)  # Ethernet, IPv4, 512-byte DNS response
DNS_QUERY_V6 = ("tcpdump_LINKTYPE_RAW_ipv6.pcap", 1)  # raw IPv6, UDP to 53
TEREDO_V6 = ("2001:0:4137:9e50:8000:f12a:b9c8:2815", "2001:4860:0:2001::68")
ALL_FILES = sorted(p.name for p in CORPUS.glob("*.pcap*")) if CORPUS.exists() else []


# -- helpers -------------------------------------------------------------------------


def frames(name: str) -> list[tuple[int, int, bytes]]:
    with CaptureFile(str(CORPUS / name)) as cap:
        return list(cap)


def frame(spec: tuple[str, int]) -> bytes:
    return frames(spec[0])[spec[1] - 1][2]


def ntop(addr: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(addr) == 4 else socket.AF_INET6, addr)


def truth_pairs(name: str) -> set[tuple[str, str]]:
    rows = (CORPUS / "truth" / f"{name}.tsv").read_text().splitlines()
    return {(cols[1], cols[2]) for cols in (row.split("\t") for row in rows)}


def decoded_pairs(name: str, stateful: bool) -> set[tuple[str, str]]:
    dec = PacketDecoder()
    pairs = set()
    for ts, linktype, data in frames(name):
        seg = dec.decode(linktype, data, ts) if stateful else decode_frame(linktype, data)
        if seg is not None:
            pairs.add((ntop(seg.src), ntop(seg.dst)))
    return pairs


def checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def ipv4(proto: int, payload: bytes, ident: int = 0x1234, frag: int = 0) -> bytes:
    head = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, frag, 64, proto, 0,
        b"\xc6\x33\x64\x01", b"\xc6\x33\x64\x02",
    )  # fmt: skip
    return head[:10] + struct.pack("!H", checksum(head)) + head[12:] + payload


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def eth(ethertype: int, payload: bytes) -> bytes:
    return (
        b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02" + struct.pack("!H", ethertype) + payload
    )


def mpls_label(label: int, bottom: bool) -> bytes:
    return struct.pack("!I", label << 12 | int(bottom) << 8 | 64)


def fragment_ipv4(frame_: bytes, pieces: list[tuple[int, int]]) -> list[bytes]:
    """Cut an Ethernet/IPv4 frame's IP payload at byte ranges (multiples of 8)."""
    link, ip = frame_[:14], frame_[14:]
    ihl = (ip[0] & 0x0F) * 4
    body = ip[ihl : struct.unpack_from("!H", ip, 2)[0]]
    out = []
    for start, stop in pieces:
        head = bytearray(ip[:ihl])
        more = 0x2000 if stop < len(body) else 0
        struct.pack_into("!HHH", head, 2, ihl + stop - start, 0xBEEF, more | start // 8)
        struct.pack_into("!H", head, 10, 0)
        struct.pack_into("!H", head, 10, checksum(bytes(head)))
        out.append(link + bytes(head) + body[start:stop])
    return out


@pytest.fixture(scope="module")
def query() -> tuple[bytes, Segment]:
    """A real DNS query frame and its decoded Segment (the inner packet for tunnels)."""
    data = frame(DNS_QUERY)
    seg = decode_frame(1, data)
    assert seg is not None and seg.proto == PROTO_UDP and seg.dport == 53
    return data, seg


@pytest.fixture(scope="module")
def query_v6() -> tuple[bytes, Segment]:
    data = frame(DNS_QUERY_V6)
    seg = decode_frame(101, data)
    assert seg is not None and seg.dport == 53 and len(seg.src) == 16
    return data, seg


# -- corpus: innermost addresses -----------------------------------------------------


@pytest.mark.parametrize("stateful", [True, False], ids=["PacketDecoder", "decode_frame"])
@pytest.mark.parametrize("name", TUNNEL_FILES)
def test_corpus_innermost_addresses(corpus: Path, name: str, stateful: bool) -> None:
    want = truth_pairs(name)
    assert want
    missing = want - decoded_pairs(name, stateful)
    assert not missing, f"{name}: no Segment for {sorted(missing)}"


def test_teredo_inner_ipv6_on_non_standard_ports(corpus: Path) -> None:
    """The corpus README: Teredo on 3797/32900 carries HTTP to ipv6.google.com."""
    segs = [decode_frame(lt, d) for _ts, lt, d in frames("zeek_Teredo.pcap")]
    inner = [s for s in segs if s is not None and (ntop(s.src), ntop(s.dst)) == TEREDO_V6]
    assert inner and all(s.proto == PROTO_TCP and s.dport == 80 for s in inner)
    requests = [s.payload for s in inner if s.payload.startswith(b"GET ")]
    assert len(requests) == 2
    assert b"Host: ipv6.google.com" in requests[0]


def test_gtp_outer_fragments_reassembled(corpus: Path) -> None:
    dec = PacketDecoder()
    inner: Counter[tuple[str, str]] = Counter()
    for ts, lt, data in frames("zeek_gtp1_gn_normal_incl_fragmentation.pcap"):
        seg = dec.decode(lt, data, ts)
        if seg is not None:
            inner[ntop(seg.src), ntop(seg.dst)] += 1
    assert dec.fragments_reassembled > 0
    assert dec.fragments_evicted == 0
    assert set(inner) == {("10.131.47.185", "79.101.110.141"), ("79.101.110.141", "10.131.47.185")}


# -- fragment reassembly -------------------------------------------------------------


def test_ipv6_fragmented_dns_response_reassembled(corpus: Path) -> None:
    dec = PacketDecoder()
    segs = [dec.decode(lt, d, ts) for ts, lt, d in frames("zeek_ipv6-fragmented-dns.pcap")]
    assert dec.fragments_reassembled == 1
    answer = segs[7]  # frame 8 completes ident 2 (frames 6, 7, 8)
    assert answer is not None and answer.sport == 53
    msg = dns.message.from_wire(answer.payload)
    assert str(msg.question[0].name) == "txtpadding_3230.n1.netalyzr.icsi.berkeley.edu."
    assert segs[5] is None and segs[6] is None
    stateless = decode_frame(1, frames("zeek_ipv6-fragmented-dns.pcap")[5][2])
    assert stateless is not None and len(stateless.payload) < len(answer.payload)


def test_ipv6_fragments_in_any_order(corpus: Path) -> None:
    cap = frames("zeek_ipv6-fragmented-dns.pcap")
    whole = PacketDecoder()
    want = [whole.decode(lt, d, ts) for ts, lt, d in cap][7]
    for order in ([7, 6, 5], [6, 7, 5], [5, 7, 6]):
        dec = PacketDecoder()
        got = [dec.decode(cap[i][1], cap[i][2], cap[i][0]) for i in order]
        assert got[:2] == [None, None] and got[2] == want


def test_ipv4_dns_response_in_three_reversed_fragments(corpus: Path) -> None:
    original = frame(DNS_RESPONSE)
    want = decode_frame(1, original)
    assert want is not None and want.sport == 53 and len(want.payload) > 300
    frags = fragment_ipv4(original, [(0, 160), (160, 320), (320, 8 + len(want.payload))])
    dec = PacketDecoder()
    got = [dec.decode(1, f, 1_000) for f in reversed(frags)]
    assert got[:2] == [None, None]
    assert got[2] == want
    assert dec.fragments_reassembled == 1 and dec.fragments_evicted == 0
    msg = dns.message.from_wire(got[2].payload, ignore_trailing=True)
    assert str(msg.question[0].name) == "www.wireshark.org.gateway.2wire.net."


def test_random_fragmentations_reassemble_exactly(corpus: Path) -> None:
    """Any 8-byte-aligned split, in any order, with overlapping repeats, gives the packet back."""
    original = frame(DNS_RESPONSE)
    want = decode_frame(1, original)
    assert want is not None
    size = 8 + len(want.payload)
    rng = random.Random(1)
    dec = PacketDecoder()
    for run in range(200):
        cuts = sorted(rng.sample(range(8, size, 8), rng.randint(1, 8)))
        pieces = list(zip([0, *cuts], [*cuts, size], strict=True))
        rng.shuffle(pieces)
        last = pieces.pop()
        extra = [(a, min(b, a + rng.choice((8, 16, 64)))) for a, b in pieces[:2]]
        for data in fragment_ipv4(original, pieces + extra):
            assert dec.decode(1, data, run) is None
        assert dec.decode(1, fragment_ipv4(original, [last])[0], run) == want, (pieces, last)
    assert dec.fragments_reassembled == 200


def test_stateless_decode_reads_only_a_first_fragment(corpus: Path) -> None:
    frags = fragment_ipv4(frame(DNS_RESPONSE), [(0, 160), (160, 520)])
    first = decode_frame(1, frags[0])
    assert first is not None and first.sport == 53 and len(first.payload) == 152
    assert decode_frame(1, frags[1]) is None


def test_overlapping_fragments_first_wins(corpus: Path) -> None:
    original = frame(DNS_RESPONSE)
    want = decode_frame(1, original)
    assert want is not None
    end = 8 + len(want.payload)
    good = fragment_ipv4(original, [(0, 160), (160, end)])
    evil = bytearray(fragment_ipv4(original, [(80, 240)])[0])
    evil[34:] = b"\xee" * (len(evil) - 34)  # same range, other bytes
    dec = PacketDecoder()
    assert dec.decode(1, good[0], 0) is None
    assert dec.decode(1, bytes(evil), 0) is None  # overlaps both: only 160..240 is new
    assert dec.decode(1, good[1], 0) == want._replace(
        payload=want.payload[:152] + b"\xee" * 80 + want.payload[232:]
    )


def test_fragment_table_is_bounded(corpus: Path) -> None:
    original = frame(DNS_RESPONSE)
    dec = PacketDecoder(max_fragments=2, frag_ttl_s=30.0)
    heads = []
    for ident in (1, 2, 3):
        head = bytearray(fragment_ipv4(original, [(0, 160), (160, 520)])[0])
        struct.pack_into("!H", head, 18, ident)
        heads.append(bytes(head))
        assert dec.decode(1, bytes(head), 0) is None
    assert dec.fragments_evicted == 1  # ident 1 made room for ident 3
    assert dec.decode(1, heads[1], 31_000_000_000) is None  # all older than the TTL
    assert dec.fragments_evicted == 3


def test_reassembler_refuses_datagrams_over_64k() -> None:
    table = Reassembler(max_datagrams=4)
    key = (b"\x01" * 4, b"\x02" * 4, 7, 17)
    assert table.add(key, 0, True, b"x" * 64, 0, 64, 0) is None
    with pytest.raises(DecodeError, match="larger than"):
        table.add(key, 65528, True, b"y" * 64, 0, 64, 0)
    assert len(table) == 0


def test_reassembler_last_fragment_disagreeing_with_data() -> None:
    table = Reassembler()
    key = (b"\x01" * 4, b"\x02" * 4, 7, 17)
    assert table.add(key, 64, True, b"x" * 64, 0, 64, 0) is None
    with pytest.raises(DecodeError):
        table.add(key, 0, False, b"y" * 16, 0, 16, 0)  # ends at 16, data reaches 128


# -- tunnels built around real packets -----------------------------------------------


def _inner_ip(data: bytes) -> bytes:
    return data[14:]


def tunnels(query: bytes, query_v6: bytes) -> dict[str, tuple[bytes, bool]]:
    """name -> (Ethernet frame, inner is IPv6)."""
    ip4, ip6 = _inner_ip(query), query_v6
    gtp_ext = b"\x01\x00\x01\x00"  # PDU session container, 4 bytes, no next extension
    return {
        "gre": (eth(0x0800, ipv4(47, b"\x00\x00\x08\x00" + ip4)), False),
        "gre-csum-key-seq": (eth(0x0800, ipv4(47, b"\xb0\x00\x08\x00" + b"\0" * 12 + ip4)), False),
        "gre-ipv6": (eth(0x0800, ipv4(47, b"\x00\x00\x86\xdd" + ip6)), True),
        "gre-ethernet": (eth(0x0800, ipv4(47, b"\x00\x00\x65\x58" + query)), False),
        "gre-erspan2": (eth(0x0800, ipv4(47, b"\x10\x00\x88\xbe" + b"\0" * 12 + query)), False),
        "gre-pptp": (
            eth(0x0800, ipv4(47, b"\x30\x01\x88\x0b" + b"\0" * 8 + b"\xff\x03\x00\x21" + ip4)),
            False,
        ),
        "ipip": (eth(0x0800, ipv4(4, ip4)), False),
        "6in4": (eth(0x0800, ipv4(41, ip6)), True),
        "mpls": (eth(0x8847, mpls_label(100, False) + mpls_label(200, True) + ip4), False),
        "mpls-ipv6": (eth(0x8847, mpls_label(16, True) + ip6), True),
        "mpls-pseudowire": (eth(0x8847, mpls_label(300, True) + b"\0" * 4 + query), False),
        "pppoe-compressed-protocol": (eth(0x8864, b"\x11\x00\x00\x07\x00\x00\x21" + ip4), False),
        "pppoe-ipv6": (eth(0x8864, b"\x11\x00\x00\x07\x00\x00\x00\x57" + ip6), True),
        "vxlan": (eth(0x0800, ipv4(17, udp(50000, 4789, b"\x08" + b"\0" * 7 + query))), False),
        "vxlan-gpe": (
            eth(0x0800, ipv4(17, udp(50000, 4790, b"\x0c\x00\x00\x01" + b"\0" * 4 + ip4))),
            False,
        ),
        "geneve-options": (
            eth(0x0800, ipv4(17, udp(5000, 6081, b"\x02\x00\x08\x00" + b"\0" * 12 + ip4))),
            False,
        ),
        "geneve-ipv6": (
            eth(0x0800, ipv4(17, udp(5000, 6081, b"\x00\x00\x86\xdd" + b"\0" * 4 + ip6))),
            True,
        ),
        "gtp-u": (
            eth(0x0800, ipv4(17, udp(2152, 2152, b"\x30\xff\x00\x00" + b"\0" * 4 + ip4))),
            False,
        ),
        "gtp-u-extension": (
            eth(
                0x0800,
                ipv4(
                    17, udp(2152, 2152, b"\x34\xff\x00\x00" + b"\0" * 7 + b"\x85" + gtp_ext + ip4)
                ),
            ),
            False,
        ),
        "teredo-origin": (
            eth(0x0800, ipv4(17, udp(3544, 40000, b"\x00\x00" + b"\0" * 6 + ip6))),
            True,
        ),
        "teredo-auth": (
            eth(0x0800, ipv4(17, udp(40000, 3544, b"\x00\x01\x02\x00ab" + b"\0" * 9 + ip6))),
            True,
        ),
    }


def test_synthetic_tunnels_reach_the_inner_packet(
    corpus: Path, query: tuple[bytes, Segment], query_v6: tuple[bytes, Segment]
) -> None:
    built = tunnels(query[0], query_v6[0])
    for name, (data, v6) in built.items():
        want = query_v6[1] if v6 else query[1]
        assert decode_frame(1, data) == want, name
        assert PacketDecoder().decode(1, data, 0) == want, name


def test_unknown_tunnel_payload_is_plain_udp(corpus: Path, query: tuple[bytes, Segment]) -> None:
    """GTP signalling (echo) on 2152 and a VXLAN header without the I flag stay outer UDP."""
    for payload, port in ((b"\x32\x01\x00\x04" + b"\0" * 8, 2152), (b"\0" * 8 + query[0], 4789)):
        seg = decode_frame(1, eth(0x0800, ipv4(17, udp(2152, port, payload))))
        assert seg is not None and ntop(seg.src) == "198.51.100.1" and seg.payload == payload


def test_teredo_heuristic_needs_a_teredo_address(
    corpus: Path, query_v6: tuple[bytes, Segment]
) -> None:
    """Off port 3544 a look-alike IPv6 header between non-Teredo addresses is left alone."""
    data = eth(0x0800, ipv4(17, udp(40000, 40001, query_v6[0])))
    seg = decode_frame(1, data)
    assert seg is not None and seg.dport == 40001 and len(seg.src) == 4
    teredo_src = query_v6[0][:8] + bytes.fromhex("20010000" + "11" * 12) + query_v6[0][24:]
    seg = decode_frame(1, eth(0x0800, ipv4(17, udp(40000, 40001, teredo_src))))
    assert seg is not None and seg.dport == 53 and ntop(seg.src).startswith("2001:0:")


def test_tunnel_depth_is_bounded(corpus: Path, query: tuple[bytes, Segment]) -> None:
    packet = _inner_ip(query[0])
    for _ in range(MAX_TUNNEL_DEPTH):
        packet = ipv4(4, packet)
    assert decode_frame(1, eth(0x0800, packet)) == query[1]
    with pytest.raises(DecodeError, match="tunnel"):
        decode_frame(1, eth(0x0800, ipv4(4, packet)))


def test_nflog_tlvs_in_big_endian_order(corpus: Path) -> None:
    """NFLOG TLV headers are in the capturing host's byte order: big-endian hosts too."""
    data = frames("tcpdump_nflog.pcap")[0][2]
    out, off = bytearray(data[:4]), 4
    while off + 4 <= len(data):
        size, kind = struct.unpack_from("<HH", data, off)
        padded = (size + 3) & ~3
        out += struct.pack(">HH", size, kind) + data[off + 4 : off + padded]
        off += padded
    assert decode_frame(239, bytes(out)) == decode_frame(239, data) is not None


def test_linux_cooked_v2_pppoe(corpus: Path, query: tuple[bytes, Segment]) -> None:
    sll2 = struct.pack("!HHIHBB8s", 0x8864, 0, 2, 1, 0, 6, b"\0" * 8)
    data = sll2 + b"\x11\x00\x00\x07\x00\x00\x00\x21" + _inner_ip(query[0])
    assert decode_frame(276, data) == query[1]


def test_segment_carries_tcp_sequence_number(corpus: Path) -> None:
    _ts, lt, data = frames("zeek_http-vlan-0.pcap")[3]
    seg = decode_frame(lt, data)
    assert seg is not None and seg.proto == PROTO_TCP
    assert seg.seq == struct.unpack_from("!I", data, 18 + 20 + 4)[0]


# -- hostile input -------------------------------------------------------------------


def _decode_all(
    dec: PacketDecoder, linktype: int, data: bytes, ts: int, tally: Counter[str], where: str
) -> None:
    for stateful in (False, True):
        try:
            seg = dec.decode(linktype, data, ts) if stateful else decode_frame(linktype, data)
        except DecodeError:
            tally["error"] += 1
            continue
        except Exception as exc:
            raise AssertionError(f"{where}: {exc!r} on {data.hex()}") from exc
        assert seg is None or isinstance(seg, Segment), where
        tally["none" if seg is None else "segment"] += 1


def _mutants(data: bytes, rng: random.Random, count: int) -> list[bytes]:
    out = []
    for _ in range(count):
        buf = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            # headers live near the start: aim half the flips at the first 96 bytes
            span = min(len(buf), 96) if rng.random() < 0.5 else len(buf)
            buf[rng.randrange(span)] ^= rng.randint(1, 255)
        out.append(bytes(buf))
    return out


def test_mutated_corpus_frames_only_raise_decode_error(corpus: Path) -> None:
    rng = random.Random(20240611)
    tally: Counter[str] = Counter()
    for name in ALL_FILES:
        try:
            cap = frames(name)
        except Exception:  # unreadable files are the capture tests' business
            continue
        dec = PacketDecoder(max_fragments=8, frag_ttl_s=1.0)
        for number, (ts, linktype, data) in enumerate(cap, 1):
            where = f"{name} frame {number}"
            for cut in range(0, len(data), 7):
                _decode_all(dec, linktype, data[:cut], ts, tally, f"{where} cut at {cut}")
            for mutant in _mutants(data, rng, 32) if data else []:
                _decode_all(dec, linktype, mutant, ts, tally, f"{where} mutant")
                short = mutant[: rng.randrange(len(mutant))]
                _decode_all(dec, linktype, short, ts, tally, f"{where} short mutant")
    print(f"mutation outcomes: {dict(tally)}")
    assert tally["segment"] and tally["none"] and tally["error"]
    assert sum(tally.values()) > 100_000


def test_mutated_synthetic_tunnels_only_raise_decode_error(
    corpus: Path, query: tuple[bytes, Segment], query_v6: tuple[bytes, Segment]
) -> None:
    """The tunnels the corpus lacks, cut at every byte and flipped in their headers."""
    rng = random.Random(7)
    tally: Counter[str] = Counter()
    dec = PacketDecoder(max_fragments=4)
    for name, (data, _v6) in tunnels(query[0], query_v6[0]).items():
        for cut in range(len(data)):
            _decode_all(dec, 1, data[:cut], 0, tally, f"{name} cut at {cut}")
        for _ in range(400):
            buf = bytearray(data)
            for _ in range(rng.randint(1, 3)):
                buf[rng.randrange(min(len(buf), 120))] ^= rng.randint(1, 255)
            _decode_all(dec, 1, bytes(buf), 0, tally, f"{name} mutant")
    assert tally["segment"] and tally["none"] and tally["error"]
