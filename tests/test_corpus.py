"""Decoders against every capture in the repository, with tshark's extraction as the truth.

Every file of ``tests/corpus`` (public traces of other tools, with stored truth) and of
``tests/captures`` (made for this project: by real tools in namespaces, or built where no
tool here makes the class) is scanned. The truth is made here and now by running
``tests/corpus/oracle.sh`` (tshark) on each file; a corpus file's stored truth must equal
it, so a file added with hand-made or stale truth fails. Per kind (dns_query, dns_answer,
tls_sni, http_host, quic_sni) kaspwatch's observations contain all of tshark's (kind, name,
src, dst), except where tshark is wrong: each case is listed below with why. No file tshark
reads may be refused. Where kaspwatch does not yet see what tshark sees, the gap is listed
with the issue that closes it; a listed gap that closes makes the test fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest

from kaspwatch.cli import main
from tests import capturegen
from tests.testenv import CORPUS, REPO

CAPTURES = REPO / "tests" / "captures"
ORACLE_KINDS = frozenset({"dns_query", "dns_answer", "tls_sni", "http_host", "quic_sni"})
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
    # Version Negotiation, then the client starts over in draft 29 with the same DCID
    # (tests/capturegen.py quic_vn): tshark keeps the keys of the connection's first (v1)
    # Initial, so it unmasks the draft-29 packet number wrongly (1699182255) and reads no
    # hello; the draft's own keys open it (tests/test_quic_drafts.py)
    "quic-version-negotiation.pcap": {
        ("quic_sni", "vn-from-v1.quic.test", "10.61.0.2", "10.61.0.1")
    },
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
# tshark options a file needs (the oracle's defaults otherwise): tshark finds DNS over TCP
# only on port 53 unless told, and reassembles out-of-order segments only when asked
TSHARK_OPTS = {
    "dns-tcp-5300-reordered.pcap": "-d tcp.port==5300,dns -o tcp.reassemble_out_of_order:TRUE",
    "dns-tcp-53-reordered.pcap": "-o tcp.reassemble_out_of_order:TRUE",
}
# files that must be refused with a clear message, never a traceback (tshark refuses them too)
UNREADABLE = {"suricata-verify_bug-1450-04_tls_DER-incomplete-header.pcap": "corrupt record"}


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.pcap*") if p.is_file())


# A missing corpus must fail (through the ``corpus`` fixture), never collect zero cases and pass.
FILES = [*_files(CORPUS), *_files(CAPTURES)] or [CORPUS / "<corpus missing>"]


def oracle(path: Path) -> tuple[int, list[str]]:
    """tshark's truth for ``path`` now: (tshark's exit status, the oracle's lines)."""
    if shutil.which("tshark") is None:
        pytest.fail("tshark not found: apt-get install tshark (.ci/system-packages.sh)")
    env = {**os.environ, "ORACLE_TSHARK_OPTS": TSHARK_OPTS.get(path.name, "")}
    proc = subprocess.run(
        ["bash", str(CORPUS / "oracle.sh"), str(path)],
        capture_output=True, text=True, timeout=120, check=False, env=env,
    )  # fmt: skip
    return proc.returncode, proc.stdout.splitlines()


def _host(kind: str, host: str) -> str:
    """tshark's text as kaspwatch names it: lowercase, no trailing dot; for an SNI or Host
    an IPv6 literal without brackets and no port (``sensor.decode.observed_name``)."""
    host = host.lower().rstrip(".")
    if kind in ("http_host", "tls_sni", "quic_sni"):
        host = re.sub(r"^\[([^]]*)\](:\d*)?$|^([^:\[\]]*):\d*$", r"\1\3", host).rstrip(".")
    return host


def truth(lines: list[str]) -> set[tuple[str, str, str, str]]:
    rows = set()
    for line in lines:
        _frame, src, dst, kind, host = line.split("\t")[:5]
        if host.startswith("<"):  # tshark's placeholder for an unparseable name
            continue
        rows.add((kind, _host(kind, host), src, dst))
    return rows


def scan(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, list[dict[str, object]]]:
    """In-process ``kaspwatch scan --observations`` (the CLI tests cover the subprocess path)."""
    rc = main(["scan", "--observations", str(path)])
    out, err = capsys.readouterr()
    return rc, err, [json.loads(line) for line in out.splitlines()]


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_file_matches_tshark(
    corpus: Path, path: Path, event_schema: dict[str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    name = path.name
    tshark_rc, lines = oracle(path)
    stored = corpus / "truth" / f"{name}.tsv"
    if path.parent == corpus:
        assert lines == stored.read_text().splitlines(), (
            f"{stored} is not what oracle.sh gives now: regenerate it (corpus README)"
        )
    rc, err, events = scan(path, capsys)
    if name in UNREADABLE:
        assert rc == 2 and tshark_rc != 0
        assert name in err and UNREADABLE[name] in err
        return
    assert rc == 0, f"{name}: refused, though tshark reads it (exit {tshark_rc}): {err}"
    for ev in events:
        jsonschema.validate(ev, event_schema)
    got = {(str(e["kind"]), str(e["name"]), str(e["src_ip"]), str(e["dst_ip"])) for e in events}
    want = truth(lines)
    missing = want - got
    if name in KNOWN_GAPS:
        assert missing, f"{name}: gap '{KNOWN_GAPS[name]}' is closed; remove it from KNOWN_GAPS"
        return
    assert not missing, f"{name}: kaspwatch misses {sorted(missing)[:5]}"
    # DNS answers may add CNAME-chain names; beyond that nothing tshark did not see
    extra = {e for e in got - want if e[0] in ORACLE_KINDS - {"dns_answer"}}
    extra -= TSHARK_MISSES.get(name, set())
    assert not extra, f"{name}: names tshark did not see: {sorted(extra)[:5]}"
    for case in TSHARK_MISSES.get(name, set()):
        assert case in got and case not in want, f"{name}: {case} is no longer a tshark miss"


def test_every_manifest_file_is_tested(corpus: Path) -> None:
    tested = {p.name for p in FILES}
    listed = {
        line.split("\t")[0] for line in (corpus / "MANIFEST.tsv").read_text().splitlines()[1:]
    }
    listed |= {
        line.split("\t")[0]
        for line in (CAPTURES / "MANIFEST").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert listed and listed == tested, sorted(listed ^ tested)[:5]


def test_built_captures_are_what_capturegen_builds(tmp_path: Path) -> None:
    """The committed files come from tests/capturegen.py, byte for byte (rebuild with
    ``python -m tests.capturegen``)."""
    for built in capturegen.write_all(tmp_path):
        assert built.read_bytes() == (CAPTURES / built.name).read_bytes(), built.name
