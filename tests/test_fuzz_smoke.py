"""CI's short run of the coverage-guided fuzzer (fuzz/run.py, atheris): every target for a
few seconds, seeded from samples/; any crash fails with its log tail.
The long run is the same script with a larger ``--seconds`` (see fuzz/run.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.testenv import REPO


def test_every_fuzz_target_runs_without_a_crash(tmp_path: Path) -> None:
    # seeds from samples/ only: reading the whole corpus for seeds costs more than the run
    cmd = [sys.executable, str(REPO / "fuzz" / "run.py"), "--seconds", "1"]
    cmd += ["--corpus", str(REPO / "samples"), "--workdir", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    lines = {
        line.split()[0]: line
        for line in proc.stdout.splitlines()
        if " inputs=" in line and not line.startswith("total")
    }
    assert set(lines) == {"dns", "tls", "quic", "http", "pcap", "packet", "identity", "native"}, (
        out[-3000:]
    )
    for target, line in lines.items():
        inputs = int(line.split("inputs=")[1].split()[0].replace(",", ""))
        assert inputs > 100, f"{target} barely ran: {line}"
