"""TCP reassembly on real payloads: ClientHellos cut small, shuffled, retransmitted;
DNS over TCP with several messages split anywhere; HTTP heads over several segments."""

from __future__ import annotations

import random

import pytest

from sensor.pipeline import Sensor
from tests.conftest import SAMPLE
from tests.segments import first_frame, resegment, tcp_payload


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
    from sensor.capture import CaptureFile
    from sensor.indicators import load_pack
    from sensor.match import Matcher

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
