"""Peer sensors' logs as sources (Suricata EVE, Zeek), on their real output.

``tests/peer-output/`` holds what Suricata 8.0.6 wrote for every corpus capture and the
sample (DNS v3 and v2 formats) and Zeek's own TSV test baselines (MANIFEST.md there).
The EVE path must give the names the capture path gives, kind by kind, on every capture;
where the two sensors see differently the difference is listed below with its reason.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import logging
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from kaspwatch.bus import open_reader
from kaspwatch.cli import main
from sensor.peers import MAX_WARNINGS, MergedPeers, PeerSource, open_peer, open_peers
from sensor.peers.follow import Follower
from sensor.pipeline import Sensor
from sensor.rules.match import Matcher
from tests import cliprocs
from tests.kafkautil import create_topics, producer, read_topic
from tests.testenv import CORPUS, SAMPLE

PEERS = Path(__file__).parent / "peer-output"
EVE_DIRS = ("suricata-8.0.6", "suricata-8.0.6-dns-v2")
EVE_FILES = sorted(f"{d}/{p.name}" for d in EVE_DIRS for p in (PEERS / d).glob("*.eve.json"))
ZEEK_FILES = sorted(str(p.relative_to(PEERS / "zeek")) for p in (PEERS / "zeek").glob("*/*.log"))

# (capture, kind) -> (names only the capture path has, names only EVE has), and why.
# Each is a place Suricata's protocol detection and kaspwatch's differ; none is a name
# one of them reads differently. A listed difference that goes away fails the test.
DIFFERENCES: dict[tuple[str, str], tuple[set[str], set[str]]] = {
    # LLMNR (UDP 5355) and mDNS (5353): kaspwatch reads them as DNS (the corpus's truth
    # counts them as DNS too); Suricata's DNS parser takes port 53 only
    ("suricata-verify_llmnr-udp_input.pcap", "dns_query"): ({"hs2011"}, set()),
    ("suricata-verify_llmnr-udp_input.pcap", "dns_answer"): ({"hs2011"}, set()),
    ("zeek_mdns.pcap", "dns_query"): (
        {
            "4.c.d.4.1.e.e.f.f.f.6.d.c.3.8.8.5.3.2.8.c.3.0.c.e.9.2.4.2.5.d.f.ip6.arpa",
            "7.2.0.10.in-addr.arpa",
            "_ipp._tcp.local",
            "_ipps._tcp.local",
            "f.2.8.f.3.6.5.1.6.c.b.5.8.6.9.5.5.3.2.8.c.3.0.c.e.9.2.4.2.5.d.f.ip6.arpa",
            "johanna-qemu-virtual-machine.local",
        },
        set(),
    ),
    ("zeek_wikipedia.pcap", "dns_query"): (
        {"brwc0cb383d1f42", "gemini._sftp-ssh._tcp.local", "gomez._sftp-ssh._tcp.local"},
        set(),
    ),
    # DNS on port 8053: kaspwatch's strict guess finds it, Suricata does not look there
    ("tcpdump_dns_udp_8053.pcap", "dns_query"): ({"www.tcpdump.org"}, set()),
    ("tcpdump_dns_udp_8053.pcap", "dns_answer"): ({"www.tcpdump.org"}, set()),
    # Teredo (UDP 3797/32900) and GTP-U with IP fragments: kaspwatch decodes the inner
    # HTTP, Suricata with its default configuration does not
    ("zeek_Teredo.pcap", "http_host"): ({"ipv6.google.com"}, set()),
    ("zeek_gtp1_gn_normal_incl_fragmentation.pcap", "http_host"): (
        {"o-o.preferred.telekomrs-beg1.v2.lscache8.c.youtube.com"},
        set(),
    ),
    # QUIC on port 4433: kaspwatch recognises an Initial on any port, Suricata's QUIC
    # parser takes 443 unless configured
    ("zeek_chromium-dpd-custom-port-4433.pcap", "quic_sni"): ({"api.cirrus-ci.com"}, set()),
    # Google QUIC (Q043-era, "cyu"): Suricata reads its SNI; kaspwatch reads IETF QUIC
    # only (the corpus README: gQUIC is out of scope)
    ("suricata-verify_quic-cyu_input.pcap", "quic_sni"): (set(), {"accounts.google.com"}),
    # "CONNECT /HTTP/1.1" with no HTTP version: Suricata takes the request line (url
    # "/HTTP/1.1"), kept as an observation (not a host name); kaspwatch reads HTTP/1.x only
    ("zeek_methods.pcap", "http_connect"): (set(), {"/http/1.1"}),
    # AYIYA (UDP 5072): Suricata has no decoder for it, so logs the outer flow only
    ("kaspwatch_ayiya.pcap", "dns_query"): ({"ayiya-dns.example.com"}, set()),
    ("kaspwatch_ayiya.pcap", "http_host"): ({"ayiya-http.example.net"}, set()),
    ("kaspwatch_ayiya.pcap", "tls_sni"): ({"ayiya4-tls.example.org"}, set()),
}


# captures Suricata wrote no EVE line for (no event at all), and why kaspwatch differs
NO_EVE = {
    # the IPv4 total length is shorter than the UDP datagram: Suricata drops the packet as
    # invalid; kaspwatch reads the DNS within the bytes the UDP header claims
    "tcpdump_ipv4_invalid_total_length.pcap",
    # Linux NFLOG link type (239): Suricata 8's pcap reader does not take it
    "tcpdump_nflog.pcap",
    # a pcap header and no packet: nothing for anyone
    "zeek_empty.pcap",
    # DNS in Geneve in VXLAN, cut short: Suricata does not log the inner DNS
    "zeek_geneve-vxlan-dns-truncated.pcap",
    # link types Suricata 8's pcap reader refuses ("pcap file reader thread failed to
    # initialize"): 802.11 (105), radiotap (127), PPP in HDLC framing (50), and a pcapng
    # whose interfaces differ in link type
    "kaspwatch_80211.pcap",
    "kaspwatch_radiotap.pcap",
    "kaspwatch_ppp-hdlc.pcap",
    "kaspwatch_multi-interface.pcapng",
    # offload super-packets (IPv4 total length 0, an IPv6 jumbogram): Suricata drops them
    # as invalid and writes nothing
    "kaspwatch_tso.pcap",
}
CAPTURES = [*sorted(p.name for p in CORPUS.glob("*.pcap*")), "sample.pcap"]


def test_captures_without_eve_are_the_known_ones() -> None:
    """Every corpus capture has EVE in both formats but the ones listed (an unlisted gap,
    or a listed one that gets its EVE, fails)."""
    for version in EVE_DIRS:
        missing = {c for c in CAPTURES if not (PEERS / version / f"{c}.eve.json").exists()}
        assert missing == NO_EVE, version


def _scan(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> tuple[int, list[dict[str, Any]], str]:
    rc = main(["scan", "--observations", *argv])
    out, err = capsys.readouterr()
    return rc, [json.loads(line) for line in out.splitlines()], err


def _per_kind(events: list[dict[str, Any]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for e in events:
        out.setdefault(e["kind"], set()).add(e["name"])
    return out


def _hits(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Everything a hit says but its packet time and id (EVE logs a flow at its start and
    the reply in its own record: the same names, addresses and verdicts)."""
    return sorted(
        (
            e["kind"],
            e["name"],
            e["src_ip"],
            e["src_port"],
            e["dst_ip"],
            e["dst_port"],
            e["transport"],
            e["indicator"]["id"],
            e.get("query"),
            tuple(e.get("answers", ())),
            e.get("attributed_by"),
            e.get("allowlisted"),
            e.get("resolver_bypass"),
        )
        for e in events
        if e["indicator"] is not None
    )


def _read(source: PeerSource | MergedPeers, sensor: Sensor) -> list[dict[str, Any]]:
    return [e.to_dict() for rec in source if rec is not None for e in sensor.process_record(rec)]


@pytest.mark.parametrize("name", EVE_FILES)
def test_every_eve_file_reads_whole(name: str, matcher: Matcher) -> None:
    """Every line of every real EVE file is read: no bad line, no exception."""
    [source] = open_peer(str(PEERS / name), "eve")
    events = _read(source, Sensor(matcher, "t", observations=True))
    lines = (PEERS / name).read_text().count("\n")
    assert source.lines == lines and source.bad == 0, source.summary()
    assert all(e["source"] == "suricata-eve" for e in events)


@pytest.mark.parametrize("version", EVE_DIRS)
@pytest.mark.parametrize("capture", [c for c in CAPTURES if c not in NO_EVE])
def test_eve_gives_the_capture_paths_names_per_kind(
    corpus: Path,
    capture: str,
    version: str,
    capsys: pytest.CaptureFixture[str],
    event_schema: dict[str, object],
) -> None:
    """The EVE Suricata wrote for a capture and the capture itself, both through
    ``kaspwatch scan --observations``: every name, kind by kind (only the sample holds
    Kaspersky names, so matches alone would prove little), and the same hits."""
    path = SAMPLE if capture == "sample.pcap" else corpus / capture
    eve = PEERS / version / f"{capture}.eve.json"
    _, from_capture, _ = _scan([str(path)], capsys)  # a cut-off capture exits 2, keeps names
    rc, from_eve, err = _scan(["--eve", str(eve)], capsys)
    assert rc == 0, err
    cap, peer = _per_kind(from_capture), _per_kind(from_eve)
    for kind in sorted(set(cap) | set(peer) | {"dns_query", "dns_answer"}):
        only_cap = cap.get(kind, set()) - peer.get(kind, set())
        only_eve = peer.get(kind, set()) - cap.get(kind, set())
        assert (only_cap, only_eve) == DIFFERENCES.get((capture, kind), (set(), set())), kind
    assert _hits(from_eve) == _hits(from_capture)
    for e in from_eve:
        jsonschema.validate(e, event_schema)
        assert e["source"] == "suricata-eve"
    assert all("source" not in e for e in from_capture)


def test_eve_sample_holds_the_kaspersky_verdicts(capsys: pytest.CaptureFixture[str]) -> None:
    """The hits the comparison pins are real: a CNAME chain into Kaspersky, IP flows
    attributed by DNS, both DNS formats."""
    for version in EVE_DIRS:
        rc, events, _ = _scan(["--eve", str(PEERS / version / "sample.pcap.eve.json")], capsys)
        assert rc == 0
        chained = [e for e in events if e.get("query") == "av-updates.example.net"]
        assert [e["name"] for e in chained] == ["dnl-11.geo.kaspersky.com"]
        assert chained[0]["host"] == "10.77.0.2"  # v2 logs the reply client->server: turned
        assert any(e.get("attributed_by") == "dns" for e in events)


def test_eve_allowlist_applies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    allow = tmp_path / "allow.yaml"
    allow.write_text(
        "schema: kaspwatch-allowlist/1\nentries:\n  - id: lab\n    hosts: [10.77.0.0/24]\n"
        "    reason: lab\n"
    )
    eve = PEERS / "suricata-8.0.6" / "sample.pcap.eve.json"
    rc, events, _ = _scan(["--allowlist", str(allow), "--eve", str(eve)], capsys)
    _, from_capture, _ = _scan(["--allowlist", str(allow), str(SAMPLE)], capsys)
    assert rc == 0 and any(e.get("allowlisted") == "lab" for e in events)
    assert _hits(events) == _hits(from_capture)


def test_fileinfo_and_dhcp_are_read_and_give_no_hit(matcher: Matcher) -> None:
    """The contract has no place for a file's magic yet, and DHCP is identity (see
    tests/test_peer_identity.py): their lines are read (no bad line) and give no event;
    the names around them still do."""
    [source] = open_peer(str(PEERS / "suricata-8.0.6" / "dhcp-workstation.pcap.eve.json"), "eve")
    events = _read(source, Sensor(matcher, "t"))
    assert source.bad == 0
    assert {e["kind"] for e in events} == {"dns_query", "dns_answer"}


def test_bad_eve_lines_are_counted_and_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    good = (PEERS / "suricata-8.0.6" / "sample.pcap.eve.json").read_text().splitlines()
    bad = [
        "{not json",
        "[1, 2]",
        '{"event_type": "dns", "timestamp": "yesterday", "src_ip": "10.0.0.1", "src_port": 1,'
        ' "dest_ip": "10.0.0.2", "dest_port": 53, "proto": "UDP", "dns": {"type": "query",'
        ' "rrname": "a.example"}}',
        '{"event_type": "tls", "timestamp": "2026-01-01T00:00:00.000000+0000", "src_ip":'
        ' "10.0.0.300", "src_port": 1, "dest_ip": "10.0.0.2", "dest_port": 443, "proto":'
        ' "TCP", "tls": {"sni": "a.example"}}',
    ] + ["garbage"] * (MAX_WARNINGS + 5)
    lines = good[:3] + bad + good[3:]
    path = tmp_path / "eve.json"
    path.write_text("\n".join(lines) + "\n")
    caplog.set_level(logging.WARNING, logger="kaspwatch")
    rc, events, _err = _scan(["--eve", str(path)], capsys)
    assert rc == 0  # never fatal
    named = [r.getMessage() for r in caplog.records if f"{path}:" in r.getMessage()]
    assert named[0].startswith(f"{path}:4: not JSON")
    assert named[1].startswith(f"{path}:5: not a JSON object")
    assert "bad timestamp" in named[2] and "is not an address" in named[3]
    assert sum("line skipped" in m for m in named) == MAX_WARNINGS  # then only counted
    assert any(f"{len(bad)} bad lines skipped (first at {path}:4)" in m for m in named)
    want = _scan(["--eve", str(PEERS / "suricata-8.0.6" / "sample.pcap.eve.json")], capsys)[1]
    assert events == want  # nothing good lost


def test_peer_counters_are_metrics(tmp_path: Path, matcher: Matcher) -> None:
    from prometheus_client import CollectorRegistry

    from sensor.health import register_sensor
    from sensor.publish import PublishStats

    path = tmp_path / "eve.json"
    sample = (PEERS / "suricata-8.0.6" / "sample.pcap.eve.json").read_text()
    path.write_text("nonsense\n" + sample + "{}\n")
    sensor = Sensor(matcher, "t")
    sources = open_peers([("eve", str(path))])
    registry = CollectorRegistry()
    register_sensor(registry, sensor, PublishStats(), None, list(sources))
    for source in sources:
        _read(source, sensor)
    assert registry.get_sample_value("kaspwatch_sensor_peer_bad_lines_total") == 2
    assert registry.get_sample_value("kaspwatch_sensor_peer_records_total") == sensor.stats.records
    [source] = sources
    assert sensor.stats.records == source.stats.packets > 0  # every record reached the sensor


def test_missing_file_is_one_error_and_the_others_are_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    eve = PEERS / "suricata-8.0.6" / "sample.pcap.eve.json"
    rc, events, err = _scan(["--eve", str(tmp_path / "nope.json"), str(eve)], capsys)
    assert rc == 2
    assert err.strip().splitlines() == [f"kaspwatch: error: {tmp_path / 'nope.json'}: no such file"]
    assert events and "Traceback" not in err
    rc, _, err = _scan(["--zeek", str(tmp_path / "nope")], capsys)
    assert rc == 2 and "nope: no such file" in err
    rc, _, err = _scan([], capsys)
    assert rc == 2 and "give capture files, --eve or --zeek" in err


def test_gzip_and_stdin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = (PEERS / "suricata-8.0.6-dns-v2" / "sample.pcap.eve.json").read_bytes()
    gz = tmp_path / "eve.json.gz"
    gz.write_bytes(gzip.compress(raw))
    want = _scan(["--eve", str(PEERS / "suricata-8.0.6-dns-v2" / "sample.pcap.eve.json")], capsys)
    assert _scan(["--eve", str(gz)], capsys)[1] == want[1]
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(raw)))
    assert _scan(["--eve", "-"], capsys)[1] == want[1]


# --- Zeek -------------------------------------------------------------------------------


def _data_lines(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line and not line.startswith("#"))


@pytest.mark.parametrize("name", ZEEK_FILES)
def test_every_zeek_baseline_reads(name: str, matcher: Matcher) -> None:
    """Every real Zeek TSV baseline reads without an exception. A file with a ``#fields``
    header has no bad line; the few that are ``zeek-cut`` output (a plain header line,
    no ``#fields``) have every data line counted bad, none silently taken."""
    path = PEERS / "zeek" / name
    sources = open_peer(str(path), "zeek")
    sensor = Sensor(matcher, "t", observations=True)
    events = [e for s in sources for e in _read(s, sensor)]
    [source] = sources
    if "#fields" in path.read_text():
        assert source.bad == 0, source.summary()
    else:
        assert source.bad == _data_lines(path) and not events
    assert all(e["source"] == "zeek" for e in events)


def test_zeek_baselines_give_names_of_every_kind(matcher: Matcher) -> None:
    sensor = Sensor(matcher, "t", observations=True)
    kinds: dict[str, set[str]] = {}
    for name in ZEEK_FILES:
        for source in open_peer(str(PEERS / "zeek" / name), "zeek"):
            for e in _read(source, sensor):
                kinds.setdefault(e["kind"], set()).add(e["name"])
    assert {"dns_query", "dns_answer", "tls_sni", "quic_sni", "http_host", "http_connect"} <= set(
        kinds
    )
    assert "www.google.de" in kinds["quic_sni"] and "bro.org" in kinds["http_host"]


def tsv_to_json(path: Path) -> str:
    """Zeek's JSON writer's output for a TSV log: one object per line, field names from
    ``#fields``, numbers as numbers, T/F as booleans, containers as arrays, unset fields
    left out (as ``LogAscii::use_json=T`` writes them)."""
    fields: list[str] = []
    types: list[str] = []
    out = []
    for line in path.read_text().splitlines():
        if line.startswith("#fields\t"):
            fields = line.split("\t")[1:]
        elif line.startswith("#types\t"):
            types = line.split("\t")[1:]
        elif line and not line.startswith("#"):
            doc: dict[str, Any] = {}
            for key, typ, value in zip(fields, types, line.split("\t"), strict=True):
                if value == "-":
                    continue
                if typ.startswith(("set[", "vector[")):
                    doc[key] = [] if value == "(empty)" else value.split(",")
                elif value == "(empty)":
                    doc[key] = ""
                elif typ in ("count", "int", "port"):
                    doc[key] = int(value)
                elif typ in ("double", "interval", "time") and not value.startswith("X"):
                    doc[key] = float(value)
                elif typ == "bool":
                    doc[key] = value == "T"
                else:
                    doc[key] = value
            out.append(json.dumps(doc))
    return "\n".join(out) + "\n"


def test_zeek_json_reads_as_the_tsv_it_was_converted_from(tmp_path: Path) -> None:
    """No real Zeek JSON exists here (Zeek is not installable): each real TSV baseline
    with a header is written as Zeek's JSON (file name kept: dns.log...) and must give the
    same records; gzip'd too, and nested ``id`` objects as some exporters write them."""
    checked = 0
    for name in ZEEK_FILES:
        tsv = PEERS / "zeek" / name
        if "#fields" not in tsv.read_text():
            continue
        folder = tmp_path / name.replace("/", "_")
        folder.mkdir()
        as_json = folder / tsv.name
        as_json.write_text(tsv_to_json(tsv))
        want = _records(tsv)
        got = _records(as_json)
        assert got == want, name
        gz = folder / f"{tsv.name}.gz"
        gz.write_bytes(gzip.compress(as_json.read_bytes()))
        assert _records(gz) == want
        nested = folder / "nested" / tsv.name  # the log's name comes from the file name
        nested.parent.mkdir()
        nested.write_text(
            "".join(json.dumps(_nest(json.loads(line))) + "\n" for line in as_json.open())
        )
        assert _records(nested) == want
        checked += 1
    assert checked > 100


def _records(path: Path) -> list[object]:
    return [r for source in open_peer(str(path), "zeek") for r in source]


def _nest(doc: dict[str, Any]) -> dict[str, Any]:
    ids = {k[3:]: doc.pop(k) for k in list(doc) if k.startswith("id.")}
    return {**doc, "id": ids}


ZEEK_DNS = """#separator \\x09
#set_separator\t,
#empty_field\t(empty)
#unset_field\t-
#path\tdns
#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\tquery\tqtype_name\trcode\tanswers\tTTLs
#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tstring\tstring\tcount\tvector[string]\tvector[interval]
1764000000.100000\tC1\t10.1.0.7\t40000\t10.1.0.53\t53\tudp\tav.example.net\tA\t0\tcdn.example.net,dnl-07.geo.kaspersky.com,198.51.100.7\t30.0,30.0,120.0
1764000000.200000\tC2\t10.1.0.7\t40001\t10.1.0.53\t53\tudp\tunanswered.example\tA\t-\t(empty)\t(empty)
"""
ZEEK_CONN = """#separator \\x09
#set_separator\t,
#empty_field\t(empty)
#unset_field\t-
#path\tconn
#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto
#types\ttime\tstring\taddr\tport\taddr\tport\tenum
1764000001.000000\tC3\t10.1.0.7\t50000\t198.51.100.7\t443\ttcp
1764000002.000000\tC4\t10.1.0.7\t50001\t203.0.113.9\t443\ttcp
"""


def test_zeek_folder_cname_chain_and_dns_attribution(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], event_schema: dict[str, object]
) -> None:
    """A Zeek folder: dns.log is read before conn.log, so an innocent name whose answer
    chain leads into Kaspersky is a dns_answer hit (``query`` = the asked name) and the
    later flow to its address an ``ip_flow`` hit attributed by DNS, as on the wire."""
    (tmp_path / "conn.log").write_text(ZEEK_CONN)
    (tmp_path / "dns.log").write_text(ZEEK_DNS)
    (tmp_path / "weird.log").write_text("#fields\tts\n1\n")  # not one this reads: ignored
    rc, events, err = _scan(["--zeek", str(tmp_path)], capsys)
    assert rc == 0, err
    hits = {(e["kind"], e["name"], e.get("query"), e["host"]) for e in events if e["indicator"]}
    assert hits == {
        ("dns_answer", "dnl-07.geo.kaspersky.com", "av.example.net", "10.1.0.7"),
        ("ip_flow", "dnl-07.geo.kaspersky.com", None, "10.1.0.7"),
    }
    [answer] = [e for e in events if e["kind"] == "dns_answer" and e["indicator"]]
    assert answer["src_ip"] == "10.1.0.53" and answer["answers"] == ["198.51.100.7"]
    # the unanswered query has no answer event
    assert {e["name"] for e in events if e["kind"] == "dns_answer"} == {"dnl-07.geo.kaspersky.com"}
    assert {e["name"] for e in events if e["kind"] == "dns_query"} == {
        "av.example.net",
        "unanswered.example",
    }
    for e in events:
        jsonschema.validate(e, event_schema)
        assert e["source"] == "zeek"


# --- tail -F ------------------------------------------------------------------------------


def test_follow_reads_across_rotation_and_truncation(tmp_path: Path) -> None:
    """The injected ``sleep`` plays the writer and logrotate between looks: a line written
    in two parts, a rename with a last line still written to the old file, a new file,
    then copytruncate. Every line is read once, in order, none half."""
    path = tmp_path / "eve.json"
    path.write_text("a\nb\n")
    old = tmp_path / "eve.json.1"

    def append(where: Path, text: str) -> None:
        with where.open("a") as f:
            f.write(text)

    def rotate() -> None:  # logrotate renames; the writer logs once more, then reopens
        path.rename(old)
        append(old, "e\n")
        path.write_text("f\ng\n")

    steps = [
        lambda: append(path, "c\nd-part"),
        lambda: append(path, "-rest\n"),
        rotate,
        lambda: path.write_text(""),  # copytruncate
        lambda: path.write_text("h\n"),
    ]
    follower = Follower(
        str(path), poll_s=7.0, sleep=lambda s: steps.pop(0)() if steps else follower.stop()
    )
    lines = [item[2].decode() for item in follower if item is not None]
    assert lines == ["a\n", "b\n", "c\n", "d-part-rest\n", "e\n", "f\n", "g\n", "h\n"]
    assert follower.rotations == 1 and follower.truncations == 1


def test_follow_source_feeds_the_sensor(tmp_path: Path, matcher: Matcher) -> None:
    """``--follow`` on a growing EVE file: the lines appended while the sensor waits are
    matched like any others; the source ends when stopped."""
    sample = (PEERS / "suricata-8.0.6" / "sample.pcap.eve.json").read_text().splitlines(True)
    path = tmp_path / "eve.json"
    path.write_text("".join(sample[:5]))
    rest = iter(sample[5:])
    source: PeerSource | None = None

    def sleep(_s: float) -> None:
        chunk = [line for _, line in zip(range(7), rest, strict=False)]
        if chunk:
            with path.open("a") as f:
                f.write("".join(chunk))
        elif source is not None:
            source.stop()

    [source] = open_peer(str(path), "eve", follow=True, sleep=sleep)
    assert source.live
    events = _read(source, Sensor(matcher, "t"))
    [whole] = open_peer(str(PEERS / "suricata-8.0.6" / "sample.pcap.eve.json"), "eve")
    assert events == _read(whole, Sensor(matcher, "t")) and events


def test_several_followed_logs_are_read_together(tmp_path: Path, matcher: Matcher) -> None:
    """``sense --eve a.json --zeek dns.log --follow``: the publish loop reads its sources
    one after the other and a followed one never ends, so they are merged into one that
    reads each as it grows and waits only when all are idle."""
    eve = tmp_path / "eve.json"
    eve.write_text("")
    dns = tmp_path / "dns.log"
    dns.write_text(ZEEK_DNS)
    sample = (PEERS / "suricata-8.0.6" / "sample.pcap.eve.json").read_text()
    waits: list[float] = []
    merged: list[MergedPeers] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 1:
            eve.write_text(sample)  # the EVE file grows while dns.log has been read
        else:
            merged[0].stop()

    merged += open_peers([("eve", str(eve)), ("zeek", str(dns))], True, poll_s=3.0, sleep=sleep)
    [source] = merged
    events = _read(source, Sensor(matcher, "t"))
    assert {e["source"] for e in events} == {"zeek", "suricata-eve"}
    assert waits == [3.0, 3.0]  # one wait a round in which nothing was ready, never one a file
    rc = main(["sense", "--pcap", str(SAMPLE), "--eve", str(eve), "--bus", "memory://x"])
    assert rc == 2


def test_follow_a_pipe_hands_on_lines_as_they_come() -> None:
    """``--follow -``: what is in the pipe is handed on, then ``None`` (publish now)
    while the writer is quiet, instead of waiting for a full batch; end of input ends it."""
    from sensor.peers.follow import PipeFollower

    read_end, write_end = os.pipe()
    try:
        os.write(write_end, b"a\nb\nc-part")
        pipe = iter(PipeFollower(read_end, poll_s=0.0))
        assert [next(pipe), next(pipe), next(pipe)] == [
            ("stdin", 1, b"a\n"),
            ("stdin", 2, b"b\n"),
            None,
        ]
        os.write(write_end, b"-rest\nd")
        os.close(write_end)
        assert list(pipe) == [("stdin", 3, b"c-part-rest\n"), ("stdin", 4, b"d")]
    finally:
        os.close(read_end)


def test_sense_publishes_eve_events(tmp_path: Path) -> None:
    """``sense --eve`` publishes the same events as ``scan --eve`` prints, on the hits topic."""
    bus = f"memory://peers-{uuid.uuid4().hex[:8]}"
    eve = PEERS / "suricata-8.0.6" / "sample.pcap.eve.json"
    argv = ["sense", "--eve", str(eve), "--bus", bus, "--sensor", "t"]
    rc = main([*argv, "--spool-dir", str(tmp_path / "spool"), "--heartbeat-interval", "60"])
    assert rc == 0

    async def read() -> list[bytes]:
        records, _ = await open_reader(bus).read("kaspwatch.hits.v1", {})
        return [r.value for r in records]

    published = [json.loads(v) for v in asyncio.run(read())]
    assert published and all(e["source"] == "suricata-eve" for e in published)
    assert len([e for e in published if e["indicator"]]) == len(published)


# --- Kafka --------------------------------------------------------------------------------


@pytest.mark.kafka
def test_eve_from_kafka_topic(
    kafka_bootstrap: str, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """EVE shipped to Kafka (one record a line, as Suricata's and Filebeat's Kafka outputs
    do; one record holding two lines too): ``scan --eve kafka://HOST:PORT/TOPIC`` reads the
    topic to its end and gives what the file gives; a bad record is named by partition and
    offset."""
    eve = PEERS / "suricata-8.0.6-dns-v2" / "sample.pcap.eve.json"
    lines = eve.read_bytes().splitlines()
    topic = f"eve-{uuid.uuid4().hex[:8]}"

    async def ship() -> None:
        await create_topics(kafka_bootstrap, (topic, 1))  # one partition: EVE's order kept
        async with producer(kafka_bootstrap) as prod:
            for line in lines[:-2]:
                await prod.send_and_wait(topic, line)
            await prod.send_and_wait(topic, b"{broken")
            await prod.send_and_wait(topic, lines[-2] + b"\n" + lines[-1])

    asyncio.run(ship())
    rc, got, err = _scan(["--eve", f"kafka://{kafka_bootstrap}/{topic}"], capsys)
    assert rc == 0, err
    _, want, _ = _scan(["--eve", str(eve)], capsys)
    assert got == want
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert f"{topic}[0]:{len(lines) - 2}: not JSON" in logged
    assert "1 bad lines skipped" in logged
    rc, _, err = _scan(["--eve", f"kafka://{kafka_bootstrap}"], capsys)
    assert rc == 2 and "kafka://HOST:PORT[,HOST:PORT]/TOPIC" in err


@pytest.mark.kafka
def test_kafka_follow_resumes_from_the_groups_commits(kafka_bootstrap: str) -> None:
    """``sense --eve kafka://…`` follows the topic in its group: stopped and started
    again, it goes on after what it had handed to the sensor, nothing read twice."""
    from sensor.peers.kafka import KafkaLines

    topic = f"eve-{uuid.uuid4().hex[:8]}"
    url, group = f"kafka://{kafka_bootstrap}/{topic}", f"kaspwatch-peers-{topic}"

    async def ship(values: list[bytes]) -> None:
        async with producer(kafka_bootstrap) as prod:
            for v in values:
                await prod.send_and_wait(topic, v)

    def follow(want: int) -> list[bytes]:
        lines = KafkaLines(url, follow=True, group=group, poll_s=0.2)
        got: list[bytes] = []
        for item in lines:
            if item is not None:
                got.append(item[2])
            elif len(got) >= want:
                lines.stop()
        return got

    asyncio.run(create_topics(kafka_bootstrap, (topic, 1)))
    asyncio.run(ship([b"one", b"two"]))
    assert follow(2) == [b"one", b"two"]
    asyncio.run(ship([b"three"]))
    assert follow(1) == [b"three"]


procs = cliprocs.procs  # fixture


@pytest.mark.kafka
async def test_sense_follows_eve_on_kafka_and_publishes_hits(
    kafka_bootstrap: str,
    procs: cliprocs.Procs,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The common deployment end to end: Suricata's EVE on a Kafka topic, ``kaspwatch
    sense --eve kafka://…`` as a process, hits on the hits topic. Lines produced while the
    sensor runs are read too (a topic is followed, without --follow), and SIGTERM ends it
    cleanly."""
    eve = PEERS / "suricata-8.0.6" / "sample.pcap.eve.json"
    lines = eve.read_bytes().splitlines()
    tag = uuid.uuid4().hex[:8]
    eve_topic, hits_topic = f"eve-{tag}", f"hits-{tag}"
    await create_topics(kafka_bootstrap, (eve_topic, 1), (hits_topic, 1))

    async def ship(values: list[bytes]) -> None:
        async with producer(kafka_bootstrap) as prod:
            for v in values:
                await prod.send_and_wait(eve_topic, v)

    assert main(["scan", "--sensor", "peer-1", "--eve", str(eve)]) == 0
    expected = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    half = len(lines) // 2
    await ship(lines[:half])
    cmd = [
        str(Path(sys.executable).parent / "kaspwatch"),
        "sense", "--eve", f"kafka://{kafka_bootstrap}/{eve_topic}",
        "--bus", f"kafka://{kafka_bootstrap}", "--topic", hits_topic, "--sensor", "peer-1",
        "--spool-dir", str(tmp_path / "spool"), "--heartbeat-interval", "60",
    ]  # fmt: skip
    sensor = procs.start("sense", cmd)
    first = await read_topic(kafka_bootstrap, hits_topic, 1, timeout=60)
    assert first, sensor.stderr()
    await ship(lines[half:])  # while the sensor runs
    got = await read_topic(kafka_bootstrap, hits_topic, len(expected), timeout=60)
    published = [json.loads(v) for _, v in got]
    assert sorted(e["event_id"] for e in published) == sorted(e["event_id"] for e in expected)
    assert all(e["source"] == "suricata-eve" and e["sensor"] == "peer-1" for e in published)
    assert procs.terminate(sensor) == 0, sensor.stderr()
