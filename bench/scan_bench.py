"""``kaspwatch scan`` against Suricata 8, tshark and tcpdump on the same mixed capture, in
one run; then ``scan --workers`` and start-up.

    .venv/bin/python bench/scan_bench.py [--packets 1000000] [--runs 3] [--core 1]
        [--clock cpu] [--suricata BIN | --no-suricata] [--workers N] [--rotate 10]
        [--startup 10] [--memory 1000000,2000000,4000000] [--reference]

Makes (or reuses) a capture with bench/gen_mixed.py, reads it once into the page cache,
then times, interleaved, ``--runs`` times each and pinned to one core with ``taskset``:

- ``kaspwatch scan FILE`` (libpcap prefilter on, every signal on: the default);
- Suricata 8 (``--suricata BIN``, else ``$SURICATA``, else the tools/build_suricata.sh
  build; skipped with a line when there is none) running ``kaspwatch indicators export
  --format suricata`` with ``--runmode single``, EVE alerts only (bench/suricata_peer.py
  writes the configuration), twice: only the DNS/TLS/HTTP/QUIC parsers on, and every
  parser on;
- ``tshark -r FILE -T fields -e dns.qry.name -e dns.cname
  -e tls.handshake.extensions_server_name -e http.host`` (QUIC SNI is in the tls field);
- ``tcpdump -r FILE -w /dev/null EXPR`` with kaspwatch's own prefilter expression: the
  floor for reading just the packets that matter, in C.

Prints the median wall and CPU (user + system, GNU time) of each, packets/s, the ratios,
peak RSS (ru_maxrss of each child), the Kaspersky names each found (names classified with
kaspwatch's matcher; the generator's sidecar lists what the file holds) and the
difference, then each target as met or not. ``--workers N`` (default: the machine's
cores; 0 skips) times ``scan --workers N`` against ``--workers 1``, unpinned, on the file
and on it cut into ``--rotate`` files (editcap), and checks both give the same events;
``--startup K`` times ``kaspwatch scan samples/sample.pcap`` K times (median wall and CPU).
``--memory`` scans files of those sizes once each and compares kaspwatch's peak RSS;
``--reference`` also times ``kaspwatch scan --no-prefilter`` once. Needs tshark, editcap,
tcpdump, taskset and GNU time (bash .ci/system-packages.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import suricata_peer

from sensor.rules.indicators import load_pack
from sensor.rules.match import Matcher
from sensor.sources.prefilter import prefilter_expression

REPO = Path(__file__).resolve().parent.parent
GENERATOR = REPO / "bench" / "gen_mixed.py"
TSHARK_FIELDS = (
    ("dns.qry.name", "dns_query"),
    ("dns.cname", "dns_answer"),
    ("tls.handshake.extensions_server_name", "tls_sni"),
    ("http.host", "http_host"),
)
TARGET_VS_SURICATA = 2.0  # by CPU time, per core
TARGET_VS_TSHARK = 30.0
TARGET_VS_TCPDUMP = 1 / 1.5  # stretch: within 1.5x of the floor
WORKER_CPU = re.compile(r"scan worker \d+ of \d+: CPU ([0-9.]+) s")
TARGET_STARTUP_S = 0.150  # median wall of kaspwatch scan samples/sample.pcap
TARGET_MEMORY_GROWTH = 1.15  # peak RSS at the largest size / at the smallest


@dataclass
class Timing:
    seconds: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    rss_kib: list[int] = field(default_factory=list)
    output: str = ""

    def median(self, clock: str) -> float:
        # GNU time counts in hundredths: a tiny file can take "0.00 s"
        return max(statistics.median(self.cpu if clock == "cpu" else self.seconds), 0.005)


def run(
    cmd: list[str], stdout: Path | None = None, stderr: list[str] | None = None
) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (user + system) and peak RSS (KiB) of one child; its
    stdout to a file or nowhere. GNU time measures it: a child forked from this (large)
    Python process would report this process's RSS as its own peak."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as measured:
        timed = ["/usr/bin/time", "-q", "-f", "%e %U %S %M", "-o", measured.name, *cmd]
        with open(stdout or os.devnull, "wb") as out:
            proc = subprocess.run(timed, stdout=out, stderr=subprocess.PIPE, check=False)
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace")[-500:]
            raise SystemExit(f"scan_bench: {' '.join(cmd)} exited {proc.returncode}: {err}")
        wall, user, system, rss = measured.read().split()
    if stderr is not None:
        stderr.append(proc.stderr.decode(errors="replace"))
    return float(wall), float(user) + float(system), int(rss)


def capture(
    workdir: Path, packets: int, seed: int, upload_share: float
) -> tuple[Path, dict[str, object]]:
    path = workdir / f"mixed-{packets}-s{seed}-up{upload_share:g}.pcap"
    sidecar = Path(f"{path}.expected.json")
    fresh = sidecar.exists() and sidecar.stat().st_mtime > GENERATOR.stat().st_mtime
    if not fresh:
        print(f"generating {path} ...", file=sys.stderr)
        subprocess.run(
            [
                sys.executable,
                str(GENERATOR),
                str(path),
                "--packets",
                str(packets),
                "--seed",
                str(seed),
                "--upload-share",
                str(upload_share),
            ],
            check=True,
            cwd=REPO,
        )
    with path.open("rb") as fh:  # into the page cache: every tool reads from memory
        while fh.read(1 << 24):
            pass
    return path, json.loads(sidecar.read_text())


CONTENT_KINDS = ("http_request", "file_magic")  # content signals: named by Host or address


def kaspwatch_names(ndjson: str) -> set[str]:
    """The names of kaspwatch's name hits (content signals are counted apart: tshark reads
    no paths or magic, and their name is often an address)."""
    events = [json.loads(line) for line in ndjson.splitlines() if line]
    return {e["name"].lower() for e in events if e["kind"] not in CONTENT_KINDS}


def content_hits(ndjson: str) -> dict[str, int]:
    kinds = [json.loads(line)["kind"] for line in ndjson.splitlines() if line]
    return {k: kinds.count(k) for k in CONTENT_KINDS}


def tshark_names(fields: str, matcher: Matcher) -> tuple[set[str], int]:
    """(Kaspersky names, all distinct names) in tshark's field output."""
    kasp: set[str] = set()
    seen: set[str] = set()
    for line in fields.splitlines():
        for (_field, kind), cell in zip(TSHARK_FIELDS, line.split("\t"), strict=False):
            for raw in cell.split(","):
                name = raw.strip().lower().rstrip(".")
                if kind == "http_host":
                    name = re.sub(r"^\[([^]]*)\](:\d+)?$|^([^:]*):\d+$", r"\1\3", name)
                if not name:
                    continue
                seen.add(name)
                if matcher.match_name(name, kind) is not None:
                    kasp.add(name)
    return kasp, len(seen)


def machine(suricata: str) -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    tshark = subprocess.run(["tshark", "--version"], capture_output=True, text=True).stdout
    tcpdump = subprocess.run(["tcpdump", "--version"], capture_output=True, text=True).stdout
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return (
        f"{cpu}, {os.cpu_count()} cores, load average {load}, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, {tshark.splitlines()[0]}, "
        f"{' / '.join(tcpdump.splitlines()[:2])}, {suricata or 'no Suricata'}"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--upload-share",
        type=float,
        default=0.12,
        help="TCP sessions that upload (gen_mixed.py): client data the prefilter must keep",
    )
    ap.add_argument("--core", type=int, default=(os.cpu_count() or 1) - 1, help="taskset core")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "kaspwatch-bench")
    ap.add_argument("--memory", metavar="N,N,...", help="also compare peak RSS at these sizes")
    ap.add_argument("--reference", action="store_true", help="also time --no-prefilter once")
    ap.add_argument("--json", type=Path, help="write the figures here too")
    ap.add_argument("--suricata", metavar="BIN", help="Suricata 8 binary (default: see above)")
    ap.add_argument("--no-suricata", action="store_true", help="leave Suricata out")
    ap.add_argument(
        "--no-compare", action="store_true", help="only the --workers and start-up sections"
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="time scan --workers N against one worker (0: skip; default: the cores)",
    )
    ap.add_argument("--rotate", type=int, default=10, help="files the --workers archive has")
    ap.add_argument("--startup", type=int, default=10, metavar="K", help="start-up runs (0: skip)")
    ap.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="cpu",
        help="judge the targets on CPU time (user + system of each child: steady on a shared "
        "machine; the default) or on wall time (a quiet machine)",
    )
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [
        t
        for t in ("tshark", "editcap", "tcpdump", "taskset", "/usr/bin/time")
        if not shutil.which(t)
    ]
    if missing:
        print(f"scan_bench: missing {missing}: bash .ci/system-packages.sh", file=sys.stderr)
        return 2
    if args.runs < 3:
        print(
            "scan_bench: note: fewer than 3 runs; the targets are judged on >= 3", file=sys.stderr
        )
    args.workdir.mkdir(parents=True, exist_ok=True)
    matcher = Matcher(load_pack())
    expr = prefilter_expression(matcher.cidrs())
    path, info = capture(args.workdir, args.packets, args.seed, args.upload_share)
    pin = ["taskset", "-c", str(args.core)]
    kaspwatch = [sys.executable, "-m", "kaspwatch"]
    if args.no_compare:  # the --workers and start-up sections alone
        lines = [f"machine: {machine('')}", f"file: {path.name}: {args.packets:,} packets"]
        results: dict[str, object] = {"packets": args.packets}
        lines += workers_section(args, kaspwatch, path, results) if args.workers else []
        lines += startup_section(args.startup, results) if args.startup else []
        print("\n".join(lines))
        if args.json:
            args.json.write_text(json.dumps(results, indent=1) + "\n")
        return 0
    kw_cmd = [*pin, *kaspwatch, "scan", str(path)]
    fields = [f for f, _ in TSHARK_FIELDS]
    ts_cmd = [*pin, "tshark", "-n", "-r", str(path), "-T", "fields", "-E", "aggregator=,"]
    ts_cmd += [x for f in fields for x in ("-e", f)]
    td_cmd = [*pin, "tcpdump", "-n", "-r", str(path), "-w", "/dev/null", expr]
    tools = {"kaspwatch": kw_cmd}
    suricata = None if args.no_suricata else suricata_peer.find_suricata(args.suricata)
    suricata_version, n_rules = "", 0
    eve: dict[str, Path] = {}
    if suricata is None:
        why = "--no-suricata" if args.no_suricata else "no binary (--suricata, $SURICATA, or "
        why += "" if args.no_suricata else "tools/build_suricata.sh)"
        print(f"scan_bench: Suricata skipped: {why}", file=sys.stderr)
    else:
        suricata_version = suricata_peer.version(suricata)
        rules, n_rules = suricata_peer.export_rules(kaspwatch, args.workdir)
        for parsers in ("4", "all"):
            name = f"suricata-{parsers}"
            logdir = args.workdir / name
            logdir.mkdir(exist_ok=True)
            eve[name] = logdir / "eve.json"
            config = suricata_peer.write_config(args.workdir, parsers)
            tools[name] = [*pin, *suricata_peer.command(suricata, config, rules, path, logdir)]
    tools |= {"tshark": ts_cmd, "tcpdump": td_cmd}
    timings = {name: Timing() for name in tools}
    out_file = args.workdir / "out.txt"
    for r in range(args.runs):
        for name, cmd in tools.items():
            if name in eve:
                eve[name].unlink(missing_ok=True)  # EVE appends
            secs, cpu, rss = run(cmd, out_file)
            timings[name].seconds.append(secs)
            timings[name].cpu.append(cpu)
            timings[name].rss_kib.append(rss)
            if r == 0:
                timings[name].output = out_file.read_text(errors="replace")
            print(f"run {r + 1}/{args.runs} {name}: {secs:.2f} s, CPU {cpu:.2f} s", file=sys.stderr)
    packets = args.packets
    wall_pps = {name: packets / t.median("wall") for name, t in timings.items()}
    cpu_pps = {name: packets / t.median("cpu") for name, t in timings.items()}
    pps = cpu_pps if args.clock == "cpu" else wall_pps
    expected = {str(n) for n in info["kaspersky_names"]}  # type: ignore[attr-defined]
    kw_names = kaspwatch_names(timings["kaspwatch"].output)
    ts_names, ts_all = tshark_names(timings["tshark"].output, matcher)
    passed = _count_pcap(path, expr)
    lines = [
        f"machine: {machine(suricata_version)}",
        f"file: {path.name}: {packets:,} packets, {info['bytes']:,} bytes, "
        f"IPv6 {info['ipv6_share']:.0%}, DNS {info['dns_share']:.1%} of packets, "
        f"uploads {info['upload_share']:.0%} of TCP sessions, {info['counts']}",
        f"prefilter: {passed:,} packets ({passed / packets:.1%}) reach Python, "
        f"{packets - passed:,} skipped in C",
        f"runs: {args.runs}, medians, each tool pinned to core {args.core} (taskset); "
        f"targets judged on {args.clock} time",
        "",
        f"{'tool':<13} {'wall s':>7} {'packets/s':>11} {'ratio':>8} {'CPU s':>7} "
        f"{'packets/CPU s':>14} {'ratio':>8} {'peak RSS':>9}",
    ]
    for name, t in timings.items():
        lines.append(
            f"{name:<13} {t.median('wall'):>7.2f} {wall_pps[name]:>11,.0f} "
            f"{wall_pps['kaspwatch'] / wall_pps[name]:>7.2f}x {t.median('cpu'):>7.2f} "
            f"{cpu_pps[name]:>14,.0f} {cpu_pps['kaspwatch'] / cpu_pps[name]:>7.2f}x "
            f"{max(t.rss_kib) / 1024:>6.0f} MB"
        )
    lines.append("(ratio: kaspwatch's packets/s over the tool's)")
    lines += [
        "",
        f"Kaspersky names in the file (generator): {len(expected)}",
        f"  kaspwatch found {len(kw_names & expected)}, tshark found {len(ts_names & expected)} "
        f"(tshark saw {ts_all:,} distinct names in all)",
        f"  tshark found, kaspwatch did not: {sorted(ts_names - kw_names) or 'none'}",
        f"  kaspwatch found, tshark did not: {sorted(kw_names - ts_names) or 'none'}",
        f"  in the file, found by neither: {sorted(expected - kw_names - ts_names) or 'none'}",
        f"updater flows in the file: {info['counts'].get('updater_flow', 0)}; kaspwatch's "  # type: ignore[attr-defined]
        f"content hits: {content_hits(timings['kaspwatch'].output)}",
    ]
    su_names: dict[str, set[str]] = {}
    for name, log in eve.items():
        found, alerts = suricata_peer.alert_names(log)
        su_names[name] = found & expected
        lines.append(
            f"  {name} ({n_rules} rules): {alerts:,} alerts, found {len(su_names[name])}; "
            f"kaspwatch found, it did not: {sorted(expected & kw_names - found) or 'none'}; "
            f"it found, kaspwatch did not: {sorted(found & expected - kw_names) or 'none'}"
        )
    results = {
        "packets": packets,
        "machine": machine(suricata_version),
        "seconds": {n: t.seconds for n, t in timings.items()},
        "cpu_seconds": {n: t.cpu for n, t in timings.items()},
        "pps_wall": wall_pps,
        "pps_cpu": cpu_pps,
        "rss_kib": {n: max(t.rss_kib) for n, t in timings.items()},
        "names": {"expected": len(expected), "kaspwatch": len(kw_names), "tshark": len(ts_names)}
        | {n: len(v) for n, v in su_names.items()},
    }
    if args.reference:
        ref = [*pin, *kaspwatch, "scan", "--no-prefilter", str(path)]
        secs, cpu, rss = run(ref, out_file)
        same = kaspwatch_names(out_file.read_text()) == kw_names
        lines.append(
            f"reference: kaspwatch scan --no-prefilter: {secs:.2f} s ({packets / secs:,.0f} "
            f"packets/s), CPU {cpu:.2f} s ({packets / cpu:,.0f} packets/CPU s), "
            f"{rss / 1024:.0f} MB, same names as with the prefilter: {same}"
        )
        results["reference_pps"] = packets / secs
    every_name = expected <= kw_names and ts_names <= kw_names
    lines += [
        "",
        f"targets ({args.clock} time, kaspwatch finding every Kaspersky name: {every_name}):",
    ]
    for name in su_names:
        ratio = pps["kaspwatch"] / pps[name]
        lines.append(
            f"  kaspwatch >= {TARGET_VS_SURICATA:.0f}x {name} per core: {ratio:.2f}x -> "
            f"{'MET' if ratio >= TARGET_VS_SURICATA and every_name else 'NOT MET'}"
        )
    vs_tshark = pps["kaspwatch"] / pps["tshark"]
    vs_tcpdump = pps["kaspwatch"] / pps["tcpdump"]
    lines += [
        f"  kaspwatch >= {TARGET_VS_TSHARK:.0f}x tshark: {vs_tshark:.1f}x -> "
        f"{'MET' if vs_tshark >= TARGET_VS_TSHARK and every_name else 'NOT MET'}",
        f"  stretch: within {1 / TARGET_VS_TCPDUMP:.1f}x of tcpdump's floor: kaspwatch takes "
        f"{1 / vs_tcpdump:.2f}x its time -> {'MET' if vs_tcpdump >= TARGET_VS_TCPDUMP else 'NOT MET'}",
    ]
    if args.workers:
        lines += workers_section(args, kaspwatch, path, results)
    if args.startup:
        lines += startup_section(args.startup, results)
    if args.memory:
        lines += memory_section(args, pin, kaspwatch, out_file, results)
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


def workers_section(
    args: argparse.Namespace, kaspwatch: list[str], path: Path, results: dict[str, object]
) -> list[str]:
    """``scan --workers N`` against ``--workers 1``, interleaved, unpinned: the one file
    (flow sharding) and the file cut into ``--rotate`` files (runs of files)."""
    n = args.workers
    rotated_dir = args.workdir / f"{path.stem}-rot{args.rotate}"
    if not rotated_dir.is_dir():
        rotated_dir.mkdir()
        total = int(args.packets)
        per = -(-total // args.rotate)
        subprocess.run(["editcap", "-c", str(per), str(path), str(rotated_dir / "part.pcap")],
                       check=True)  # fmt: skip
    rotated = sorted(str(p) for p in rotated_dir.glob("part*.pcap"))
    sets = {"1 file": [str(path)], f"{len(rotated)} files": rotated}
    lines = ["", f"scan --workers {n} against --workers 1 (unpinned, {args.runs} runs, medians):"]
    figures: dict[str, object] = {}
    for label, files in sets.items():
        t = {w: Timing() for w in (1, n)}
        outs: dict[int, list[str]] = {}
        paths: list[float] = []  # the critical path: the parent's CPU + the busiest worker's
        for _ in range(args.runs):
            for w in (1, n):
                out = args.workdir / f"workers-{w}.ndjson"
                err: list[str] = []
                cmd = [*kaspwatch, "-v", "scan", "--workers", str(w), *files]
                secs, cpu, _rss = run(cmd, out, err)
                t[w].seconds.append(secs)
                t[w].cpu.append(cpu)
                outs[w] = sorted(out.read_text().splitlines())
                worker_cpu = [float(x) for x in WORKER_CPU.findall(err[0])]
                if w == n and worker_cpu:
                    paths.append(cpu - sum(worker_cpu) + max(worker_cpu))
        same = outs[1] == outs[n]
        speedup = t[1].median("wall") / t[n].median("wall")
        path_speedup = t[1].median("cpu") / statistics.median(paths) if paths else 0.0
        lines.append(
            f"  {label}: 1 worker {t[1].median('wall'):.2f} s (CPU {t[1].median('cpu'):.2f} s), "
            f"{n} workers {t[n].median('wall'):.2f} s (CPU {t[n].median('cpu'):.2f} s, critical "
            f"path {statistics.median(paths) if paths else 0:.2f} s): {speedup:.2f}x wall on "
            f"{os.cpu_count()} cores, {path_speedup:.2f}x by CPU path (idle {n} cores); "
            f"same {len(outs[1]):,} events: {same}"
        )
        figures[label] = {
            "wall": {w: t[w].seconds for w in t},
            "cpu": {w: t[w].cpu for w in t},
            "critical_path_cpu": paths,
        }
    results["workers"] = figures
    return lines


def startup_section(k: int, results: dict[str, object]) -> list[str]:
    """``kaspwatch scan samples/sample.pcap``, K times, through the installed entry point."""
    entry = Path(sys.executable).parent / "kaspwatch"
    cmd = [str(entry)] if entry.exists() else [sys.executable, "-m", "kaspwatch"]
    sample = REPO / "samples" / "sample.pcap"
    t = Timing()
    for _ in range(k):
        secs, cpu, _rss = run([*cmd, "scan", str(sample)])
        t.seconds.append(secs)
        t.cpu.append(cpu)
    wall = statistics.median(t.seconds)
    results["startup"] = {"wall": t.seconds, "cpu": t.cpu}
    return [
        "",
        f"start-up: {' '.join(cmd)} scan samples/sample.pcap, {k} runs: median wall "
        f"{wall * 1000:.0f} ms (least {min(t.seconds) * 1000:.0f}), CPU "
        f"{statistics.median(t.cpu) * 1000:.0f} ms (least {min(t.cpu) * 1000:.0f}) "
        f"(GNU time: 10 ms steps) -> < {TARGET_STARTUP_S * 1000:.0f} ms: "
        f"{'MET' if wall < TARGET_STARTUP_S else 'NOT MET'}",
    ]


def memory_section(
    args: argparse.Namespace,
    pin: list[str],
    kaspwatch: list[str],
    out_file: Path,
    results: dict[str, object],
) -> list[str]:
    sizes = [int(s) for s in args.memory.split(",")]
    rss_by_size = []
    lines = [""]
    for n in sizes:
        p, _ = capture(args.workdir, n, args.seed, args.upload_share)
        secs, cpu, rss = run([*pin, *kaspwatch, "scan", str(p)], out_file)
        rss_by_size.append(rss)
        lines.append(
            f"memory: {n:,} packets: kaspwatch peak RSS {rss / 1024:.0f} MB "
            f"({n / secs:,.0f} packets/s, {n / cpu:,.0f} packets/CPU s)"
        )
    growth = rss_by_size[-1] / rss_by_size[0]
    lines.append(
        f"target memory flat: RSS {sizes[-1]:,} / {sizes[0]:,} packets = {growth:.2f} -> "
        f"{'MET' if growth <= TARGET_MEMORY_GROWTH else 'NOT MET'}"
    )
    results["memory_rss_kib"] = dict(zip(sizes, rss_by_size, strict=True))
    return lines


def _count_pcap(path: Path, expr: str) -> int:
    """Packets the prefilter passes, counted by tcpdump itself."""
    proc = subprocess.run(
        ["tcpdump", "-n", "-q", "-r", str(path), "--count", expr],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(proc.stdout.split()[0])


if __name__ == "__main__":
    raise SystemExit(main())
