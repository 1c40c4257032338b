"""``kaspwatch scan`` loads only what a scan uses: no asyncio, Kafka client, Prometheus
client, store, peer readers or YAML schema checker; QUIC's decoder (and ``cryptography``)
only once a capture holds a QUIC long header. A behaviour test (which modules a fresh
process ends with), never a timing one: bench/scan_bench.py ``--startup`` times it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "corpus"

# what ``scan`` of a capture file never needs (the other commands load these)
NEVER = (
    "asyncio",
    "aiokafka",
    "prometheus_client",
    "jsonschema",
    "scapy",
    "ssl",
    "http.server",
    "consumers",
    "sensor.peers",
    "sensor.sources.live",
    "kaspwatch.cli.capture",
    "kaspwatch.table",
)
PROBE = """
import json, sys
from kaspwatch.cli import main
rc = main(sys.argv[1:])
sys.stdout.flush()
print(json.dumps([rc, sorted(sys.modules)]), file=sys.stderr)
"""


def modules_after(*argv: str) -> tuple[int, set[str], str]:
    """(exit status, modules loaded, stdout) of ``kaspwatch ARGV`` in a fresh interpreter."""
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, check=False, cwd=ROOT
    )
    rc, mods = json.loads(proc.stderr.strip().splitlines()[-1])
    return rc, set(mods), proc.stdout


def loaded(mods: set[str], name: str) -> bool:
    return any(m == name or m.startswith(name + ".") for m in mods)


def test_scan_of_a_capture_loads_none_of_what_it_never_uses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KASPWATCH_CACHE_DIR", str(tmp_path))
    rc, mods, _ = modules_after("scan", str(ROOT / "samples" / "sample.pcap"))
    assert rc == 0 and loaded(mods, "yaml")  # the first scan parses the packs
    rc, mods, out = modules_after("scan", str(ROOT / "samples" / "sample.pcap"))
    assert rc == 0 and out  # it did scan: the sample has hits
    assert [n for n in NEVER if loaded(mods, n)] == []
    assert not loaded(mods, "cryptography")  # no QUIC in the sample
    assert not loaded(mods, "yaml")  # the packs came from the cache the first scan filled
    assert not loaded(mods, "sensor.decode.quic")


def test_quic_decoder_loads_with_the_first_quic_initial() -> None:
    quic = str(CORPUS / "tcpdump_quic_handshake.pcap")
    rc, mods, out = modules_after("scan", "--observations", quic)
    assert rc == 0
    assert loaded(mods, "sensor.decode.quic") and loaded(mods, "cryptography")
    assert any(json.loads(line)["kind"] == "quic_sni" for line in out.splitlines())


def test_table_and_peer_readers_load_when_asked_for() -> None:
    rc, mods, out = modules_after(
        "scan", "--format", "table", str(ROOT / "samples" / "sample.pcap")
    )
    assert rc == 0 and out.startswith("TS")
    assert loaded(mods, "kaspwatch.table")


def test_user_errors_still_one_line_without_importing_their_modules() -> None:
    """Errors are told apart by class looked up lazily (kaspwatch.cli.USER_ERRORS): a missing
    capture is still one line, exit 2, no traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "kaspwatch", "scan", "/nonexistent/x.pcap"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "/nonexistent/x.pcap" in proc.stderr
