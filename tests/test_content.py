"""Content signals: updaters that name nothing are found by their request path, their
User-Agent and the magic of what they download; benign traffic never fires them, and the
capture prefilter and the pure reader agree on every conversation."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from kaspwatch.cli.scan import scan
from kaspwatch.event import KINDS
from sensor.pipeline import Sensor
from sensor.rules.indicators import PackError, load_pack
from sensor.rules.match import Matcher

REPO = Path(__file__).resolve().parent.parent
UA = "*" + "Kx3b9QmZpL0vT7yW2cR5nA8dF1gH4jS6kE9uI0oP3lM5zX7cV2bN4mQ8wE1rT"
CONTENT = ("http_request", "file_magic")


def conversation(
    request: bytes,
    answer: list[bytes],
    v6: bool = False,
    server: str = "198.51.100.7",
    sport: int = 80,
) -> list[Any]:
    """A TCP conversation: handshake, the request, the answer in the segments given."""
    if v6:
        cip, sip, net = "2001:db8::2", "2001:db8::7", IPv6
    else:
        cip, sip, net = "10.9.0.2", server, IP
    c = Ether() / net(src=cip, dst=sip)
    s = Ether() / net(src=sip, dst=cip)
    cseq, sseq = 1000, 5000
    pkts = [
        c / TCP(sport=40000, dport=sport, flags="S", seq=cseq - 1),
        s / TCP(sport=sport, dport=40000, flags="SA", seq=sseq - 1, ack=cseq),
        c / TCP(sport=40000, dport=sport, flags="A", seq=cseq, ack=sseq),
        c / TCP(sport=40000, dport=sport, flags="PA", seq=cseq, ack=sseq) / request,
    ]
    cseq += len(request)
    for part in answer:
        pkts.append(s / TCP(sport=sport, dport=40000, flags="PA", seq=sseq, ack=cseq) / part)
        sseq += len(part)
    pkts.append(s / TCP(sport=sport, dport=40000, flags="FA", seq=sseq, ack=cseq))
    return pkts


def updater_get(path: str = "/updaters/updater.xml.klz", host: str = "198.51.100.7") -> bytes:
    return f"GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: {UA}\r\n\r\n".encode()


def padded(n: int) -> bytes:
    return b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * n + b"\r\n\r\n"


HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 9000\r\n\r\n"


def events(tmp_path: Path, pkts: list[Any], prefilter: bool = True) -> list[dict[str, Any]]:
    path = tmp_path / "c.pcap"
    wrpcap(str(path), pkts)
    found = []
    for pre in (True, False):
        out = io.StringIO()
        _w, errors = scan([str(path)], Sensor(Matcher(load_pack()), "t"), "ndjson", out, pre)
        assert not errors
        found.append(sorted(out.getvalue().splitlines()))
    assert found[0] == found[1], "the prefilter changes what the sensor reports"
    return [json.loads(line) for line in found[0]]


def content(evs: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return sorted((e["kind"], e["indicator"]["id"], e["host"]) for e in evs if e["kind"] in CONTENT)


def test_updater_to_a_bare_address_head_and_body_in_separate_segments(tmp_path: Path) -> None:
    evs = events(tmp_path, conversation(updater_get(), [HEAD, b"KLZF" + bytes(1400)]))
    assert content(evs) == [
        ("file_magic", "kw-content-magic-klzf", "10.9.0.2"),
        ("http_request", "kw-content-update-updaters", "10.9.0.2"),
    ]
    (magic,) = [e for e in evs if e["kind"] == "file_magic"]
    assert magic["name"] == "198.51.100.7" and magic["magic"] == "KLZF"
    assert (magic["src_ip"], magic["dst_port"]) == ("10.9.0.2", 80)  # the request's flow
    assert magic["path"] == "/updaters/updater.xml.klz"
    assert all(e["kind"] in KINDS for e in evs)


@pytest.mark.parametrize(
    ("what", "answer"),
    [
        ("head and body in one segment", [HEAD + b"KLD2" + bytes(100)]),
        ("magic cut in two", [HEAD + b"KL", b"D2" + bytes(10)]),
        ("a 6 KiB head in one (offloaded) segment", [padded(6000), b"KLD2" + bytes(10)]),
        ("chunked", [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2000\r\nKLD2"]),
    ],
)
def test_magic_read_across_segment_boundaries(
    tmp_path: Path, what: str, answer: list[bytes]
) -> None:
    evs = events(tmp_path, conversation(updater_get("/index/u1313g.xml.klz"), answer, v6=True))
    assert ("file_magic", "kw-content-magic-kld2", "2001:db8::2") in content(evs), what


def test_opaque_user_agent_alone_is_the_weaker_signal(tmp_path: Path) -> None:
    evs = events(tmp_path, conversation(updater_get("/files/a.bin"), [HEAD, bytes(100)]))
    (hit,) = [e for e in evs if e["kind"] in CONTENT]
    assert hit["indicator"]["id"] == "kw-content-updater-agent"
    assert hit["indicator"]["confidence"] == "low" and hit["user_agent"] == UA


def test_diff_counts_only_after_an_updater_path(tmp_path: Path) -> None:
    plain = b"GET /files/patch HTTP/1.1\r\nHost: example.org\r\nUser-Agent: curl/8.0\r\n\r\n"
    assert content(events(tmp_path, conversation(plain, [HEAD, b"DIFF" + bytes(50)]))) == []
    path = updater_get("/diffs/bases/av/kdb/i386/kdb-i386-0607g.xml.dif", "mirror.example.net")
    evs = events(tmp_path, conversation(path, [HEAD, b"DIFF" + bytes(50)]))
    assert ("file_magic", "kw-content-magic-diff", "10.9.0.2") in content(evs)


def test_proxy_absolute_form_target_matches_whatever_the_host(tmp_path: Path) -> None:
    req = (
        b"GET http://203.0.113.9/bases/av/kdb/i386/base001.kdc HTTP/1.1\r\n"
        b"Host: 203.0.113.9\r\nUser-Agent: Mozilla/5.0\r\n\r\n"
    )
    evs = events(tmp_path, conversation(req, [HEAD, bytes(20)], sport=3128))
    assert content(evs) == [("http_request", "kw-content-update-files", "10.9.0.2")]


def test_what_the_prefilter_drops_is_not_read_by_either_reader(tmp_path: Path) -> None:
    """A head piece starting with another letter stays in C: the pure reader ignores it
    too (``events`` checks they agree), so the answer is not read."""
    evs = events(tmp_path, conversation(updater_get(), [HEAD[:10], HEAD[10:], b"KLZF"]))
    assert [k for k, _i, _h in content(evs)] == ["http_request"]


def test_a_head_past_8_kib_or_a_binary_first_segment_is_not_read(tmp_path: Path) -> None:
    evs = events(tmp_path, conversation(updater_get(), [padded(9000), b"KLZF" + bytes(10)]))
    assert [k for k, _i, _h in content(evs)] == ["http_request"]
    # an answer that does not start with a status line is not followed
    evs = events(tmp_path, conversation(updater_get(), [b"\x00\x01" + bytes(50), b"KLZF"]))
    assert [k for k, _i, _h in content(evs)] == ["http_request"]


def test_request_without_host_is_named_by_its_destination(tmp_path: Path) -> None:
    req = b"GET /index/u0607g.xml.klz HTTP/1.0\r\n\r\n"
    evs = events(tmp_path, conversation(req, [HEAD, b"KLZF" + bytes(10)], server="203.0.113.5"))
    assert {e["name"] for e in evs} == {"203.0.113.5"}
    assert len(content(evs)) == 2


def test_benign_requests_fire_no_content_signal(tmp_path: Path) -> None:
    benign = [
        b"GET /update/list.xml HTTP/1.1\r\nHost: a.example\r\nUser-Agent: Mozilla/5.0\r\n\r\n",
        b"GET /updates/ HTTP/1.1\r\nHost: a.example\r\nUser-Agent: Wget/1.21\r\n\r\n",
        b"GET /bases/index.html HTTP/1.1\r\nHost: a.example\r\nUser-Agent: @home\r\n\r\n",
        b"GET /index/page.xml HTTP/1.1\r\nHost: a.example\r\nUser-Agent: */*\r\n\r\n",
        b"GET /static/app.klz.js HTTP/1.1\r\nHost: a.example\r\nUser-Agent: curl/8\r\n\r\n",
    ]
    for req in benign:
        assert content(events(tmp_path, conversation(req, [HEAD, b"PK\x03\x04"]))) == [], req


def test_no_content_signal_on_the_corpus(corpus: Path) -> None:
    matcher = Matcher(load_pack())
    for path in sorted(corpus.glob("*.pcap*")):
        if path.name == "suricata-verify_bug-1450-04_tls_DER-incomplete-header.pcap":
            continue
        out = io.StringIO()
        scan([str(path)], Sensor(matcher, "t"), "ndjson", out, True)
        kinds = {json.loads(line)["kind"] for line in out.getvalue().splitlines()}
        assert not kinds & set(CONTENT), path.name


def test_generated_mix_updaters_found_and_benign_silent(tmp_path: Path) -> None:
    path = tmp_path / "mix.pcap"
    subprocess.run(
        [sys.executable, str(REPO / "bench" / "gen_mixed.py"), str(path), "--packets", "60000"],
        check=True,
        cwd=REPO,
        capture_output=True,
    )
    info = json.loads(Path(f"{path}.expected.json").read_text())
    out = io.StringIO()
    scan([str(path)], Sensor(Matcher(load_pack()), "t"), "ndjson", out, True)
    evs = [json.loads(line) for line in out.getvalue().splitlines()]
    requests = [e for e in evs if e["kind"] == "http_request"]
    magics = [e for e in evs if e["kind"] == "file_magic"]
    updaters = info["counts"]["updater_flow"]
    assert updaters > 0
    # every updater request and download found; nothing else (benign requests) fires
    assert len(requests) == updaters and len(magics) == updaters
    assert all(e["path"].endswith((".klz", ".dif")) for e in requests)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"pattern": "KLZ", "match": "magic"}, "4 printable ASCII"),
        ({"pattern": "(", "match": "path"}, "not a regex"),
        ({"pattern": ".*", "match": "path"}, "matches an empty"),
        ({"pattern": "/x", "match": "path", "where": ["dns"]}, "reads where"),
        ({"pattern": "/x", "match": "path", "with_path_signal": True}, "with_path_signal"),
    ],
)
def test_content_indicators_are_checked(tmp_path: Path, item: dict[str, Any], message: str) -> None:
    body = {
        "id": "site-x",
        "category": "update",
        "severity": "high",
        "confidence": "high",
        "sources": ["s"],
        "description": "d",
        **item,
    }
    pack = tmp_path / "p.yaml"
    pack.write_text(json.dumps({"schema": "kaspwatch-indicator-pack/1", "indicators": [body]}))
    with pytest.raises(PackError, match=message):
        load_pack(pack)
