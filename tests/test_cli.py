"""The CLI as a user meets it: scan and run on the sample capture, as real processes."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import jsonschema
import pytest

from tests.testenv import KASPWATCH, SAMPLE

# What the sample holds (samples/README.md): made with dig, openssl and curl in namespaces.
EXPECTED_HITS = {
    ("dns_query", "dnl-03.geo.kaspersky.com", "update"),
    ("dns_answer", "dnl-03.geo.kaspersky.com", "update"),
    ("dns_query", "ds.kaspersky.com", "update"),
    ("dns_answer", "ds.kaspersky.com", "update"),
    ("dns_query", "ksn-file-geo.kaspersky-labs.com", "telemetry"),
    ("dns_answer", "ksn-file-geo.kaspersky-labs.com", "telemetry"),
    ("dns_query", "activation-v2.kaspersky.com", "activation"),
    ("dns_answer", "activation-v2.kaspersky.com", "activation"),
    ("dns_query", "s07.upd.kaspersky.com", "update"),
    ("dns_answer", "s07.upd.kaspersky.com", "update"),
    ("dns_answer", "dnl-11.geo.kaspersky.com", "update"),  # via CNAME from av-updates.example.net
    ("tls_sni", "s01.upd.kaspersky.com", "update"),
    ("tls_sni", "dnl-05.geo.kaspersky.com", "update"),
    ("http_host", "downloads.kaspersky-labs.com", "update"),
    ("http_host", "cm.k.kaspersky-labs.com", "update"),
    # content signal: the request path is an updater's (/bases/av/kdb/i386/dailyc.kdc)
    ("http_request", "downloads.kaspersky-labs.com", "update"),
    # flows to 10.77.0.1 after DNS pointed watched names at it: attributed to the last one
    ("ip_flow", "dnl-11.geo.kaspersky.com", "update"),
}
SAMPLE_PACKETS = 114
HIT_COUNT = 20  # the 15 name hits and 1 updater path above, 4 attributed flows (2 TLS, 2 HTTP)
LOOKALIKES = {"notkaspersky.com", "kaspersky.com.evil.example", "mykaspersky-labs.com.example"}
BENIGN = {"www.example.org", "updates.example.com", "av-updates.example.net"}


def kw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KASPWATCH, *args], capture_output=True, text=True, timeout=120)


def test_scan_prints_exactly_the_expected_hits(event_schema: dict[str, object]) -> None:
    proc = kw("scan", str(SAMPLE))
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    for ev in events:
        jsonschema.validate(ev, event_schema)
    got = {(e["kind"], e["name"], e["indicator"]["category"]) for e in events}
    assert got == EXPECTED_HITS
    assert len(events) == HIT_COUNT
    flows = [e for e in events if e["kind"] == "ip_flow"]
    assert {(e["dst_ip"], e["dst_port"], e["attributed_by"]) for e in flows} == {
        ("10.77.0.1", 443, "dns"),
        ("10.77.0.1", 80, "dns"),
        ("10.77.0.1", 8080, "dns"),
    }
    cname = next(e for e in events if e["name"] == "dnl-11.geo.kaspersky.com")
    assert cname["query"] == "av-updates.example.net" and cname["host"] == "10.77.0.2"
    assert {e["host"] for e in events} == {"10.77.0.2", "fd77::2"}


def test_observations_show_lookalikes_unmatched(event_schema: dict[str, object]) -> None:
    proc = kw("scan", "--observations", str(SAMPLE))
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    for ev in events:
        jsonschema.validate(ev, event_schema)
    unmatched = {e["name"] for e in events if e["indicator"] is None}
    assert unmatched >= LOOKALIKES | BENIGN
    assert not {e["name"] for e in events if e["indicator"]} & (LOOKALIKES | BENIGN)


def test_scan_table_for_people() -> None:
    proc = kw("scan", "--format", "table", str(SAMPLE))
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:3] == ["TS", "KIND", "NAME"]
    assert len(lines) == 1 + HIT_COUNT
    assert any("dnl-11.geo.kaspersky.com (asked av-updates.example.net)" in line for line in lines)


def test_scan_goes_on_after_a_bad_file_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("not a capture\n")
    proc = kw("scan", str(bad), str(SAMPLE))
    assert proc.returncode == 2
    assert len(proc.stdout.splitlines()) == HIT_COUNT  # the good file was still scanned
    assert proc.stderr.strip().endswith(
        f"{bad}: not a pcap or pcapng capture (starts with 6e6f7420)"
    )
    assert "Traceback" not in proc.stderr


def test_bad_pack_is_refused_at_start(tmp_path: Path) -> None:
    pack = tmp_path / "pack.yaml"
    pack.write_text("schema: kaspwatch-indicator-pack/1\nindicators: []\n")
    proc = kw("scan", "--pack", str(pack), str(SAMPLE))
    assert proc.returncode == 2
    assert (
        proc.stderr.strip() == f"kaspwatch: error: {pack}:1: 'indicators' must be a non-empty list"
    )


def test_run_prints_alerts_summary_and_writes_textfile(tmp_path: Path) -> None:
    textfile = tmp_path / "kaspwatch.prom"
    proc = kw("run", "--pcap", str(SAMPLE), "--metrics-textfile", str(textfile))
    assert proc.returncode == 0, proc.stderr
    alerts = [line for line in proc.stdout.splitlines() if line.startswith("ALERT ")]
    # one per (host, category): 10.77.0.2 update + telemetry, fd77::2 activation
    assert len(alerts) == 3
    assert any("update" in a and "10.77.0.2" in a for a in alerts)
    assert any("activation" in a and "fd77::2" in a for a in alerts)
    assert "Summary: hosts talking to Kaspersky" in proc.stdout
    metrics = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in textfile.read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert sum(v for k, v in metrics.items() if k.startswith("kaspwatch_hits_total{")) == HIT_COUNT
    assert (
        metrics[
            'kaspwatch_hits_total{category="update",kind="tls_sni",severity="high",site="unknown"}'
        ]
        == 2
    )
    # known series are exported from the start, at zero
    assert (
        metrics[
            'kaspwatch_hits_total{category="oem",kind="quic_sni",severity="high",site="unknown"}'
        ]
        == 0
    )
    assert (
        metrics['kaspwatch_alerts_total{category="update",severity="high",stage="first_contact"}']
        == 1
    )
    assert metrics["kaspwatch_sensor_packets_total"] > 50  # of 114: the rest the prefilter skips
    assert metrics["kaspwatch_sensor_publish_failures_total"] == 0
    assert metrics["kaspwatch_sensor_kernel_drops_total"] == 0
    assert metrics['kaspwatch_sensor_state_evictions_total{table="tcp_streams"}'] == 0


def test_run_ndjson_alerts_are_json() -> None:
    proc = kw("run", "--pcap", str(SAMPLE), "--format", "ndjson")
    docs = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert {(d["host"], d["category"]) for d in docs} == {
        ("10.77.0.2", "update"),
        ("10.77.0.2", "telemetry"),
        ("fd77::2", "activation"),
    }


@pytest.mark.parametrize("cmd", ["scan", "run --pcap"])
def test_missing_file_is_one_line_exit_2(cmd: str, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pcap"
    proc = kw(*cmd.split(), str(missing))
    assert proc.returncode == 2
    assert proc.stderr == f"kaspwatch: error: {missing}: no such file\n"


def test_progress_on_a_terminal_only() -> None:
    import os
    import pty

    def on_a_terminal(*args: str) -> str:
        leader, follower = pty.openpty()
        proc = subprocess.run(
            [*KASPWATCH, "scan", *args, str(SAMPLE)],
            stdout=subprocess.PIPE,
            stderr=follower,
            timeout=60,
        )
        os.close(follower)
        shown = os.read(leader, 65536).decode()
        os.close(leader)
        assert proc.returncode == 0
        return shown

    shown = on_a_terminal("--no-prefilter")
    assert (
        f"{SAMPLE}: {SAMPLE_PACKETS} packets," in shown
        and "packets/s" in shown
        and "100.0%" in shown
    )
    # through libpcap only the packets that passed the prefilter are counted
    shown = on_a_terminal()
    passed = re.search(rf"{SAMPLE}: (\d+) packets past the prefilter, .* 100.0%", shown)
    assert passed and 0 < int(passed[1]) < SAMPLE_PACKETS, shown
    piped = kw("scan", str(SAMPLE))
    assert "packets/s" not in piped.stderr


@pytest.mark.parametrize("cmd", ["run", "scan"])
def test_a_cut_capture_is_said_with_file_byte_and_count(cmd: str, tmp_path: Path) -> None:
    """A capture cut off mid-packet: what was read is kept (the hits before the cut), and
    one warning names the file, the byte and the packets kept — on run as on scan."""
    whole = SAMPLE.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(whole[:9000])
    proc = subprocess.run(
        [*KASPWATCH, cmd, str(cut)] if cmd == "scan" else [*KASPWATCH, cmd, "--pcap", str(cut)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert re.search(
        rf"{re.escape(str(cut))}: truncated packet at byte \d+; kept 47 packets", proc.stderr
    )
    assert "kaspersky" in proc.stdout


def _corrupt_after(packets: int, path: Path) -> None:
    """The sample with a record header claiming 1 GiB after ``packets`` packets."""
    import struct

    data = SAMPLE.read_bytes()
    at = 24
    for _ in range(packets):
        at += 16 + struct.unpack_from("<I", data, at + 8)[0]
    path.write_bytes(data[:at] + struct.pack("<IIII", 0, 0, 1 << 30, 1 << 30) + data[at:])


@pytest.mark.parametrize("cmd", ["sense", "run"])
def test_bad_files_cost_only_themselves(cmd: str, tmp_path: Path) -> None:
    """A file that is no capture, one that is missing and one that breaks off corrupt half
    way, before a good one: the good one is read whole, what was read of the corrupt one
    is kept, each bad one is named with its reason on one line, the summary is printed and
    the exit status is 2."""
    bad, missing, corrupt = tmp_path / "notes.txt", tmp_path / "nope.pcap", tmp_path / "c.pcap"
    bad.write_text("not a capture\n")
    _corrupt_after(60, corrupt)
    files = [str(bad), str(missing), str(corrupt), str(SAMPLE)]
    args = ["--bus", "memory://bad-files"] if cmd == "sense" else ["--format", "ndjson"]
    proc = kw(cmd, "--pcap", *files, *args)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("kaspwatch: error:")]
    assert errors[:2] == [
        f"kaspwatch: error: {bad}: not a pcap or pcapng capture (starts with 6e6f7420)",
        f"kaspwatch: error: {missing}: no such file",
    ], proc.stderr
    assert len(errors) == 3 and errors[2].startswith(
        f"kaspwatch: error: {corrupt}: corrupt record at byte 12424: length 1073741824 "
        "(after 60 packets)"
    ), proc.stderr
    # the corrupt file's first 60 packets hold the DNS hits up to then; the sample all 19
    hits = re.search(r" (\d+) hits,", proc.stderr)
    assert hits and int(hits[1]) > HIT_COUNT, proc.stderr
    if cmd == "run":
        alerts = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        assert alerts, proc.stdout


def _unread(fd: int) -> int:
    """Bytes written to a pipe that its reader has not taken yet."""
    import array
    import fcntl
    import termios

    n = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, n)
    return n[0]


@pytest.mark.parametrize("cmd", ["sense", "run"])
def test_ctrl_c_on_a_quiet_stdin_ends_it_and_says_interrupted(cmd: str, tmp_path: Path) -> None:
    """``--pcap -`` from a pipe that stays open and goes quiet (tcpdump -w - with nothing
    on the wire): Ctrl-C ends it at once, not when more packets come; what was read is
    processed, the summary printed, one line says it was interrupted and where, and the
    exit status is 130, not 0."""
    import signal
    import time

    from tests.cliprocs import cli_env

    args = ["--bus", "memory://quiet"] if cmd == "sense" else ["--format", "ndjson"]
    out, err = tmp_path / "out", tmp_path / "err"
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen(
            [*KASPWATCH, cmd, "--pcap", "-", *args],
            stdin=subprocess.PIPE,
            stdout=o,
            stderr=e,
            env=cli_env(tmp_path),
        )
    assert proc.stdin is not None
    try:
        proc.stdin.write(SAMPLE.read_bytes())
        proc.stdin.flush()
        deadline = time.monotonic() + 30
        # until the reader is in (signal handlers are in place then) and has taken every
        # packet; then it waits for more
        while time.monotonic() < deadline and (
            "reading -" not in err.read_text() or _unread(proc.stdin.fileno())
        ):
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)  # stdin stays open: no end of file ends it
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close()
    stderr = err.read_text()
    assert proc.returncode == 130, stderr
    assert f"kaspwatch: interrupted: reading stdin, after {SAMPLE_PACKETS} packets\n" in stderr
    assert f" {HIT_COUNT} hits," in stderr  # the packets read were processed
    assert "Traceback" not in stderr
    if cmd == "run":
        assert "kaspersky" in out.read_text()
