"""TCP reassembly on real payloads: ClientHellos cut small, shuffled, retransmitted;
DNS over TCP with several messages split anywhere; HTTP heads over several segments."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from sensor.pipeline import Sensor
from tests.segments import first_frame, resegment, tcp_payload
from tests.testenv import SAMPLE


def hello_frame() -> bytes:
    return first_frame(
        str(SAMPLE), lambda d: b"s01.upd.kaspersky.com" in d and tcp_payload(d)[:1] == b"\x16"
    )


def names(sensor: Sensor, frames: list[bytes]) -> list[tuple[str, str]]:
    out = []
    for i, f in enumerate(frames):
        out += [(e.kind, e.name) for e in sensor.process_frame(i * 1000, 1, f)]
    return out


@pytest.mark.parametrize("size", [1, 7, 88, 300])
def test_client_hello_in_tiny_segments(matcher, size: int) -> None:  # type: ignore[no-untyped-def]
    frame = hello_frame()
    segs = resegment(frame, tcp_payload(frame), size)
    assert len(segs) > 1
    got = names(Sensor(matcher, "t"), [f for _, f in segs])
    assert got == [("tls_sni", "s01.upd.kaspersky.com")]


def test_client_hello_out_of_order_and_retransmitted(matcher) -> None:  # type: ignore[no-untyped-def]
    frame = hello_frame()
    segs = [f for _, f in resegment(frame, tcp_payload(frame), 60)]
    first, rest = segs[0], segs[1:]
    random.Random(7).shuffle(rest)
    frames = [first, first, *rest[:3], rest[0], *rest[3:]]  # dupes and shuffle
    assert names(Sensor(matcher, "t"), frames) == [("tls_sni", "s01.upd.kaspersky.com")]


def test_a_stray_0x16_in_a_continuation_is_not_a_new_hello(matcher) -> None:  # type: ignore[no-untyped-def]
    frame = hello_frame()
    payload = tcp_payload(frame)
    cut = (
        next(i for i in range(40, len(payload)) if payload[i] == 0x16)
        if 0x16 in payload[40:]
        else 50
    )
    segs = [f for _, f in resegment(frame, payload, cut)]
    assert names(Sensor(matcher, "t"), segs) == [("tls_sni", "s01.upd.kaspersky.com")]


def test_stream_state_is_bounded_and_evictions_counted(matcher) -> None:  # type: ignore[no-untyped-def]
    frame = hello_frame()
    head = resegment(frame, tcp_payload(frame), 20)[0][1]  # only the first 20 bytes
    sensor = Sensor(matcher, "t")
    sensor.streams.max_flows = 100
    from scapy.layers.inet import TCP
    from scapy.layers.l2 import Ether

    for port in range(1000, 1300):  # 300 half-open hellos
        p = Ether(head)
        p[TCP].sport = port
        del p[TCP].chksum
        sensor.process_frame(0, 1, bytes(p))
    assert len(sensor.streams) == 100 and sensor.streams.evicted == 200


def test_dns_over_tcp_several_messages_split_anywhere(corpus) -> None:  # type: ignore[no-untyped-def]
    """tcpdump_dns_tcp.pcap re-cut into 5-byte segments still yields every name."""
    from sensor.rules.indicators import load_pack
    from sensor.rules.match import Matcher
    from sensor.sources.pcapfile import CaptureFile

    path = str(corpus / "tcpdump_dns_tcp.pcap")
    whole = Sensor(Matcher(load_pack()), "t", observations=True)
    cut = Sensor(Matcher(load_pack()), "t", observations=True)
    want, got = [], []
    with CaptureFile(path) as cap:
        for ts, lt, data in cap:
            want += [(e.kind, e.name) for e in whole.process_frame(ts, lt, data)]
            try:
                pieces = resegment(data, tcp_payload(data), 5)
            except (IndexError, AttributeError):
                pieces = [(0, data)]
            if not pieces:
                pieces = [(0, data)]
            for _, piece in pieces:
                got += [(e.kind, e.name) for e in cut.process_frame(ts, lt, piece)]
    assert want and sorted(got) == sorted(want)


# -- the early reject: mid-stream TCP data read at fixed offsets, never decoded in full ----


def _tcp_frame(payload: bytes, seq: int, v6: bool = False, **tcp: object) -> bytes:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    ip = IPv6(src="2001:db8::1", dst="2001:db8::2") if v6 else IP(src="10.0.0.1", dst="10.0.0.2")
    seg = TCP(seq=seq, **{"sport": 40000, "dport": 80, "flags": "PA", **tcp})
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / ip / seg / payload)


@pytest.mark.parametrize("v6", [False, True])
def test_http_head_split_inside_the_method_still_starts_a_flow(matcher, v6: bool) -> None:  # type: ignore[no-untyped-def]
    head = b"POST /up HTTP/1.1\r\nHost: s01.upd.kaspersky.com\r\n\r\n"
    bulk = b"\x00\x01" * 400  # upload data on another flow, before and after
    frames = [
        _tcp_frame(bulk, 1, v6, sport=40001),
        _tcp_frame(head[:1], 100, v6),
        _tcp_frame(head[1:7], 101, v6),  # "OST /u": a capital after the head started
        _tcp_frame(head[7:], 107, v6),
        _tcp_frame(b"Upload body starting with a capital", 100 + len(head), v6),
    ]
    assert names(Sensor(matcher, "t"), frames) == [("http_host", "s01.upd.kaspersky.com")]


def test_tcp_data_head_reads_only_plain_segments() -> None:
    from scapy.layers.inet import IP, TCP, UDP, IPOption_NOP
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt
    from scapy.layers.l2 import Ether

    from sensor.decode.packet import tcp_data_head

    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    src, dst = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    assert tcp_data_head(_tcp_frame(b"\x17\x03", 5)) == (src, 40000, dst, 80, 0x18, 0x17)
    assert tcp_data_head(_tcp_frame(b"", 5, flags="FA")) == (src, 40000, dst, 80, 0x11, -1)
    v6 = tcp_data_head(_tcp_frame(b"GET", 5, v6=True))
    assert v6 is not None and v6[1:] == (40000, v6[2], 80, 0x18, ord("G")) and len(v6[0]) == 16
    for flags in ("S", "SA"):
        assert tcp_data_head(_tcp_frame(b"x", 5, flags=flags)) is None, flags
    seg = TCP(sport=1, dport=2, flags="A") / (b"x" * 30)
    others = {
        "ipv4 options": eth / IP(options=[IPOption_NOP()] * 4) / seg,
        "ipv4 fragment": eth / IP(flags="MF") / seg,
        "ipv6 extension header": eth / IPv6() / IPv6ExtHdrDestOpt() / seg,
        "udp": eth / IP() / UDP() / (b"\x00" * 60),
        "cut short": eth / IP() / seg,
        "tcp header cut by the capture": eth / IP() / seg,
        "ipv6 tcp header cut by the capture": eth / IPv6() / seg,
    }
    cut = {"cut short": 47, "tcp header cut by the capture": 52}
    cut["ipv6 tcp header cut by the capture"] = 70
    for what, pkt in others.items():
        data = bytes(pkt)[: cut.get(what)]
        assert tcp_data_head(data) is None, what


def test_early_reject_changes_no_event_on_the_corpus(corpus, matcher) -> None:  # type: ignore[no-untyped-def]
    """Every corpus file and the sample, frame by frame: the same events with the early
    reject as with every frame decoded in full, and the reject does take frames."""
    from sensor.sources.base import CaptureError
    from sensor.sources.pcapfile import CaptureFile

    rejected: list[bytes] = []

    def counted(reject: Callable[[bytes], bool]) -> Callable[[bytes], bool]:
        def wrapper(data: bytes) -> bool:
            if reject(data):
                rejected.append(data)
                return True
            return False

        return wrapper

    for path in [SAMPLE, *sorted(corpus.glob("*.pcap*"))]:
        fast = Sensor(matcher, "t", observations=True)
        fast._mid_stream = counted(fast._mid_stream)  # type: ignore[method-assign]
        full = Sensor(matcher, "t", observations=True)
        full._mid_stream = lambda data: False  # type: ignore[method-assign]
        try:
            with CaptureFile(str(path)) as cap:
                for ts, lt, data in cap:
                    got = [e.to_json() for e in fast.process_frame(ts, lt, data)]
                    want = [e.to_json() for e in full.process_frame(ts, lt, data)]
                    assert got == want, f"{path.name}: the early reject changes events"
        except CaptureError:
            continue  # refused or cut off: tests/test_corpus.py says how
        assert fast.stats == full.stats, path.name
    assert len(rejected) > 1000, f"the early reject took only {len(rejected)} frames"
