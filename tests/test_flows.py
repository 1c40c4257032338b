"""IP flows, DNS attribution, resolver bypass and ECH, on real packets re-addressed offline.

Re-addressing happens in memory with scapy: no packet is sent anywhere.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from sensor.pipeline import Sensor
from tests.segments import first_frame
from tests.testenv import KASPWATCH, SAMPLE


def readdress(frame: bytes, src: str | None = None, dst: str | None = None) -> bytes:
    p = Ether(frame)
    if src:
        p[IP].src = src
    if dst:
        p[IP].dst = dst
    del p[IP].chksum
    for layer in (TCP, UDP):
        if layer in p:
            del p[layer].chksum
    return bytes(p)


def dns_query_frame(name: bytes) -> bytes:
    return first_frame(
        str(SAMPLE), lambda d: name in d and Ether(d).haslayer(UDP) and Ether(d)[UDP].dport == 53
    )


def dns_answer_frame(name: bytes) -> bytes:
    return first_frame(
        str(SAMPLE), lambda d: name in d and Ether(d).haslayer(UDP) and Ether(d)[UDP].sport == 53
    )


def test_resolver_bypass_is_flagged_for_public_resolvers_only(matcher) -> None:  # type: ignore[no-untyped-def]
    q = dns_query_frame(b"\x02ds\x09kaspersky")
    a = dns_answer_frame(b"\x02ds\x09kaspersky")
    sensor = Sensor(matcher, "t")
    internal = sensor.process_frame(1, 1, q)
    bypass_q = sensor.process_frame(2, 1, readdress(q, dst="8.8.8.8"))
    bypass_a = sensor.process_frame(3, 1, readdress(a, src="1.1.1.1"))
    assert [e.extra.get("resolver_bypass") for e in internal] == [None]
    assert [(e.kind, e.extra.get("resolver_bypass")) for e in bypass_q] == [("dns_query", True)]
    assert [(e.kind, e.extra.get("resolver_bypass"), e.host) for e in bypass_a] == [
        ("dns_answer", True, "10.77.0.2")
    ]


def syn_frame() -> bytes:
    return first_frame(
        str(SAMPLE),
        lambda d: (
            Ether(d).haslayer(TCP) and Ether(d)[TCP].flags == "S" and Ether(d)[TCP].dport == 443
        ),
    )


def test_flows_to_kaspersky_prefixes_v4_are_ip_flow_hits(matcher) -> None:  # type: ignore[no-untyped-def]
    sensor = Sensor(matcher, "t")
    events = sensor.process_frame(1, 1, readdress(syn_frame(), dst="77.74.177.9"))
    assert [(e.kind, e.name, e.indicator.match if e.indicator else None) for e in events] == [
        ("ip_flow", "77.74.177.9", "cidr")
    ]
    assert "attributed_by" not in events[0].extra
    assert sensor.process_frame(2, 1, readdress(syn_frame(), dst="77.74.184.9")) == []


def test_dns_attribution_expires_with_ttl(matcher) -> None:  # type: ignore[no-untyped-def]
    answer = dns_answer_frame(
        b"\x06dnl-03\x03geo"
    )  # A 10.77.0.1; dnsmasq local TTL 0 -> 60 s floor
    syn = syn_frame()  # to 10.77.0.1:443
    sensor = Sensor(matcher, "t")
    sensor.process_frame(0, 1, answer)
    hit = sensor.process_frame(10 * 10**9, 1, syn)
    assert [(e.kind, e.name, e.extra.get("attributed_by")) for e in hit] == [
        ("ip_flow", "dnl-03.geo.kaspersky.com", "dns")
    ]
    assert sensor.process_frame(400 * 10**9, 1, syn) == []  # long past any TTL it had


def test_ech_is_noted_on_the_event(corpus) -> None:  # type: ignore[no-untyped-def]
    proc = subprocess.run(
        [*KASPWATCH, "scan", "--observations", str(corpus / "zeek_tls13-ech.pcap")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    sni = [json.loads(x) for x in proc.stdout.splitlines() if '"tls_sni"' in x]
    assert sni and all(e["ech"] is True for e in sni)


def test_stdin_capture(capfd) -> None:  # type: ignore[no-untyped-def]
    with open(SAMPLE, "rb") as fh:
        proc = subprocess.run(
            [*KASPWATCH, "scan", "-"], stdin=fh, capture_output=True, text=True, timeout=60
        )
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 20


def test_a_decoder_bug_is_counted_and_logged_and_the_sensor_goes_on(  # type: ignore[no-untyped-def]
    matcher, caplog
) -> None:
    """One packet that trips a decoder bug (anything but DecodeError) must not stop a site's
    sensor: it is counted under the 'bug' layer and logged with where it happened, never the
    bytes; strict mode (the fuzzer's) lets it propagate."""
    q = dns_query_frame(b"\x02ds\x09kaspersky")

    def broken(payload: bytes) -> list[object]:
        if b"boom" in payload:
            raise IndexError("a decoder bug")
        return real(payload)

    def with_bug(sensor: Sensor) -> Sensor:  # its DNS decoder (compiled or pure) made faulty
        sensor._decode = sensor._decode._replace(decode_dns=broken)
        return sensor

    real = Sensor(matcher, "t")._decode.decode_dns
    bad = q.replace(b"\x02ds\x09kaspersky", b"\x02ds\x09kasp\x04boom")
    sensor = with_bug(Sensor(matcher, "t"))
    with caplog.at_level("ERROR", logger="kaspwatch.sensor"):
        assert sensor.process_frame(1, 1, bad) == []
    assert [e.kind for e in sensor.process_frame(2, 1, q)] == ["dns_query"]
    assert sensor.stats.errors_by_layer == {"bug": 1}
    assert "decoder bug on packet 1 (IndexError at" in caplog.text
    assert "boom" not in caplog.text
    with pytest.raises(IndexError):
        with_bug(Sensor(matcher, "t", strict=True)).process_frame(1, 1, bad)


def test_backed_by_says_what_ties_a_name_to_its_destination(matcher) -> None:  # type: ignore[no-untyped-def]
    from scapy.layers.dns import DNS, DNSQR, DNSRR

    hello = first_frame(str(SAMPLE), lambda d: b"s01\x2eupd" in d or b"s01.upd" in d)
    sensor = Sensor(matcher, "t")

    def backing(frame: bytes) -> list[tuple[str, str, str]]:
        return [(e.kind, e.name, e.extra["backed_by"]) for e in sensor.process_frame(5, 1, frame)]

    sni = ("tls_sni", "s01.upd.kaspersky.com")
    # a name no DNS answer tied to the address: what a VPN's decoy SNI looks like
    assert backing(hello) == [(*sni, "none")]
    assert backing(readdress(hello, dst="77.74.177.9")) == [(*sni, "prefix")]
    answer = bytes(
        Ether()
        / IP(src="10.77.0.53", dst="10.77.0.2")
        / UDP(sport=53, dport=40000)
        / DNS(
            id=7, qr=1, rd=1, ra=1,
            qd=DNSQR(qname="s01.upd.kaspersky.com"),
            an=DNSRR(rrname="s01.upd.kaspersky.com", rdata="10.77.0.1", ttl=300),
        )
    )  # fmt: skip
    assert backing(answer) == [("dns_answer", "s01.upd.kaspersky.com", "dns")]
    assert backing(hello) == [(*sni, "dns")]
    # the answer went to one client; another client's connection is backed too (an edge
    # sensor sees the resolver's upstream answers, not each client's)
    assert backing(readdress(hello, src="10.77.0.9")) == [(*sni, "dns")]
    # a different name to the same address is not
    assert sensor.flows.attributed(bytes([10, 77, 0, 1]), "ds.kaspersky.com", 5) is False
