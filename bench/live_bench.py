"""Live capture rate: tcpreplay into a veth between two throw-away namespaces, at rising
rates, with `kaspwatch sense` capturing on the other end.

1. one sensor process pinned to one core (taskset): the highest offered rate at which the
   kernel dropped nothing (PACKET_STATISTICS, as the sensor logs at exit);
2. the same ladder with two sensor processes in one PACKET_FANOUT group, one per core:
   the highest zero-drop rate, and its ratio to (1).

tcpreplay needs a core too: it runs with --preload-pcap (no disk reads while sending) and
is pinned to the last core, so on a 2-core machine it shares that core with the second
fanout member; the summary says so. Needs root. Run: .venv/bin/python bench/live_bench.py
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.netns import Pair, namespace_pair  # noqa: E402 - needs the repo on sys.path

RATES = (10_000, 30_000, 70_000, 100_000, 150_000, 220_000, 300_000, 400_000, 500_000)
FANOUT_GROUP = 4711


@dataclass
class Trial:
    rate: int
    procs: int
    sent: int
    achieved_pps: float
    read: int
    drops: int
    exit_s: float
    per_process: str  # "read/drops" of each process, to see which one fell behind
    cpu_s: float  # the sensors' CPU time while the replay ran: load on the machine aside

    @property
    def us_per_packet(self) -> float:
        return self.cpu_s * 1e6 / self.read if self.read else 0.0


def ensure_tools() -> None:
    if os.geteuid() != 0:
        sys.exit("live_bench: needs root (network namespaces, AF_PACKET)")
    if not all(shutil.which(t) for t in ("ip", "tcpreplay", "taskset")):
        subprocess.run(["bash", str(REPO / ".ci" / "system-packages.sh")], check=True)


def default_pcap(workdir: Path, packets: int) -> Path:
    """The seeded mixed capture of bench/gen_mixed.py (bulk TCP, TLS, HTTP, DNS, QUIC)."""
    gen = REPO / "bench" / "gen_mixed.py"
    if not gen.exists():
        sys.exit("live_bench: bench/gen_mixed.py is missing; pass --pcap FILE")
    out = workdir / "mixed.pcap"
    cmd = [sys.executable, str(gen), str(out), "--packets", str(packets)]
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return out


def start_sensor(net: Pair, cpu: int, name: str, fanout: bool) -> subprocess.Popen[str]:
    args = [
        "taskset",
        "-c",
        str(cpu),
        sys.executable,
        "-m",
        "kaspwatch",
        "sense",
        "--interface",
        net.client_if,
        "--bus",
        f"memory://{name}",
        "--sensor",
        name,
        "--heartbeat-interval",
        "3600",
    ]
    if fanout:
        args += ["--fanout", str(FANOUT_GROUP)]
    proc = net.spawn(net.client, *args)
    assert proc.stderr is not None
    seen = ""
    deadline = time.monotonic() + 30
    while "capturing on" not in seen:  # socket bound, filter attached, fanout joined
        if time.monotonic() > deadline or proc.poll() is not None:
            sys.exit(f"live_bench: sensor did not start:\n{seen}{proc.stderr.read()}")
        seen += proc.stderr.readline()
    return proc


def stop_sensor(proc: subprocess.Popen[str]) -> tuple[int, int, float]:
    """(packets read, kernel drops, seconds to exit) from the sensor's exit line. The sensor
    reads out its socket's queue before exiting, so a sensor that fell behind takes long."""
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    took = time.monotonic() - started
    m = re.search(r": (\d+) packets, .* (\d+) kernel drops", stderr)
    if m is None:
        sys.exit(f"live_bench: no exit summary from the sensor:\n{stderr}")
    return int(m.group(1)), int(m.group(2)), took


def trial(net: Pair, pcap: Path, pcap_packets: int, rate: int, procs: int, seconds: float) -> Trial:
    ncpu = os.cpu_count() or 1
    sensors = [start_sensor(net, i % ncpu, f"bench-{i}", procs > 1) for i in range(procs)]
    cpu_before = sum(cpu_seconds(p.pid) for p in sensors)
    sent, pps = replay(net, pcap, pcap_packets, rate, seconds)
    time.sleep(1.0)  # let the sensors read out what is queued
    cpu = sum(cpu_seconds(p.pid) for p in sensors) - cpu_before
    totals = [stop_sensor(p) for p in sensors]
    return Trial(
        rate,
        procs,
        sent,
        pps,
        sum(t[0] for t in totals),
        sum(t[1] for t in totals),
        max(t[2] for t in totals),
        " ".join(f"{t[0]}/{t[1]}" for t in totals),
        cpu,
    )


# The capture reader alone, no decoding: frames counted until SIGINT, then its CPU since
# the capture opened (start-up aside) and the kernel's drops, as one JSON line.
_READER = """
import json, resource, signal, sys
from sensor.sources.live import LiveCapture, default_filter
from sensor.sources.ring import RingCapture
kind, iface = sys.argv[1], sys.argv[2]
cap = (RingCapture if kind == "ring" else LiveCapture)(iface, 65535, default_filter(), None)
signal.signal(signal.SIGINT, lambda *_: cap.stop())
r0 = resource.getrusage(resource.RUSAGE_SELF)
print("capturing on", iface, file=sys.stderr, flush=True)
n = sum(1 for f in cap if f is not None)
r = resource.getrusage(resource.RUSAGE_SELF)
cpu = r.ru_utime - r0.ru_utime + r.ru_stime - r0.ru_stime
print(json.dumps({"read": n, "cpu_s": cpu, "drops": cap.read_kernel_stats()[1]}))
"""


def reader_trial(net: Pair, pcap: Path, pcap_packets: int, rate: int, seconds: float) -> None:
    """CPU per packet read of the ring and of the AF_PACKET socket, reading only."""
    for kind in ("ring", "socket"):
        proc = net.spawn(net.client, "taskset", "-c", "0", sys.executable, "-c", _READER,
                         kind, net.client_if)  # fmt: skip
        assert proc.stderr is not None
        if "capturing on" not in proc.stderr.readline():
            sys.exit(f"live_bench: the {kind} reader did not start: {proc.stderr.read()}")
        _sent, pps = replay(net, pcap, pcap_packets, rate, seconds)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        got = json.loads(out)
        us = got["cpu_s"] * 1e6 / got["read"] if got["read"] else 0.0
        print(
            f"  {kind:>6} reader alone  offered {rate} pps  achieved {pps:.0f} pps  "
            f"read {got['read']}  kernel drops {got['drops']}  cpu {us:.2f} us/packet read  "
            f"load {os.getloadavg()[0]:.1f}",
            flush=True,
        )


def replay(
    net: Pair, pcap: Path, pcap_packets: int, rate: int, seconds: float
) -> tuple[int, float]:
    """tcpreplay at ``rate`` for ``seconds`` on the last core: (packets sent, achieved pps)."""
    ncpu = os.cpu_count() or 1
    count = int(rate * seconds)
    loops = -(-count // pcap_packets)  # enough loops for count packets; --limit cuts
    server_if = "kws" + net.client_if[3:]
    done = net.run(
        net.server,
        "taskset",
        "-c",
        str(ncpu - 1),
        "tcpreplay",
        "--preload-pcap",
        "--unique-ip",  # new addresses each loop: many flows for the fanout hash
        f"--loop={loops}",
        f"--limit={count}",
        f"--pps={rate}",
        "-i",
        server_if,
        str(pcap),
        timeout=seconds * 10 + 60,
    )
    if done.returncode != 0:
        sys.exit(f"live_bench: tcpreplay failed: {done.stderr}")
    sent = int(re.search(r"Actual: (\d+) packets", done.stdout).group(1))  # type: ignore[union-attr]
    pps = float(re.search(r"Rated: [\d.]+ Bps, [\d.]+ Mbps, ([\d.]+) pps", done.stdout).group(1))  # type: ignore[union-attr]
    return sent, pps


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all threads (/proc/PID/stat utime, stime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ladder(
    net: Pair, pcap: Path, n: int, procs: int, rates: list[int], seconds: float
) -> list[Trial]:
    out: list[Trial] = []

    def run(rate: int) -> Trial:
        t = trial(net, pcap, n, rate, procs, seconds)
        out.append(t)
        print(
            f"  {procs} proc  offered {rate:>7} pps  achieved {t.achieved_pps:>7.0f} pps  "
            f"sent {t.sent:>7}  read {t.read:>7}  kernel drops {t.drops:>6}  "
            f"exit {t.exit_s:4.1f} s  cpu {t.us_per_packet:4.1f} us/packet read  "
            f"load {os.getloadavg()[0]:.1f}"
            + ("  (tcpreplay fell short of the rate)" if t.achieved_pps < 0.95 * rate else "")
            + (f"  (read/drops each: {t.per_process})" if procs > 1 else ""),
            flush=True,
        )
        return t

    for rate in rates:
        if not ok(run(rate)):
            good = [t.rate for t in out if ok(t)]
            if good:  # one more step halfway back, to place the knee closer
                run((max(good) + rate) // 2)
            break
    return out


def ok(t: Trial) -> bool:
    return t.drops == 0 and t.exit_s <= KEPT_UP_EXIT_S


KEPT_UP_EXIT_S = 2.0  # a sensor that fell behind spends longer reading out its queue


def best(trials: list[Trial]) -> Trial | None:
    """The highest rate with no kernel drop and no backlog left when the replay ended (the
    32 MiB socket queue would otherwise hide a sensor that is slower than the wire)."""
    good = [t for t in trials if ok(t)]
    return max(good, key=lambda t: t.achieved_pps) if good else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pcap", type=Path, help="capture to replay (default: bench/gen_mixed.py)")
    ap.add_argument("--packets", type=int, default=300_000, help="size of the generated capture")
    ap.add_argument("--seconds", type=float, default=8.0, help="replay length per rate")
    ap.add_argument("--rates", help="comma-separated pps ladder (default: 10k .. 500k)")
    ap.add_argument(
        "--readers",
        type=int,
        default=150_000,
        metavar="PPS",
        help="also time the capture readers alone (ring, socket) at this rate; 0: skip",
    )
    ap.add_argument("--readers-only", action="store_true", help="skip the ladders")
    args = ap.parse_args()
    ensure_tools()
    rates = [int(r) for r in args.rates.split(",")] if args.rates else list(RATES)
    with tempfile.TemporaryDirectory(prefix="kw-live-bench-") as tmp:
        pcap = args.pcap or default_pcap(Path(tmp), args.packets)
        info = subprocess.run(["capinfos", "-c", "-M", str(pcap)], capture_output=True, text=True)
        m = re.search(r"Number of packets:\s+(\d+)", info.stdout) if info.returncode == 0 else None
        n = int(m.group(1)) if m else sum(1 for _ in _frames(pcap))
        print(
            f"capture {pcap} ({n} packets), {os.cpu_count()} cores, {args.seconds:.0f} s per "
            f"rate, load average {os.getloadavg()[0]:.1f} (other work on the machine skews this)"
        )
        with namespace_pair("lb") as net:
            if args.readers:
                print("the capture readers alone (no decoding), core 0; tcpreplay on the last")
                reader_trial(net, pcap, n, args.readers, args.seconds)
            if args.readers_only:
                return 0
            print("one sensor process, core 0; tcpreplay on the last core")
            one = ladder(net, pcap, n, 1, rates, args.seconds)
            b1 = best(one)
            print(f"two sensor processes, fanout group {FANOUT_GROUP}, cores 0 and 1")
            start = [r for r in rates if b1 is None or r >= b1.rate // 2] or rates
            two = ladder(net, pcap, n, 2, start, args.seconds)
            b2 = best(two)
    print()
    print(
        f"zero drop = no kernel drop and the sensor exited within {KEPT_UP_EXIT_S} s (no backlog)"
    )
    print("| setup | highest zero-drop rate (achieved pps) |")
    print("|---|---|")
    print(f"| 1 process, 1 core | {b1.achieved_pps:.0f} |" if b1 else "| 1 process | none |")
    print(f"| 2 processes (fanout), 2 cores | {b2.achieved_pps:.0f} |" if b2 else "| 2 | none |")
    if b1 and b2:
        print(f"| scaling 2 vs 1 | {b2.achieved_pps / b1.achieved_pps:.2f}x |")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    clean = [t for t in one if ok(t) and t.read]
    if clean:  # what one core could do if nothing else wanted it (batches are fullest there)
        top = max(clean, key=lambda t: t.achieved_pps)
        us, passed = top.us_per_packet, top.read / top.sent
        print(
            f"one process: {us:.1f} us CPU per packet read at its highest zero-drop rate: "
            f"a whole core would read ~{1e6 / us:,.0f} packets/s, "
            f"~{1e6 / us / passed:,.0f} offered ({passed:.0%} pass the kernel filter)"
        )
    if (os.cpu_count() or 1) <= 2:
        print("note: 2 cores: tcpreplay shares core 1 with the second fanout member")
    return 0


def _frames(pcap: Path) -> list[object]:
    from sensor.sources.pcapfile import CaptureFile

    with CaptureFile(str(pcap)) as cap:
        return list(cap)


if __name__ == "__main__":
    raise SystemExit(main())
