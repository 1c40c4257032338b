"""The live readers (libpcap's ring, the AF_PACKET socket fallback) against the file path:
the generated mix replayed into a veth must give the names a scan of the same capture
gives, through the same kernel filter, with nothing lost on the way."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.netns import namespace_pair, need_tools, wait_for_stderr
from tests.testenv import KASPWATCH

pytestmark = pytest.mark.live  # root: network namespaces and live capture

REPO = Path(__file__).resolve().parent.parent

# Runs inside the client namespace: reads the interface with the reader named in argv[1]
# and the default kernel filter until SIGINT, then prints every (kind, name) the sensor
# saw, the frames read and the kernel's drop count.
_READER = """
import hashlib, json, signal, sys
from sensor.pipeline import Sensor
from sensor.rules.ruleset import source_from
from sensor.sources.live import LiveCapture, MergedLive, default_filter
from sensor.sources.ring import RingCapture
kind, iface = sys.argv[1], sys.argv[2]
rules = source_from([], None, shipped=True).load()
sensor = Sensor(rules, "t", observations=True)
bpf = default_filter(rules.matcher.cidrs())
if kind == "two rings":  # a reader thread each, frames handed over in lists
    live = MergedLive([RingCapture(i, 65535, bpf, None) for i in (iface, "lo")])
else:
    live = MergedLive([(RingCapture if kind == "ring" else LiveCapture)(iface, 65535, bpf, None)])
signal.signal(signal.SIGINT, lambda *_: live.stop())
print("capturing on", iface, file=sys.stderr, flush=True)
names, frames = set(), []
for frame in live:
    if frame is not None:
        if not (frame[2][12:14] == b"\\x86\\xdd" and frame[2][20] in (0, 58)):
            frames.append(hashlib.sha1(frame[2]).hexdigest())  # not the veth's own ICMPv6
        names.update((e.kind, e.name) for e in sensor.process_frame(*frame))
print(json.dumps({"names": sorted(names), "frames": frames, "drops": live.kernel_drops()}))
"""


def _own(data: bytes) -> bool:
    """IPv6 ICMPv6 or hop-by-hop (MLD): what a veth sends by itself (neighbour and router
    solicitations, multicast listener reports), not the replayed mix."""
    return data[12:14] == b"\x86\xdd" and data[20] in (0, 58)


def _file_names(pcap: Path) -> tuple[set[tuple[str, str]], Counter[str]]:
    from sensor.pipeline import Sensor
    from sensor.rules.ruleset import source_from
    from sensor.sources.live import default_filter
    from sensor.sources.prefilter import PrefilteredFile

    rules = source_from([], None, shipped=True).load()
    sensor = Sensor(rules, "t", observations=True)
    names: set[tuple[str, str]] = set()
    frames: Counter[str] = Counter()
    with PrefilteredFile(str(pcap), default_filter(rules.matcher.cidrs())) as cap:
        for frame in cap:
            assert not _own(frame[2]), "the mix has no ICMPv6: the veth's own can be told apart"
            frames[hashlib.sha1(frame[2]).hexdigest()] += 1
            names.update((e.kind, e.name) for e in sensor.process_frame(*frame))
    return names, frames


@pytest.fixture(scope="module")
def mix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mix") / "mixed.pcap"
    gen = [sys.executable, str(REPO / "bench" / "gen_mixed.py"), str(out), "--packets", "12000"]
    subprocess.run(gen, check=True, cwd=REPO, capture_output=True, timeout=120)
    return out


@pytest.mark.parametrize("reader", ["ring", "socket", "two rings"])
def test_live_reader_finds_the_names_a_scan_of_the_same_traffic_finds(
    reader: str, mix: Path
) -> None:
    need_tools("ip", "tcpreplay")
    want, want_frames = _file_names(mix)
    assert len(want) > 50  # the mix has names to find
    with namespace_pair("rg") as net:
        code = [sys.executable, "-c", _READER, reader, net.client_if]
        proc = net.spawn(net.client, *code)
        wait_for_stderr(proc, "capturing on")
        server_if = "kws" + net.client_if[3:]
        # slow enough for a loaded machine; split hellos still follow their first
        # segment at once, as tcpreplay sends the capture's packets in order
        replay = net.run(
            net.server, "tcpreplay", "--preload-pcap", "--pps=4000", "-i", server_if, str(mix)
        )
        assert replay.returncode == 0, replay.stderr
        proc.send_signal(signal.SIGINT)  # reads out what the kernel holds, then ends
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    got = json.loads(out)
    assert got["drops"] == 0, got["drops"]
    # every frame the file filter passes was read live, and nothing else (the veth's own
    # ICMPv6 left out on both sides)
    assert Counter(got["frames"]) == want_frames
    assert {tuple(n) for n in got["names"]} == want


def test_the_ring_says_in_one_line_what_is_wrong() -> None:
    """A missing interface and a filter libpcap cannot compile: exit 2, the interface
    named, no traceback."""
    need_tools("ip")
    with namespace_pair("rgbad") as net:
        missing = net.run(net.client, *KASPWATCH, "run", "--interface", "kwnosuch0")
        bad = net.run(
            net.client, *KASPWATCH, "run", "--interface", net.client_if, "--bpf", "tcp port"
        )
    assert missing.returncode == 2, missing.stderr
    assert "kwnosuch0: cannot capture: No such device" in missing.stderr
    assert bad.returncode == 2, bad.stderr
    assert f"{net.client_if}: cannot attach capture filter 'tcp port'" in bad.stderr
    assert "Traceback" not in missing.stderr + bad.stderr


def test_an_interface_that_disappears_ends_the_capture_with_one_line() -> None:
    need_tools("ip")
    with namespace_pair("rggone") as net:
        run = net.spawn(net.client, *KASPWATCH, "run", "--interface", net.client_if)
        wait_for_stderr(run, "capturing on")
        assert net.run(net.client, "ip", "link", "del", net.client_if).returncode == 0
        _out, err = run.communicate(timeout=30)
    assert run.returncode == 2, err
    assert f"kaspwatch: error: {net.client_if}: capture failed: The interface disappeared" in err
    assert "Traceback" not in err
