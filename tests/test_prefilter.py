"""The libpcap prefilter loses nothing: files read through it give exactly the events the
pure-Python reader (the reference) gives, on the sample, the corpus and a generated mix."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from kaspwatch.cli.scan import scan
from sensor.pipeline import Sensor
from sensor.rules.indicators import load_pack
from sensor.rules.match import Matcher
from sensor.sources import open_capture
from sensor.sources.pcapfile import CaptureFile
from sensor.sources.prefilter import PrefilteredFile, available, prefilter_expression
from tests.testenv import SAMPLE

REPO = Path(__file__).resolve().parent.parent
EXPR = prefilter_expression()


@pytest.fixture(scope="module", autouse=True)
def libpcap() -> None:
    if not available():
        pytest.fail("libpcap not found: apt-get install libpcap0.8 (tcpdump depends on it)")


def events(path: Path, prefilter: bool, matcher: Matcher) -> tuple[list[str], list[str]]:
    """Sorted NDJSON lines of ``scan --observations`` and its warnings."""
    out = io.StringIO()
    warnings, errors = scan([str(path)], Sensor(matcher, "t", True), "ndjson", out, prefilter)
    assert not errors, errors
    return sorted(out.getvalue().splitlines()), warnings


def test_both_readers_agree_on_every_corpus_file(corpus: Path) -> None:
    matcher = Matcher(load_pack())
    prefiltered = 0
    captures = REPO / "tests" / "captures"  # made for this project (tests/test_corpus.py)
    for path in [*sorted(corpus.glob("*.pcap*")), *sorted(captures.glob("*.pcap*"))]:
        if path.name == "suricata-verify_bug-1450-04_tls_DER-incomplete-header.pcap":
            continue  # refused by both (tests/test_corpus.py)
        with open_capture(str(path)) as cap:
            prefiltered += isinstance(cap, PrefilteredFile)
        fast, _ = events(path, True, matcher)
        slow, _ = events(path, False, matcher)
        assert fast == slow, f"{path.name}: the prefilter changes what the sensor reports"
    assert prefiltered >= 55, "the prefilter was not used for most of the corpus"


def test_sample_is_prefiltered_and_agrees() -> None:
    matcher = Matcher(load_pack())
    with open_capture(str(SAMPLE)) as cap:
        assert isinstance(cap, PrefilteredFile)
        passed = sum(1 for _ in cap)
    total = sum(1 for _ in CaptureFile(str(SAMPLE)))
    assert 0 < passed < total  # pure ACKs and server data stay in C
    assert events(SAMPLE, True, matcher) == events(SAMPLE, False, matcher)


def test_generated_mix_every_kaspersky_name_and_most_packets_skipped(tmp_path: Path) -> None:
    path = tmp_path / "mix.pcap"
    subprocess.run(
        [sys.executable, str(REPO / "bench" / "gen_mixed.py"), str(path), "--packets", "30000"],
        check=True,
        cwd=REPO,
        capture_output=True,
    )
    info = json.loads(Path(f"{path}.expected.json").read_text())
    matcher = Matcher(load_pack())
    fast, _ = events(path, True, matcher)
    assert fast == events(path, False, matcher)[0]
    hits = {json.loads(line)["name"] for line in fast if json.loads(line)["indicator"]}
    assert set(info["kaspersky_names"]) <= hits
    assert info["counts"]["tls_sni_in_2nd_segment"] > 0 and info["ipv6_share"] > 0.1
    with PrefilteredFile(str(path), EXPR) as cap:
        passed = sum(1 for _ in cap)
    assert passed < 0.3 * 30000


# --- single packets through the filter ----------------------------------------------------

ETH6 = bytes(6) + bytes(5) + b"\x01" + b"\x86\xdd"
ETH4 = bytes(6) + bytes(5) + b"\x01" + b"\x08\x00"
V6A, V6B = (
    bytes.fromhex("20010db8" + "00" * 11 + "01"),
    bytes.fromhex("20010db8" + "00" * 11 + "02"),
)


def tcp6(sport: int, dport: int, flags: int, payload: bytes) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 0x50, flags, 65535, 0, 0) + payload
    return ETH6 + struct.pack("!IHBB16s16s", 0x60000000, len(tcp), 6, 64, V6A, V6B) + tcp


def udp4(sport: int, dport: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, b"\x0a\0\0\1", b"\x0a\0\0\2"
    )
    return ETH4 + ip + udp


def passes(tmp_path: Path, frame: bytes) -> bool:
    path = tmp_path / "one.pcap"
    head = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)
    path.write_bytes(head + struct.pack("<IIII", 1, 0, len(frame), len(frame)) + frame)
    with PrefilteredFile(str(path), EXPR) as cap:
        return len(list(cap)) == 1


@pytest.mark.parametrize(
    ("what", "frame", "kept"),
    [
        ("IPv6 client data (a hello's second half)", tcp6(50000, 443, 0x18, b"\x00" * 300), True),
        ("IPv6 SYN", tcp6(50000, 443, 0x02, b""), True),
        ("IPv6 pure ACK", tcp6(50000, 443, 0x10, b""), False),
        ("IPv6 server data to the client", tcp6(443, 50000, 0x10, b"\x00" * 1400), False),
        ("IPv6 DNS over TCP from the server", tcp6(53, 50000, 0x18, b"\x00" * 40), True),
        ("IPv6 HTTP answer head from port 80", tcp6(80, 50000, 0x18, b"HTTP/1.1 200 OK"), True),
        ("IPv6 update file body from port 80", tcp6(80, 50000, 0x10, b"KLZF" + bytes(99)), True),
        ("IPv6 bulk body from port 80", tcp6(80, 50000, 0x10, b"\x8bZ" + bytes(1398)), False),
        ("IPv6 text body from port 443", tcp6(443, 50000, 0x10, b"HTTP/1.1 200 OK"), False),
        ("QUIC short header on 443", udp4(443, 50000, b"\x45" + bytes(1200)), False),
        ("QUIC Initial", udp4(50000, 443, b"\xc3" + bytes(1199)), True),
        ("DNS on port 8053", udp4(50000, 8053, b"\x45\x00\x01\x00" + bytes(20)), True),
        ("empty UDP datagram", udp4(50000, 9999, b""), True),
    ],
)
def test_filter_keeps_what_can_carry_a_name(
    tmp_path: Path, what: str, frame: bytes, kept: bool
) -> None:
    assert passes(tmp_path, frame) is kept, what


def test_truncated_file_keeps_what_was_read_on_both_paths(tmp_path: Path) -> None:
    cut = tmp_path / "cut.pcap"
    data = SAMPLE.read_bytes()
    cut.write_bytes(data[: len(data) - 50])
    matcher = Matcher(load_pack())
    fast, fast_warnings = events(cut, True, matcher)
    slow, slow_warnings = events(cut, False, matcher)
    assert fast == slow
    assert [w.split(":")[0] for w in fast_warnings] == [str(cut)] and "truncated" in fast_warnings[
        0
    ]
    assert slow_warnings and "truncated" in slow_warnings[0]


def test_gzip_and_no_prefilter_use_the_reference_reader(tmp_path: Path) -> None:
    import gzip

    packed = tmp_path / "sample.pcap.gz"
    packed.write_bytes(gzip.compress(SAMPLE.read_bytes()))
    with open_capture(str(packed)) as cap:
        assert isinstance(cap, CaptureFile)
    with open_capture(str(SAMPLE), prefilter=False) as cap:
        assert isinstance(cap, CaptureFile)
