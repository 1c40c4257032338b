"""End-to-end latency and consumer throughput on a real Kafka broker.

Latency: `kaspwatch sense` captures live on a veth between two throw-away namespaces and
publishes to a broker (kafka-local.sh, inside the sensor's namespace, so nothing listens
outside it); `kaspwatch alerts` raises alerts to the Kafka alerts topic. tcpreplay sends
one Kaspersky DNS query per distinct client host (bench/hitload.py) at each rate, so every
hit raises exactly one first-contact alert: latency = the alert record's broker append
time (the alerts topic uses LogAppendTime) minus the packet's capture time (the kernel's
receive timestamp, carried as the event's ts and the OCSF finding's `time`), both in ms.

Throughput: N hits (from --hosts client hosts) preloaded into a topic; `kaspwatch alerts`,
`kaspwatch metrics` and `kaspwatch store --db sqlite:///…` each drain it alone; hits/s =
offsets committed per second from the group's first commit until its lag is 0.

Needs root. Run: .venv/bin/python bench/e2e_bench.py   (--profile adds a py-spy profile of
the slowest consumer)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402

from bench.hitload import client_ip, frames, write_pcap  # noqa: E402
from kaspwatch.event import ALERTS_TOPIC, HITS_TOPIC  # noqa: E402
from tests.kafkautil import create_topics, group_progress  # noqa: E402
from tests.netns import namespace_pair  # noqa: E402

KAFKA_SH = REPO / "deploy" / "kafka" / "kafka-local.sh"
PY_SPY = shutil.which(
    "py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
)
KW = [sys.executable, "-m", "kaspwatch"]
LAT_HEAD = (
    "| rate | alerts/expected | p50 ms | p99 ms | max ms | sensor p50 ms | sensor p99 ms |\n"
    "|---|---|---|---|---|---|---|"
)


def outside(args: argparse.Namespace, rest: list[str]) -> int:
    """Create the namespaces, then run the bench inside the sensor's namespace."""
    if os.geteuid() != 0:
        sys.exit("e2e_bench: needs root (network namespaces, AF_PACKET)")
    if not all(shutil.which(t) for t in ("ip", "tcpreplay", "java")):
        subprocess.run(["bash", str(REPO / ".ci" / "system-packages.sh")], check=True)
    if not any((KAFKA_SH.parent / "libs").glob("kafka_2.13-*.jar")):
        subprocess.run(["bash", str(KAFKA_SH), "fetch"], check=True)
    with namespace_pair("e2e") as net:
        server_if = "kws" + net.client_if[3:]
        inner = [sys.executable, __file__, "--inside", net.client_if, net.server, server_if]
        return subprocess.run(["ip", "netns", "exec", net.client, *inner, *rest]).returncode


@contextlib.contextmanager
def broker(workdir: Path) -> Iterator[str]:
    env = {**os.environ, "KAFKA_RUN_DIR": str(workdir / "kafka")}
    out = subprocess.run(
        ["bash", str(KAFKA_SH), "start"], env=env, stdout=subprocess.PIPE, text=True, check=True
    )
    try:
        yield out.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(["bash", str(KAFKA_SH), "stop"], env=env, check=False, timeout=120)


def spawn(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log.open("wb"))


def wait_log(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"e2e_bench: {log.name} never said {text!r}:\n{log.read_text()}")
        time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def pct(values: list[int], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if values else 0


async def collect_alerts(
    reader: AIOKafkaConsumer, want: set[str], deadline: float
) -> tuple[list[int], list[int]]:
    """For the alerts of the ``want`` hosts, until all came or ``deadline``: end-to-end
    latencies (alert appended - packet captured) and the sensor's share (hit appended to
    the hits topic - packet captured), in ms. Both topics use LogAppendTime."""
    lat: list[int] = []
    hit_at: dict[str, int] = {}
    captured: dict[str, int] = {}
    while want and time.time() < deadline:
        batches = await reader.getmany(timeout_ms=200)
        for msgs in batches.values():
            for m in msgs:
                doc = json.loads(m.value)
                if m.topic == HITS_TOPIC:
                    hit_at.setdefault(doc["host"], m.timestamp)
                    continue
                host = doc["device"]["ip"]
                if host in want:
                    want.discard(host)
                    lat.append(m.timestamp - doc["time"])
                    captured[host] = doc["time"]
    sensor = [hit_at[h] - t for h, t in captured.items() if h in hit_at]
    return lat, sensor


async def latency(args: argparse.Namespace, bootstrap: str, tmp: Path) -> list[str]:
    client_if, server_ns, server_if = args.inside
    bus = f"kafka://{bootstrap}"
    await create_topics(
        bootstrap,
        (HITS_TOPIC, 3),
        (ALERTS_TOPIC, 3),
        configs={"message.timestamp.type": "LogAppendTime"},  # arrival, not send time
    )
    alerts = spawn(
        [*KW, "alerts", "--bus", bus, "--no-stdout", "--state", str(tmp / "a.sqlite")],
        tmp / "alerts.log",
    )
    sense = spawn(
        [*KW, "sense", "--interface", client_if, "--bus", bus, "--sensor", "e2e"],
        tmp / "sense.log",
    )
    reader = AIOKafkaConsumer(
        ALERTS_TOPIC,
        HITS_TOPIC,
        bootstrap_servers=bootstrap,
        group_id=None,
        fetch_max_wait_ms=20,
        max_partition_fetch_bytes=4 << 20,
    )
    rows = []
    try:
        wait_log(tmp / "sense.log", "capturing on", sense)
        await reader.start()
        plan = [(99, 1000, 300)]  # warm-up: connections, metadata, group join
        plan += [(100 + i, r, r * args.seconds) for i, r in enumerate(args.rates)]
        for base, rate, count in plan:
            pcap = tmp / f"hits-{base}.pcap"
            write_pcap(pcap, frames(count, base))
            want = {client_ip(n, base) for n in range(count)}
            replay = subprocess.Popen(
                [
                    *("ip", "netns", "exec", server_ns, "tcpreplay", "-q", "--preload-pcap"),
                    *(f"--pps={rate}", "-i", server_if, str(pcap)),
                ],
                stdout=subprocess.DEVNULL,
            )
            lat, sensor = await collect_alerts(reader, want, time.time() + count / rate + 90)
            replay.wait()
            if base == 99:
                continue
            rows.append(
                f"| {rate:>6} hits/s | {len(lat):>6}/{count:<6} | {pct(lat, 50):>7.0f} | "
                f"{pct(lat, 99):>7.0f} | {max(lat, default=0):>7} | "
                f"{pct(sensor, 50):>7.0f} | {pct(sensor, 99):>7.0f} |"
            )
            print(rows[-1], flush=True)
    finally:
        await reader.stop()
        for p in (sense, alerts):
            stop(p)
    return rows


async def preload(bootstrap: str, topic: str, count: int, hosts: int, tmp: Path) -> None:
    pcap = tmp / "preload.pcap"
    write_pcap(pcap, frames(count, 150, hosts))
    scan = subprocess.run(
        [*KW, "scan", "--sensor", "bench", str(pcap)], capture_output=True, check=True
    )
    events = scan.stdout.splitlines()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, acks=1)
    await producer.start()
    try:
        for i in range(0, len(events), 5000):
            futs = [
                await producer.send(topic, ev, key=json.loads(ev)["host"].encode())
                for ev in events[i : i + 5000]
            ]
            await asyncio.gather(*futs)
    finally:
        await producer.stop()


async def drain(
    name: str, cmd: list[str], bootstrap: str, group: str, topic: str, tmp: Path, profile: bool
) -> tuple[float, str]:
    """hits/s from the group's first commit until its lag is 0."""
    proc = spawn(cmd, tmp / f"{name}.log")
    spy = None
    first: tuple[float, int] | None = None
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            committed, end = await group_progress(bootstrap, group, topic)
            now = time.monotonic()
            if committed and first is None:
                first = (now, committed)
                if profile:  # from the first commit: start-up is not what we are after
                    spy = subprocess.Popen(
                        [
                            *(str(PY_SPY), "record", "-p", str(proc.pid), "-f", "raw"),
                            *("-o", str(tmp / f"{name}.folded"), "--nonblocking"),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
            if end is not None and committed == end and first is not None:
                rate = (committed - first[1]) / (now - first[0]) if now > first[0] else 0.0
                break
            if proc.poll() is not None:
                sys.exit(f"e2e_bench: {name} exited:\n{(tmp / f'{name}.log').read_text()}")
            await asyncio.sleep(0.25)
        else:
            rate = 0.0
    finally:
        stop(proc)
        if spy is not None:
            spy.wait()
    return rate, (tmp / f"{name}.folded").read_text() if profile else ""


_ENTRY = (
    "__main__.py",
    "cli/__init__.py",
    "cli/run.py",
    "cli/sense.py",
    "cli/alerts.py",
)  # always on the stack


def hot_spots(folded: str, n: int = 8) -> list[str]:
    """From py-spy's folded stacks: the functions most often on top of the stack (self),
    and the project's own functions by time spent in them and below (total)."""
    own: dict[str, int] = {}
    total_in: dict[str, int] = {}
    total = 0
    for line in folded.splitlines():
        stack, _, count = line.rpartition(" ")
        k = int(count)
        frames = stack.split(";")
        own[frames[-1]] = own.get(frames[-1], 0) + k
        for f in set(frames):
            own_code = "(kaspwatch/" in f or "(consumers/" in f or "(sensor/" in f
            if own_code and not any(e in f for e in _ENTRY):
                total_in[f] = total_in.get(f, 0) + k
        total += k
    rows = []
    for label, table in (("self", own), ("total", total_in)):
        for f, k in sorted(table.items(), key=lambda kv: -kv[1])[:n]:
            rows.append(f"  {label:<5} {k / max(total, 1):6.1%}  {f}")
    return rows


async def throughput(args: argparse.Namespace, bootstrap: str, tmp: Path) -> list[str]:
    topic = "bench.hits"
    await create_topics(bootstrap, (topic, 3))
    started = time.monotonic()
    await preload(bootstrap, topic, args.preload, args.hosts, tmp)
    print(f"preloaded {args.preload} hits in {time.monotonic() - started:.1f} s", flush=True)
    bus = f"kafka://{bootstrap}"
    consumers = {
        "alerts": [
            *(*KW, "alerts", "--bus", bus, "--topic", topic, "--alerts-topic", "bench.al"),
            *("--no-stdout", "--state", str(tmp / "t.sqlite")),
        ],
        "metrics": [*KW, "metrics", "--bus", bus, "--topic", topic, "--listen", "127.0.0.1:19108"],
        "store": [*KW, "store", "--bus", bus, "--topic", topic, "--db", f"sqlite:///{tmp}/s.db"],
    }
    rates = {}
    for name, cmd in consumers.items():
        group = f"bench-{name}"
        rates[name], _ = await drain(
            name, [*cmd, "--group", group], bootstrap, group, topic, tmp, False
        )
        print(f"| {name:<7} | {rates[name]:>8.0f} hits/s |", flush=True)
    rows = [f"| {name:<7} | {r:>8.0f} hits/s |" for name, r in rates.items()]
    if args.profile:
        slowest = min(rates, key=lambda k: rates[k])
        group = f"bench-{slowest}-profile"
        _, folded = await drain(
            slowest, [*consumers[slowest], "--group", group], bootstrap, group, topic, tmp, True
        )
        rows.append(f"py-spy, {slowest}, while draining:")
        rows += hot_spots(folded)
    return rows


async def inside(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="kw-e2e-") as t:
        tmp = Path(t)
        with broker(tmp) as bootstrap:
            print(
                f"broker {bootstrap} in the sensor's namespace; {os.cpu_count()} cores, "
                f"load average {os.getloadavg()[0]:.1f}"
            )
            print(LAT_HEAD)
            lat = await latency(args, bootstrap, tmp)
            print(f"| consumer | {args.preload} hits from {args.hosts} hosts |")
            print("|---|---|")
            tput = await throughput(args, bootstrap, tmp)
    print(f"\nsummary (load average at the end {os.getloadavg()[0]:.1f})")
    print(LAT_HEAD)
    print("\n".join(lat))
    print(f"| consumer (alone, {args.preload} hits, {args.hosts} hosts) | drain rate |\n|---|---|")
    print("\n".join(tput))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", type=lambda s: [int(r) for r in s.split(",")], default=[1000, 10000])
    ap.add_argument("--seconds", type=int, default=5, help="replay length per rate")
    ap.add_argument("--preload", type=int, default=100_000, help="hits for the drain test")
    ap.add_argument("--hosts", type=int, default=2000, help="client hosts among those hits")
    ap.add_argument("--profile", action="store_true", help="py-spy the slowest consumer")
    ap.add_argument("--inside", nargs=3, metavar=("CLIENT_IF", "SERVER_NS", "SERVER_IF"))
    args, _ = ap.parse_known_args()
    if args.profile and PY_SPY is None:
        sys.exit("e2e_bench: --profile needs py-spy (a dev dependency: make test installs it)")
    if args.inside is None:
        return outside(args, sys.argv[1:])
    return asyncio.run(inside(args))


if __name__ == "__main__":
    raise SystemExit(main())
