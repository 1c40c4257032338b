"""The compiled decoders (native/) against the pure-Python ones, and ``kaspwatch scan`` against
its peers, by CPU time (user + system: steady on a shared machine):

    .venv/bin/python bench/decoders_bench.py CAPTURE [--runs 3] [--core 1]
        [--suricata BIN] [--tshark] [--decoders-only]

1. Per message, in process: each decoder on the messages of its kind taken from CAPTURE
   (DNS messages, TLS ClientHellos, HTTP request heads, QUIC client Initials -- a fresh
   tracker each, so key derivation counts as on a first Initial), pure then compiled.
2. Per process, pinned to one core (taskset) and timed by GNU time, the tools interleaved
   run by run: ``kaspwatch scan`` with the compiled decoders and with ``KASPWATCH_PURE=1``;
   its start-up alone (the same command on an empty capture); ``tcpdump -w /dev/null`` with
   kaspwatch's own prefilter (the floor: libpcap reading the file); Suricata
   (``--runmode single``, kaspwatch's exported rules, alerts only) with ``--suricata``;
   tshark (the fields scan_bench.py reads) with ``--tshark``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from sensor.decode import DecodeError
from sensor.decode.native import COMPILED, PURE
from sensor.decode.packet import PROTO_TCP, PROTO_UDP, PacketDecoder
from sensor.decode.quic import QuicInitialTracker, looks_like_quic_initial
from sensor.rules.indicators import load_pack
from sensor.rules.match import Matcher
from sensor.sources.pcapfile import CaptureFile
from sensor.sources.prefilter import prefilter_expression

REPO = Path(__file__).resolve().parent.parent
FLOW = (b"\x0a\0\0\x01", 40000, b"\x0a\0\0\x02", 443)


def messages(path: Path, per_kind: int = 3000) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {"dns": [], "tls": [], "http": [], "quic": []}
    dec = PacketDecoder()
    with CaptureFile(str(path)) as cap:
        for ts, linktype, frame in cap:
            try:
                seg = dec.decode(linktype, frame, ts)
            except DecodeError:
                continue
            if seg is None or not seg.payload:
                continue
            p = seg.payload
            if seg.proto == PROTO_UDP and 53 in (seg.sport, seg.dport):
                kind = "dns"
            elif seg.proto == PROTO_UDP and looks_like_quic_initial(p) and seg.dport == 443:
                kind = "quic"
            elif seg.proto == PROTO_TCP and p[:1] == b"\x16" and p[5:6] == b"\x01":
                kind = "tls"
            elif seg.proto == PROTO_TCP and p[:4] in (b"GET ", b"POST", b"CONN"):
                kind = "http"
            else:
                continue
            if len(out[kind]) < per_kind:
                out[kind].append(p)
            if all(len(v) >= per_kind for v in out.values()):
                break
    return out


def per_message(msgs: dict[str, list[bytes]], pure: bool) -> dict[str, float]:
    """Median over 5 passes of the CPU µs per message of each kind."""
    d = PURE if pure else COMPILED
    assert d is not None

    def quic(p: bytes) -> object:
        return QuicInitialTracker(pure=pure).feed(FLOW, p, 0.0)

    calls: dict[str, Callable[[bytes], object]] = {
        "dns": d.decode_dns,
        "tls": d.hello_from_stream,
        "http": d.decode_http_request,
        "quic": quic,
    }
    out = {}
    for kind, f in calls.items():
        items = msgs[kind]
        if not items:
            continue
        passes = []
        for _ in range(5):
            t0 = time.process_time()
            for p in items:
                with contextlib.suppress(DecodeError):
                    f(p)
            passes.append((time.process_time() - t0) / len(items) * 1e6)
        out[kind] = statistics.median(passes)
    return out


def cpu(cmd: list[str], env: dict[str, str] | None = None) -> float:
    with tempfile.NamedTemporaryFile("r") as t:
        timed = ["/usr/bin/time", "-q", "-f", "%U %S", "-o", t.name, *cmd]
        proc = subprocess.run(
            timed, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, check=False
        )
        if proc.returncode != 0:
            raise SystemExit(
                f"decoders_bench: {' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-500:]!r}"
            )
        user, system = t.read().split()[-2:]
    return float(user) + float(system)


def suricata_setup(binary: str, work: Path) -> list[str]:
    rules = subprocess.run([sys.executable, "-m", "kaspwatch", "indicators", "export", "--format", "suricata"],
                           capture_output=True, text=True, check=True).stdout  # fmt: skip
    (work / "kaspwatch.rules").write_text(rules)
    conf = Path(binary).resolve().parent.parent / "etc" / "suricata" / "suricata.yaml"
    cfg: dict[str, Any] = yaml.safe_load(conf.read_text().split("\n---\n", 1)[-1])
    cfg["default-rule-path"] = str(work)
    cfg["rule-files"] = ["kaspwatch.rules"]
    cfg["outputs"] = [
        {
            "eve-log": {
                "enabled": True,
                "filetype": "regular",
                "filename": "eve.json",
                "types": [{"alert": {}}],
            }
        }
    ]
    (work / "suricata.yaml").write_text("%YAML 1.1\n---\n" + yaml.safe_dump(cfg))
    (work / "out").mkdir(exist_ok=True)
    print(
        f"suricata: {rules.count(chr(10) + 'alert') + rules.startswith('alert')} rules",
        file=sys.stderr,
    )
    return [
        binary,
        "-c",
        str(work / "suricata.yaml"),
        "--runmode",
        "single",
        "-k",
        "none",
        "-l",
        str(work / "out"),
        "-r",
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("capture", type=Path)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--core", type=int, default=(os.cpu_count() or 1) - 1)
    ap.add_argument("--suricata", help="a suricata binary to time too")
    ap.add_argument(
        "--tshark", action="store_true", help="time tshark too (slow: ~20 s per 1M packets)"
    )
    ap.add_argument("--decoders-only", action="store_true")
    args = ap.parse_args()
    if COMPILED is None:
        print("decoders_bench: the compiled decoders are not built (make)", file=sys.stderr)
        return 2
    msgs = messages(args.capture)
    pure, comp = per_message(msgs, True), per_message(msgs, False)
    print("decoder          messages  pure µs  compiled µs  speed-up")
    for kind in pure:
        print(
            f"{kind:<16} {len(msgs[kind]):>8} {pure[kind]:>8.1f} {comp[kind]:>12.2f} {pure[kind] / comp[kind]:>8.1f}x"
        )
    if args.decoders_only:
        return 0
    work = Path(tempfile.mkdtemp(prefix="kw-decoders-bench-"))
    empty = work / "empty.pcap"
    empty.write_bytes(bytes.fromhex("d4c3b2a1020004000000000000000000ffff000001000000"))
    pin = ["taskset", "-c", str(args.core)]
    scan = [*pin, sys.executable, "-m", "kaspwatch", "scan", "--format", "ndjson"]
    pure_env = {**os.environ, "KASPWATCH_PURE": "1"}
    expr = prefilter_expression(Matcher(load_pack()).cidrs())
    tools: dict[str, tuple[list[str], dict[str, str] | None]] = {
        "scan (compiled)": ([*scan, str(args.capture)], None),
        "scan (pure)": ([*scan, str(args.capture)], pure_env),
        "start-up": ([*scan, str(empty)], None),
        "tcpdump floor": (
            [*pin, "tcpdump", "-n", "-r", str(args.capture), "-w", "/dev/null", expr],
            None,
        ),
    }
    if args.suricata:
        tools["suricata"] = ([*pin, *suricata_setup(args.suricata, work), str(args.capture)], None)
    if args.tshark:
        fields = [
            "dns.qry.name",
            "dns.cname",
            "tls.handshake.extensions_server_name",
            "http.host",
            "http.request.uri",
        ]
        tools["tshark"] = (
            [
                *pin,
                "tshark",
                "-n",
                "-r",
                str(args.capture),
                "-T",
                "fields",
                *[x for f in fields for x in ("-e", f)],
            ],
            None,
        )
    times: dict[str, list[float]] = {k: [] for k in tools}
    for r in range(args.runs):
        for name, (cmd, env) in tools.items():
            times[name].append(cpu(cmd, env))
            print(f"run {r + 1}/{args.runs} {name}: CPU {times[name][-1]:.2f} s", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"\nprocess CPU s (user+sys, median of {args.runs}, core {args.core}): {args.capture.name}"
    )
    for name, v in med.items():
        print(f"{name:<16} {v:>7.2f}  (runs {', '.join(f'{x:.2f}' for x in times[name])})")
    kw = med["scan (compiled)"]
    print(f"\nscan (compiled) vs pure: {med['scan (pure)'] / kw:.2f}x less CPU")
    for peer in ("suricata", "tshark"):
        if peer in med:
            print(
                f"scan (compiled) vs {peer}: {med[peer] / kw:.2f}x less CPU (pure: {med[peer] / med['scan (pure)']:.2f}x)"
            )
    print(
        f"scan (compiled) / tcpdump floor: {kw / med['tcpdump floor']:.2f}x (pure: {med['scan (pure)'] / med['tcpdump floor']:.2f}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
