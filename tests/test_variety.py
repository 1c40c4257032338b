"""Every capture a responder brings: link types besides Ethernet (802.11 with and without
radiotap, PPP, PPP in HDLC framing), AYIYA, segmentation-offload super-packets, pcapng
files whose interfaces differ, and files of link types kaspwatch does not read.

The corpus files ``kaspwatch_*`` come from ``tools/make_variety.py``; tshark is the judge
of what each holds, and both readers (libpcap prefilter and pure Python) must report it.
"""

from __future__ import annotations

import importlib.util
import io
import json
import re
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from kaspwatch.cli import main
from kaspwatch.cli.scan import scan
from sensor.decode import DecodeError
from sensor.decode.packet import LINKTYPES, PacketDecoder, decode_frame
from sensor.pipeline import Sensor
from sensor.rules.indicators import load_pack
from sensor.rules.match import Matcher
from sensor.sources import CaptureFiles, open_capture
from sensor.sources.prefilter import PrefilteredFile
from tests.testenv import CORPUS, REPO


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_variety", REPO / "tools/make_variety.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _generator()
MADE = sorted(GEN.NAMES)


def _tools(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        pytest.fail(f"missing {missing}: apt-get install tshark (bash .ci/system-packages.sh)")


def tshark_names(path: Path) -> dict[str, set[str]]:
    """The names tshark dissects in ``path``, by kind (as the corpus oracle sorts them); a
    Host header without its port, as kaspwatch reports it."""
    out = subprocess.run(
        ["tshark", "-r", str(path), "-n", "-T", "fields", "-E", "occurrence=f",
         "-e", "dns.flags.response", "-e", "dns.qry.name",
         "-e", "tls.handshake.extensions_server_name", "-e", "http.host"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    found: dict[str, set[str]] = {}
    for line in out.splitlines():
        qr, qname, sni, host = line.split("\t")
        for kind, name in (
            ("dns_answer" if qr == "1" else "dns_query", qname),
            ("tls_sni", sni),
            ("http_host", re.sub(r"^\[([^]]*)\](:\d+)?$|^([^:]*):\d+$", r"\1\3", host)),
        ):
            if name:
                found.setdefault(kind, set()).add(name)
    return found


def kaspwatch_names(path: Path, prefilter: bool) -> tuple[dict[str, set[str]], list[str]]:
    out = io.StringIO()
    sensor = Sensor(Matcher(load_pack()), "t", True)
    warnings, errors = scan([str(path)], sensor, "ndjson", out, prefilter)
    assert not errors, errors
    found: dict[str, set[str]] = {}
    for line in out.getvalue().splitlines():
        ev = json.loads(line)
        if ev["kind"] in ("dns_query", "dns_answer", "tls_sni", "http_host"):
            found.setdefault(ev["kind"], set()).add(ev["name"])
    return found, warnings


@pytest.mark.parametrize("name", MADE)
def test_tshark_and_both_readers_see_what_each_file_was_made_with(name: str) -> None:
    _tools("tshark")
    want = {kind: set(names) for kind, names in GEN.NAMES[name].items()}
    assert tshark_names(CORPUS / name) == want, "tshark dissects the file otherwise"
    with open_capture(str(CORPUS / name), readable=LINKTYPES) as cap:
        assert isinstance(cap, PrefilteredFile), "libpcap's filter handles this link type"
    fast, warnings = kaspwatch_names(CORPUS / name, True)
    slow, _ = kaspwatch_names(CORPUS / name, False)
    assert fast == want
    assert slow == want
    if name in ("kaspwatch_radiotap.pcap", "kaspwatch_80211.pcap"):
        assert any("1 encrypted (no keys)" in w for w in warnings), warnings


def test_multi_interface_file_is_read_on_both_paths_with_a_notice(
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = CORPUS / "kaspwatch_multi-interface.pcapng"
    want = tshark_names(path)
    assert {"rt-dns.example.com", "hs2011", "example.com"} <= want["dns_query"]
    with caplog.at_level("INFO"):
        fast, _ = kaspwatch_names(path, True)
    assert fast == kaspwatch_names(path, False)[0] == want
    notices = [r.getMessage() for r in caplog.records if "libpcap stopped" in r.getMessage()]
    assert len(notices) == 1 and "filtered per interface" in notices[0], notices


def test_the_generator_remakes_the_corpus_files_byte_for_byte(tmp_path: Path) -> None:
    _tools("mergecap", "editcap")
    assert GEN.main(["make_variety", str(tmp_path)]) == 0
    made = sorted(p.name for p in tmp_path.iterdir())
    assert made == sorted([*MADE, "kaspwatch_multi-interface.pcapng"])
    for name in made:
        assert (tmp_path / name).read_bytes() == (CORPUS / name).read_bytes(), name


# -- pcapng whose interfaces change part-way --------------------------------------------


def _block(btype: int, body: bytes) -> bytes:
    body += b"\x00" * (-len(body) % 4)
    size = len(body) + 12
    return struct.pack("<II", btype, size) + body + struct.pack("<I", size)


def _idb(linktype: int, snaplen: int) -> bytes:
    return _block(1, struct.pack("<HHI", linktype, 0, snaplen))


def _epb(iface: int, frame: bytes, i: int) -> bytes:
    ts = (GEN.T0 + i) * 1_000_000
    head = struct.pack("<IIIII", iface, ts >> 32, ts & 0xFFFFFFFF, len(frame), len(frame))
    return _block(6, head + frame)


def _shb() -> bytes:
    return _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))


def _ether(ip: bytes) -> bytes:
    return b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + ip


def _query(name: str, port: int) -> bytes:
    return GEN.v4(GEN.UDP(sport=port, dport=53) / GEN.dns_query(name, port))


def changing_interfaces() -> bytes:
    """Ethernet packets (an ACK the prefilter drops) before a second Ethernet interface of
    another snapshot length, then BSD loopback and a link type kaspwatch does not read."""
    ack = GEN.v4(GEN.tcp(b"", 41000, 443, flags="A"))
    return b"".join(
        (
            _shb(),
            _idb(1, 65535),
            _epb(0, _ether(_query("first.example.com", 40100)), 0),
            _epb(0, _ether(ack), 1),
            _idb(1, 1500),
            _epb(1, _ether(_query("second.example.com", 40101)), 2),
            _epb(1, _ether(ack), 2),
            _idb(0, 65535),
            _epb(2, b"\x02\x00\x00\x00" + _query("third.example.com", 40102), 3),
            _epb(2, b"\x02\x00\x00\x00" + ack, 3),
            _idb(147, 65535),
            _epb(3, b"not a packet", 4),
            _epb(0, _ether(_query("fourth.example.com", 40103)), 5),
        )
    )


def test_interfaces_changing_part_way_lose_nothing_on_the_fast_path(tmp_path: Path) -> None:
    path = tmp_path / "changing.pcapng"
    path.write_bytes(changing_interfaces())
    names = {"first.example.com", "second.example.com", "third.example.com", "fourth.example.com"}
    for prefilter in (True, False):
        found, warnings = kaspwatch_names(path, prefilter)
        assert found == {"dns_query": names}, prefilter
        assert warnings == [
            f"{path}: skipped packets of link types kaspwatch does not decode: 1 of link type 147"
        ], prefilter
    with open_capture(str(path), readable=LINKTYPES) as cap:
        assert isinstance(cap, PrefilteredFile)
        frames = list(cap)
    # libpcap read the first query (and dropped the ACK) before it stopped; the pure
    # reader gave the rest once each, through the filter of each one's link type (the
    # ACKs on Ethernet and BSD loopback dropped)
    assert [f[1] for f in frames] == [1, 1, 0, 1]
    assert cap.stats.packets == 4
    assert cap.stats.skipped == {147: 1}


# -- files of link types kaspwatch does not read ----------------------------------------


def _pcap(path: Path, linktype: int, frames: list[bytes]) -> Path:
    GEN.write_pcap(path, linktype, frames)
    return path


def test_a_file_with_nothing_readable_is_a_bad_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    usb = _pcap(tmp_path / "usb.pcap", 220, [b"\x00" * 40] * 3)
    good = CORPUS / "kaspwatch_ppp.pcap"
    assert main(["scan", "--observations", str(usb), str(good)]) == 2
    out, err = capsys.readouterr()
    assert "ppp-http.example.net" in out  # the next file is still read
    assert (
        f"error: {usb}: nothing readable: every packet (3 of link type 220 (USB)) is of a "
        "link type kaspwatch does not decode" in err
    ), err
    assert "capture holds no packets" not in err


def test_some_unreadable_packets_are_a_warning_naming_the_link_type(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "mixed.pcapng"
    path.write_bytes(
        _shb()
        + _idb(1, 65535)
        + _idb(192, 65535)
        + _epb(1, b"ppi", 0)
        + _epb(1, b"ppi", 1)
        + _epb(0, _ether(_query("mixed.example.com", 40200)), 2)
    )
    assert main(["scan", "--observations", str(path)]) == 0
    out, _err = capsys.readouterr()
    assert "mixed.example.com" in out
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warned == [
        f"{path}: skipped packets of link types kaspwatch does not decode: 2 of link type 192 (PPI)"
    ]


def test_readable_packets_the_prefilter_drops_still_make_a_file_readable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Only ACKs (dropped in C) beside USB packets: a warning, not a bad file."""
    ack = _ether(GEN.v4(GEN.tcp(b"", 41000, 443, flags="A")))
    path = tmp_path / "acks.pcapng"
    path.write_bytes(_shb() + _idb(1, 65535) + _epb(0, ack, 0) + _idb(220, 65535)
                     + _epb(1, b"usb", 1) + _epb(0, ack, 2))  # fmt: skip
    for prefilter in (True, False):
        caplog.clear()
        found, warnings = kaspwatch_names(path, prefilter)
        assert found == {}
        assert warnings == [
            f"{path}: skipped packets of link types kaspwatch does not decode: "
            "1 of link type 220 (USB)"
        ], prefilter
        files = CaptureFiles([str(path)], prefilter=prefilter, readable=LINKTYPES)
        frames = [f for f in files if f is not None]
        assert [f[1] for f in frames] == ([] if prefilter else [1, 1])  # ACKs dropped in C
        assert files.errors == []
        assert any("1 of link type 220 (USB)" in r.getMessage() for r in caplog.records)


def test_sense_files_name_a_file_with_nothing_readable(tmp_path: Path) -> None:
    """``sense``/``run --pcap`` read through ``CaptureFiles``: the same rule."""
    usb = _pcap(tmp_path / "usb.pcap", 220, [b"\x00" * 40])
    files = CaptureFiles([str(usb), str(CORPUS / "kaspwatch_ayiya.pcap")], readable=LINKTYPES)
    frames = [f for f in files if f is not None]
    assert len(frames) == 3 and files.finished
    assert files.errors == [
        f"{usb}: nothing readable: every packet (1 of link type 220 (USB)) is of a link "
        "type kaspwatch does not decode"
    ]


# -- the decoder, layer by layer --------------------------------------------------------


def _segments(name: str) -> Iterator[tuple[int, bytes]]:
    with open_capture(str(CORPUS / name), prefilter=False) as cap:
        for _ts, linktype, data in cap:
            yield linktype, data


def test_offload_super_packets_take_the_captured_length() -> None:
    tso, tls, jumbo = (decode_frame(lt, d) for lt, d in _segments("kaspwatch_tso.pcap"))
    assert tso is not None and tso.payload.startswith(b"GET / HTTP/1.1\r\nHost: tso-http")
    assert tso.payload.endswith(b"x") and len(tso.payload) > 400  # to the end of the capture
    assert tls is not None and tls.payload[:1] == b"\x16"
    assert jumbo is not None and b"Host: jumbo-http.example.net" in jumbo.payload
    # BIG TCP since Linux 6.5: payload length 0 and no jumbo option: the captured length
    ((frame, _size),) = GEN.tso_frames(bigtcp6=True)[3:]
    seg = decode_frame(1, frame)
    assert seg is not None and b"Host: bigtcp6-http.example.net" in seg.payload


def test_udp_length_0_over_ipv6_reaches_the_end_of_the_packet() -> None:
    """RFC 2675 section 4, as tshark reads it: only over IPv6."""
    query = bytes(GEN.dns_query("jumbo-udp.example.com", 9))
    udp = struct.pack("!HHHH", 40300, 53, 0, 0) + query
    seg = decode_frame(229, GEN.v6(GEN.UDP())[:4] + struct.pack("!HBB", 0, 17, 64)
                       + GEN.v6(GEN.UDP())[8:40] + udp)  # fmt: skip
    assert seg is not None and seg.payload == query
    v4 = bytearray(GEN.v4(GEN.UDP(sport=40300, dport=53) / query))
    v4[24:26] = b"\x00\x00"  # UDP length 0 over IPv4: nothing trusted
    seg = decode_frame(228, bytes(v4))
    assert seg is not None and seg.payload == b""


def test_protected_and_aggregated_wifi_frames_are_counted_not_read() -> None:
    decoder = PacketDecoder()
    body = GEN.LLC_SNAP_IPV4 + _query("amsdu.example.com", 40400)
    amsdu = bytearray(GEN.dot11_data(body, qos=True))
    amsdu[24] |= 0x80  # QoS control: an A-MSDU
    assert decoder.decode(105, bytes(amsdu), 0) is None
    assert decoder.decode(105, GEN.dot11_data(b"\x00" * 32, protected=True), 0) is None
    assert decoder.wifi_skipped == {"a-msdu": 1, "protected": 1}
    # a later 802.11 fragment carries no header of its own
    frag = bytearray(GEN.dot11_data(body))
    frag[22] |= 1
    assert decoder.decode(105, bytes(frag), 0) is None


@pytest.mark.parametrize(
    ("linktype", "frame", "layer"),
    [
        (127, b"\x00\x00\x08", "radiotap"),
        (127, b"\x00\x00\xff\x00\x02\x00\x00\x00" + b"\x00" * 8, "radiotap"),
        (127, b"\x01\x00\x08\x00\x00\x00\x00\x00", "radiotap"),
        (105, b"\x08\x01" + b"\x00" * 10, "80211"),
        (105, GEN.dot11_data(b"\xaa\xaa\x03"), "llc"),
        (9, b"\xff", "ppp"),
        (50, b"\x0f\x00", "chdlc"),
        (1, GEN.ayiya_frames()[0][:46], "ayiya"),
    ],
)
def test_cut_headers_are_decode_errors_named_by_layer(
    linktype: int, frame: bytes, layer: str
) -> None:
    with pytest.raises(DecodeError) as exc:
        decode_frame(linktype, frame)
    assert str(exc.value).split(" ", 1)[0] == layer


def test_ayiya_other_messages_and_payloads_are_plain_udp() -> None:
    frame = bytearray(GEN.ayiya_frames()[0])
    frame[14 + 20 + 8 + 2] = 0x10 | 4  # opcode 4 (echo request): no packet to forward
    seg = decode_frame(1, bytes(frame))
    assert seg is not None and (seg.sport, seg.dport) == (5072, 5072)


def test_every_live_link_type_is_decoded_and_its_filter_compiles() -> None:
    """A live interface's frames take its link type (a wifi monitor interface: radiotap);
    the kernel filter is compiled by libpcap for that link type, as scapy does it."""
    from scapy.arch.common import compile_filter

    from sensor.sources.live import LINKTYPE_OF_HATYPE, default_filter

    assert LINKTYPE_OF_HATYPE[803] == 127 and LINKTYPE_OF_HATYPE[801] == 105
    for linktype in set(LINKTYPE_OF_HATYPE.values()):
        assert linktype in LINKTYPES
        assert compile_filter(default_filter(), linktype=linktype).bf_len > 0


def test_the_filter_of_each_new_link_type_drops_no_frame_that_makes_an_event() -> None:
    """libpcap's filter for 802.11, radiotap, PPP and HDLC finds IP by its own reading of
    those headers: on thousands of frames with mutated headers (flags, subtypes, lengths,
    inserted bytes), none it drops is one the pure path makes an event of."""
    import random

    from sensor.sources.prefilter import LinkFilters, prefilter_expression

    matcher = Matcher(load_pack())
    filters = LinkFilters(prefilter_expression())
    frames = []
    for name in ("kaspwatch_radiotap.pcap", "kaspwatch_80211.pcap", "kaspwatch_ppp.pcap",
                 "kaspwatch_ppp-hdlc.pcap"):  # fmt: skip
        with open_capture(str(CORPUS / name), prefilter=False) as cap:
            frames += list(cap)
    rng = random.Random(16)
    dropped = 0
    for _ in range(4000):
        ts, linktype, data = rng.choice(frames)
        frame = bytearray(data)
        pos = rng.randrange(min(len(frame), 60) + 1)
        if rng.random() < 0.7 and pos < len(frame):
            frame[pos] = rng.choice([0, 1, 2, 3, 0x08, 0x10, 0x20, 0x40, 0x80, 0x88, 0xFF])
        else:
            frame[pos:pos] = rng.randbytes(rng.choice([1, 2, 4, 6]))
        if filters.passes(linktype, bytes(frame)):
            continue
        dropped += 1
        events = Sensor(matcher, "t", True).process_frame(ts, linktype, bytes(frame))
        assert not events, (linktype, bytes(frame).hex())
    filters.close()
    assert dropped > 200  # the filter did drop frames: the property was put to the test
