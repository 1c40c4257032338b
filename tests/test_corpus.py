"""Decoders against public captures, with tshark's extraction as ground truth.

Every file of the corpus is scanned. Where kaspwatch does not yet see what tshark sees,
the gap is listed below with the issue that closes it; a listed gap that closes makes
the test fail, so the list only ever shrinks.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest

from kaspwatch.cli import main
from tests.testenv import CORPUS

# file -> why kaspwatch sees less than tshark today (the sensor issue closes each)
KNOWN_GAPS = {}
# file -> names kaspwatch rightly sees that tshark 4.0 does not (corpus README)
TSHARK_MISSES = {
    # tshark 4.0 does not treat the QUERY method as HTTP (corpus README)
    "zeek_query-method.pcap": {("http_host", "example.com", "10.0.0.1", "10.0.0.2")},
    # Frame 1 is an Initial of an unknown version (0x1a2a3a4a) answered by Version
    # Negotiation; frame 3 is the real v1 Initial with the same DCID. tshark carries frame
    # 1's packet number over, so its decryption of frame 3 fails; aioquic's own CryptoPair
    # decrypts frame 3 (packet number 0) and its ClientHello names localhost.
    "tcpdump_quic_vn.pcap": {("quic_sni", "localhost", "::1", "::1")},
    # Teredo on ports 3797/32900 is not decoded by tshark by default (corpus README)
    "zeek_Teredo.pcap": {
        (
            "http_host",
            "ipv6.google.com",
            "2001:0:4137:9e50:8000:f12a:b9c8:2815",
            "2001:4860:0:2001::68",
        )
    },
}
# files that must be refused with a clear message, never a traceback
UNREADABLE = {"suricata-verify_bug-1450-04_tls_DER-incomplete-header.pcap": "corrupt record"}

# A missing corpus must fail (through the ``corpus`` fixture), never collect zero cases and pass.
FILES = sorted(p.name for p in CORPUS.glob("*.pcap*")) or ["<corpus missing>"]


def truth(name: str) -> set[tuple[str, str, str, str]]:
    rows = set()
    path = CORPUS / "truth" / f"{name}.tsv"
    for line in path.read_text().splitlines() if path.exists() else []:
        _frame, src, dst, kind, host = line.split("\t")[:5]
        if host.startswith("<"):  # tshark's placeholder for an unparseable name
            continue
        host = host.lower().rstrip(".")
        if kind == "http_host":
            host = re.sub(r"^\[([^]]*)\](:\d+)?$|^([^:]*):\d+$", r"\1\3", host)
        rows.add((kind, host, src, dst))
    return rows


def scan(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, list[dict[str, object]]]:
    """In-process ``kaspwatch scan --observations`` (the CLI tests cover the subprocess path)."""
    rc = main(["scan", "--observations", str(path)])
    out, err = capsys.readouterr()
    return rc, err, [json.loads(line) for line in out.splitlines()]


@pytest.mark.parametrize("name", FILES)
def test_corpus_file_matches_tshark(
    corpus: Path, name: str, event_schema: dict[str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    rc, err, events = scan(corpus / name, capsys)
    if name in UNREADABLE:
        assert rc == 2
        assert name in err and UNREADABLE[name] in err
        return
    assert rc == 0, err
    for ev in events:
        jsonschema.validate(ev, event_schema)
    got = {(str(e["kind"]), str(e["name"]), str(e["src_ip"]), str(e["dst_ip"])) for e in events}
    want = truth(name)
    missing = want - got
    if name in KNOWN_GAPS:
        assert missing, f"{name}: gap '{KNOWN_GAPS[name]}' is closed; remove it from KNOWN_GAPS"
        return
    assert not missing, f"{name}: kaspwatch misses {sorted(missing)[:5]}"
    # DNS answers may add CNAME-chain names; beyond that nothing tshark did not see
    extra = {e for e in got - want if e[0] != "dns_answer"} - TSHARK_MISSES.get(name, set())
    assert not extra, f"{name}: names tshark did not see: {sorted(extra)[:5]}"


def test_every_manifest_file_is_tested(corpus: Path) -> None:
    listed = {
        line.split("\t")[0] for line in (corpus / "MANIFEST.tsv").read_text().splitlines()[1:]
    }
    assert listed and listed == set(FILES), sorted(listed ^ set(FILES))[:5]
