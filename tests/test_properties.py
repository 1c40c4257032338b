"""Property tests (hypothesis) of every decoder and the capture readers.

Arbitrary bytes: each decoder returns or raises its documented "malformed" outcome
(``DecodeError``); the whole packet path never raises. Structure-aware round trips: DNS
messages built by dnspython (random names in 0x20 case, compression, CNAME chains), TLS
ClientHellos (random SNI, extension order, record and TCP segmentation), HTTP heads
(method, Host spelling, line endings) decode to the names put in. Captures cut or
corrupted at any byte give frames and a note, or a CaptureError naming the file; never a
traceback. ``HYPOTHESIS_PROFILE=fuzz .venv/bin/pytest --timeout=0 tests/test_properties.py``
runs 20,000 examples per test (CI: 60; profiles in conftest.py).
"""

from __future__ import annotations

import contextlib
import random
import struct
from pathlib import Path

import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from sensor.decode import DecodeError
from sensor.decode.dns import decode_dns, looks_like_dns
from sensor.decode.http import decode_http_request
from sensor.decode.packet import PacketDecoder
from sensor.decode.quic import QuicInitialTracker
from sensor.decode.quic_crypto import crypto_frames
from sensor.decode.stream import StreamTable
from sensor.decode.tls import hello_from_stream, parse_client_hello
from sensor.pipeline import Sensor
from sensor.rules.match import Matcher
from sensor.sources.base import CaptureError
from sensor.sources.pcapfile import CaptureFile
from tests.testenv import SAMPLE

FLOW = (b"\x0a\x00\x00\x01", 40000, b"\x0a\x00\x00\x02", 443)
LINKTYPES = (1, 101, 113, 276, 0, 239, 228, 229)

# -- arbitrary bytes -------------------------------------------------------------------


@given(st.binary(max_size=600))
def test_dns_arbitrary_bytes(data: bytes) -> None:
    looks_like_dns(data)
    try:
        out = decode_dns(data)
    except DecodeError:
        return
    assert all(s.kind in ("dns_query", "dns_answer") for s in out)


def test_dns_record_of_unknown_class_is_not_a_crash() -> None:
    """Found by fuzz/run.py: an A record in class 0x44 is GenericRdata without .address."""
    msg = dns.message.make_response(dns.message.make_query("s07.upd.kaspersky.com", "A"))
    rr = dns.rrset.from_text("s07.upd.kaspersky.com.", 60, "IN", "A", "10.0.0.1")
    msg.answer.append(rr)
    wire = bytearray(msg.to_wire())
    wire[-12:-10] = b"\x00\x44"  # the answer's class
    (sighting,) = decode_dns(bytes(wire))
    assert sighting.name == "s07.upd.kaspersky.com" and sighting.answers == ()


@given(st.binary(max_size=600))
def test_tls_arbitrary_bytes(data: bytes) -> None:
    for parse in (lambda d: hello_from_stream(d), lambda d: parse_client_hello(d, "tls_sni")):
        with contextlib.suppress(DecodeError):
            parse(data)


@given(st.binary(max_size=600))
def test_http_arbitrary_bytes(data: bytes) -> None:
    assert all(
        s.kind in ("http_host", "http_connect", "http_request") for s in decode_http_request(data)
    )


@given(st.binary(max_size=1500), st.sampled_from([0x00000001, 0x6B3343CF]))
def test_quic_arbitrary_bytes(data: bytes, version: int) -> None:
    tracker = QuicInitialTracker()
    for payload in (data, b"\xc0" + version.to_bytes(4, "big") + data):
        with contextlib.suppress(DecodeError):
            tracker.feed(FLOW, payload, 0.0)
    with contextlib.suppress(DecodeError):
        crypto_frames(data)


@given(st.sampled_from(LINKTYPES), st.binary(max_size=1500))
def test_packet_path_arbitrary_bytes_never_raises(
    matcher: Matcher, linktype: int, data: bytes
) -> None:
    with contextlib.suppress(DecodeError):
        PacketDecoder().decode(linktype, data, 0)
    Sensor(matcher, "t", observations=True, strict=True).process_frame(0, linktype, data)


# -- DNS round trips -------------------------------------------------------------------

_LABEL = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)
_NAME = st.lists(_LABEL, min_size=1, max_size=5).map(".".join)


def _case20(name: str, rng: random.Random) -> str:
    """DNS 0x20: a resolver randomises the case of the asked name."""
    return "".join(c.upper() if rng.random() < 0.5 else c for c in name)


@given(
    qname=_NAME,
    chain=st.lists(_NAME, max_size=6, unique=True),
    addrs=st.lists(st.ip_addresses(v=4).map(str), min_size=1, max_size=4, unique=True),
    seed=st.integers(0, 2**32),
)
def test_dns_answer_round_trip(qname: str, chain: list[str], addrs: list[str], seed: int) -> None:
    """dnspython compresses every name it can: the chain is mostly pointers."""
    assume(qname not in chain)
    rng = random.Random(seed)
    asked = _case20(qname, rng)
    msg = dns.message.make_response(dns.message.make_query(asked, "A"))
    owner = asked
    for target in chain:
        spelled = _case20(target, rng)
        msg.answer.append(dns.rrset.from_text(owner + ".", 300, "IN", "CNAME", spelled + "."))
        owner = spelled
    msg.answer.append(dns.rrset.from_text(owner + ".", 60, "IN", "A", *addrs))
    wire = msg.to_wire()
    assume(len(wire) <= 65535)
    (sighting,) = decode_dns(wire)
    assert sighting.kind == "dns_answer"
    assert sighting.name == qname.lower()
    assert sighting.chain == tuple(c.lower() for c in chain)
    assert sorted(sighting.answers) == sorted(addrs)
    assert sighting.ttl == 60
    # and the question alone
    (query,) = decode_dns(dns.message.make_query(asked, "AAAA").to_wire())
    assert (query.kind, query.name) == ("dns_query", qname.lower())


# -- TLS ClientHello round trips --------------------------------------------------------


def _ext(etype: int, data: bytes) -> bytes:
    return struct.pack("!HH", etype, len(data)) + data


def _client_hello(
    sni: str, others: list[tuple[int, bytes]], ech: bool, rng: random.Random
) -> bytes:
    name = sni.encode()
    sni_data = struct.pack("!HBH", len(name) + 3, 0, len(name)) + name
    exts = [_ext(0, sni_data), *(_ext(t, d) for t, d in others)]
    if ech:
        exts.append(_ext(0xFE0D, bytes(rng.randrange(256) for _ in range(40))))
    rng.shuffle(exts)
    blob = b"".join(exts)
    suites = b"\x13\x01\x13\x02\xc0\x2b"
    body = b"\x03\x03" + rng.randbytes(32) + b"\x20" + rng.randbytes(32)
    body += struct.pack("!H", len(suites)) + suites + b"\x01\x00"
    body += struct.pack("!H", len(blob)) + blob
    return b"\x01" + len(body).to_bytes(3, "big") + body


def _records(handshake: bytes, rng: random.Random) -> bytes:
    """The handshake cut into TLS records of random sizes (RFC 8446 5.1 allows it)."""
    out, pos = b"", 0
    while pos < len(handshake):
        n = rng.randint(1, 600)
        frag = handshake[pos : pos + n]
        out += b"\x16\x03\x01" + struct.pack("!H", len(frag)) + frag
        pos += n
    return out


def _feed_segments(table: StreamTable, stream: bytes, rng: random.Random) -> list:  # type: ignore[type-arg]
    found, pos, seq = [], 0, rng.randrange(1 << 32)
    while pos < len(stream):
        n = rng.randint(1, 300)
        found += table.feed(FLOW, (seq + pos) % (1 << 32), stream[pos : pos + n], False)
        pos += n
    return found


@given(
    sni=_NAME,
    others=st.lists(
        st.tuples(st.integers(1, 0xFE0C), st.binary(max_size=80)),
        max_size=12,
        unique_by=lambda e: e[0],
    ),
    ech=st.booleans(),
    seed=st.integers(0, 2**32),
)
def test_client_hello_round_trip(
    sni: str, others: list[tuple[int, bytes]], ech: bool, seed: int
) -> None:
    rng = random.Random(seed)
    spelled = _case20(sni, rng)
    stream = _records(_client_hello(spelled, others, ech, rng), rng)
    complete, sighting = hello_from_stream(stream)
    assert complete and sighting is not None and sighting.name == sni.lower()
    assert sighting.extra == ({"ech": True} if ech else {})
    table = StreamTable()
    (via_stream,) = _feed_segments(table, stream, rng)
    assert via_stream.name == sni.lower() and len(table) == 0


# -- HTTP heads ------------------------------------------------------------------------


@given(
    host=_NAME,
    port=st.one_of(st.none(), st.integers(1, 65535)),
    method=st.sampled_from(["GET", "POST", "HEAD", "PUT", "OPTIONS", "DELETE", "PATCH"]),
    spelling=st.sampled_from(["Host", "host", "HOST", "hOsT"]),
    space=st.sampled_from([":", ": ", ":\t", " : "]),
    eol=st.sampled_from(["\r\n", "\n"]),
    before=st.lists(
        st.sampled_from(["User-Agent: x", "Accept: */*", "X-Host: evil.example"]), max_size=3
    ),
    path=st.text("abcdefghijklmnopqrstuvwxyz0123456789/._-?=&", max_size=40),
    seed=st.integers(0, 2**32),
)
def test_http_head_round_trip(
    host: str,
    port: int | None,
    method: str,
    spelling: str,
    space: str,
    eol: str,
    before: list[str],
    path: str,
    seed: int,
) -> None:
    rng = random.Random(seed)
    authority = _case20(host, rng) + (f":{port}" if port is not None else "")
    lines = [f"{method} /{path} HTTP/1.1", *before, f"{spelling}{space}{authority}", "Accept: */*"]
    head = (eol.join(lines) + eol + eol).encode()
    (sighting,) = decode_http_request(head)
    assert (sighting.kind, sighting.name) == ("http_host", host.lower())
    table = StreamTable()
    (via_stream,) = _feed_segments(table, head, rng)
    assert via_stream.name == host.lower()
    connect = f"CONNECT {authority if port else authority + ':443'} HTTP/1.1{eol}{eol}".encode()
    assert [(s.kind, s.name) for s in decode_http_request(connect)] == [
        ("http_connect", host.lower())
    ]


# -- capture files cut or corrupted anywhere -------------------------------------------


def _sample_frames(n: int = 12) -> list[tuple[int, int, bytes]]:
    with CaptureFile(str(SAMPLE)) as cap:
        return [f for _, f in zip(range(n), cap, strict=False)]


def _pcap(frames: list[tuple[int, int, bytes]]) -> tuple[bytes, list[int]]:
    """The file and the offsets where each record ends (a cut there reads clean)."""
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    ends = [len(out)]
    for ts, _lt, data in frames:
        sec, usec = divmod(ts // 1000, 1_000_000)
        out += struct.pack("<IIII", sec, usec, len(data), len(data)) + data
        ends.append(len(out))
    return out, ends


def _block(btype: int, body: bytes) -> bytes:
    body += bytes(-len(body) % 4)
    n = len(body) + 12
    return struct.pack("<II", btype, n) + body + struct.pack("<I", n)


def _pcapng(frames: list[tuple[int, int, bytes]]) -> tuple[bytes, list[int]]:
    out = _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    out += _block(1, struct.pack("<HHI", 1, 0, 65535))
    ends = [len(out)]
    for ts, _lt, data in frames:
        t = ts // 1000
        out += _block(
            6, struct.pack("<IIIII", 0, t >> 32, t & 0xFFFFFFFF, len(data), len(data)) + data
        )
        ends.append(len(out))
    return out, ends


# module level, not a fixture: hypothesis would print a fixture's bytes with every failure
FRAMES = _sample_frames()
CAPTURES = {"pcap": _pcap(FRAMES), "pcapng": _pcapng(FRAMES)}


def _read(path: Path) -> tuple[int, str]:
    """(frames read, the message a person gets: the truncation note or the error)."""
    got = 0
    try:
        with CaptureFile(str(path)) as cap:
            for _ in cap:
                got += 1
            note = cap.stats.note
            if cap.stats.truncated:
                assert f"kept {got} packets" in note and " at byte " in note
    except CaptureError as exc:
        note = str(exc)
        assert str(path) in note, note
    return got, note


@given(fmt=st.sampled_from(["pcap", "pcapng"]), data=st.data())
def test_capture_cut_anywhere(
    tmp_path_factory: pytest.TempPathFactory, fmt: str, data: st.DataObject
) -> None:
    whole, ends = CAPTURES[fmt]
    cut = data.draw(st.integers(0, len(whole) - 1))
    path = tmp_path_factory.mktemp("cut") / f"cut.{fmt}"
    path.write_bytes(whole[:cut])
    got, note = _read(path)
    assert got == sum(1 for e in ends[1:] if e <= cut)  # every whole record before the cut
    boundaries = {*ends, 28} if fmt == "pcapng" else set(ends)  # 28: the section header's end
    if cut not in boundaries:  # only a cut on a block or record boundary reads clean
        assert str(path) in note


@given(fmt=st.sampled_from(["pcap", "pcapng"]), data=st.data())
def test_capture_corrupted_anywhere(
    tmp_path_factory: pytest.TempPathFactory, fmt: str, data: st.DataObject
) -> None:
    buf = bytearray(CAPTURES[fmt][0])
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(buf) - 1))
        buf[pos] = data.draw(st.integers(0, 255))
    path = tmp_path_factory.mktemp("bad") / f"bad.{fmt}"
    path.write_bytes(bytes(buf))
    got, _note = _read(path)
    assert got <= len(buf) // 16


def test_cut_gzip_capture_keeps_what_was_read(tmp_path: Path) -> None:
    import gzip

    packed = gzip.compress(CAPTURES["pcap"][0])
    path = tmp_path / "cut.pcap.gz"
    path.write_bytes(packed[: len(packed) * 2 // 3])
    got, note = _read(path)
    assert 0 < got < 12 and f"{path}: truncated compressed stream at byte " in note


def test_interface_option_cut_short_is_not_a_crash(tmp_path: Path) -> None:
    """Found by fuzz/run.py: an if_tsresol option whose value lies past the block's end."""
    idb_body = struct.pack("<HHI", 1, 0, 65535) + struct.pack("<HH", 9, 1)  # no value byte
    data = _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    data += (
        struct.pack("<II", 1, 12 + len(idb_body)) + idb_body + struct.pack("<I", 12 + len(idb_body))
    )
    path = tmp_path / "cut-option.pcapng"
    path.write_bytes(data)
    assert _read(path)[0] == 0


def test_cut_capture_through_the_cli(tmp_path: Path) -> None:
    """What a person sees: the names read before the cut, then one line naming file, offset
    and count on stderr; no traceback."""
    import subprocess

    from tests.testenv import KASPWATCH

    whole, ends = CAPTURES["pcapng"]
    path = tmp_path / "cut.pcapng"
    path.write_bytes(whole[: ends[5] + 30])
    proc = subprocess.run(
        [*KASPWATCH, "scan", str(path)], capture_output=True, text=True, timeout=120
    )
    assert "Traceback" not in proc.stderr
    assert f"{path}: truncated block at byte {ends[5]}; kept 5 packets" in proc.stderr
    bad = bytearray(whole)
    bad[ends[3] + 4 : ends[3] + 8] = (7).to_bytes(4, "little")  # a block length below 12
    path.write_bytes(bytes(bad))
    proc = subprocess.run(
        [*KASPWATCH, "scan", str(path)], capture_output=True, text=True, timeout=120
    )
    assert "Traceback" not in proc.stderr
    assert (
        f"{path}: corrupt pcapng block at byte {ends[3]}: length 7 (after 3 packets)" in proc.stderr
    )
