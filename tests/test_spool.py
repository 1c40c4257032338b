"""The on-disk spool: a broker outage loses no hit.

Unit tests of the queue (order, bounds, both drop policies, restart, corrupt tail), then the
real thing: ``kaspwatch sense`` captures live DNS traffic on loopback while the test stops
its own Kafka broker for 30 s and restarts it with its data; every hit arrives, in order,
and none twice after deduplication by ``event_id``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.message
import pytest

from kaspwatch.bus.memory import MemoryBus
from kaspwatch.bus.spool import (
    DROPPED,
    POLICIES,
    SPOOLED,
    Spool,
    SpoolError,
    SpoolRecord,
)
from kaspwatch.bus.spooling_publisher import SpoolingPublisher
from tests.cliprocs import wait_for
from tests.kafkautil import (
    LocalBroker,
    create_topics,
    partitions,
    read_topic,
    scrape,
    topic_config,
    wait_metrics,
)
from tests.netns import need_tools
from tests.testenv import KASPWATCH, free_port


def rec(n: int) -> SpoolRecord:
    return SpoolRecord("hits", f"10.0.0.{n % 7}".encode(), f'{{"n":{n}}}'.encode())


def values(spool: Spool) -> list[int]:
    return [json.loads(r.value)["n"] for r in spool]


# ---------------------------------------------------------------- the queue


def test_order_segments_ack_and_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=4096)
    for n in range(300):
        assert spool.append(rec(n))
    spool.sync()
    assert len(list(tmp_path.glob("*.seg"))) > 2  # several segments
    assert values(spool) == list(range(300)) and spool.depth_records == 300
    recs, pos = spool.peek(120, 1 << 20)
    assert [json.loads(r.value)["n"] for r in recs] == list(range(120))
    assert recs[0] == rec(0)  # topic, key and value come back exactly
    spool.ack(pos, len(recs))
    assert spool.depth_records == 180
    spool.close()

    again = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=4096)  # a restarted sensor
    assert values(again) == list(range(120, 300))
    assert again.depth_bytes == sum(len(rec(n).encode()) for n in range(120, 300))
    again.append(rec(300))
    again.sync()
    recs, pos = again.peek(1000, 1 << 20)
    again.ack(pos, len(recs))
    assert again.depth_records == 0 and not list(tmp_path.glob("*.seg"))  # deleted once acked
    again.close()
    assert Spool(tmp_path).depth_records == 0


def test_peek_respects_round_bounds(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for n in range(10):
        spool.append(rec(n))
    assert len(spool.peek(4, 1 << 20)[0]) == 4
    one = len(rec(0).encode())
    assert len(spool.peek(100, 3 * one)[0]) == 3
    assert len(spool.peek(100, 1)[0]) == 1  # always at least one


@pytest.mark.parametrize(
    ("policy", "kept"), [("drop-newest", list(range(5))), ("drop-oldest", list(range(7, 12)))]
)
def test_full_spool_drops_by_policy_counts_and_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, policy: str, kept: list[int]
) -> None:
    spool = Spool(tmp_path, max_records=5, policy=policy)
    with caplog.at_level(logging.ERROR, logger="kaspwatch.spool"):
        results = [spool.append(rec(n)) for n in range(12)]
        spool.close()
    assert values(spool) == kept
    assert spool.stats.dropped[policy] == 7 and sum(spool.stats.dropped.values()) == 7
    if policy == "drop-newest":
        assert results == [True] * 5 + [False] * 7
    lines = [r.getMessage() for r in caplog.records]
    assert any(f"{policy} lost 1 hits (1 in total)" in m for m in lines)  # the first, at once
    assert any(f"{policy} lost 6 hits (7 in total)" in m for m in lines)  # the rest, on close


def test_byte_bound(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=4096, policy="drop-oldest")
    for n in range(1000):
        spool.append(rec(n))
    assert 4096 - len(rec(999).encode()) < spool.depth_bytes <= 4096  # full, never over
    assert values(spool) == list(range(1000 - spool.depth_records, 1000))
    assert spool.stats.dropped["drop-oldest"] == 1000 - spool.depth_records


def test_corrupt_tail_is_reported_skipped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path)
    for n in range(10):
        spool.append(rec(n))
    spool.close()
    (seg,) = tmp_path.glob("*.seg")
    data = bytearray(seg.read_bytes())
    size = len(rec(0).encode())
    data[6 * size + 12] ^= 0xFF  # a flipped bit in the 7th record
    seg.write_bytes(bytes(data[: 9 * size + 5]))  # and a cut-off 10th
    with caplog.at_level(logging.ERROR, logger="kaspwatch.spool"):
        again = Spool(tmp_path)
    assert values(again) == list(range(6))
    assert again.stats.corrupt == 1 and again.stats.corrupt_bytes == 3 * size + 5
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert f"{seg}: offset {6 * size}: CRC mismatch" in msg

    seg2 = tmp_path / "000000000099.seg"
    seg2.write_bytes(rec(99).encode()[:5])  # a header cut short by a crash
    with caplog.at_level(logging.ERROR, logger="kaspwatch.spool"):
        third = Spool(tmp_path)
    assert third.stats.corrupt == 2 and f"{seg2}: offset 0: cut-off record header" in " ".join(
        r.getMessage() for r in caplog.records
    )
    assert values(third) == list(range(6))


def test_bad_settings_and_unwritable_directory(tmp_path: Path) -> None:
    with pytest.raises(SpoolError, match="policy 'drop-random'"):
        Spool(tmp_path, policy="drop-random")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SpoolError, match=f"spool {blocker}/s: not writable"):
        Spool(blocker / "s")


def test_spool_settings_from_config_flags_and_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kaspwatch.cli import build_parser
    from kaspwatch.cli.config import ConfigError, load_config, resolve

    cfg = tmp_path / "kaspwatch.yaml"
    cfg.write_text(
        "sensor: edge/1\nspool_dir: sp\nspool_max_bytes: 64M\nspool_policy: drop-newest\n"
    )
    c = load_config(str(cfg))
    assert (c.spool_dir, c.spool_max_bytes, c.spool_policy) == (
        str(tmp_path / "sp"),
        64 << 20,
        "drop-newest",
    )
    for body, msg in (
        ("\nspool_max_bytes: lots\n", ":2: size 'lots'"),
        ("spool_policy: drop-random\n", ":1: spool_policy must be one of"),
    ):
        cfg.write_text(body)
        with pytest.raises(ConfigError, match=msg):
            load_config(str(cfg))
    monkeypatch.setenv("KASPWATCH_STATE_DIR", str(tmp_path / "state"))
    args = build_parser().parse_args(
        [
            "sense",
            "--pcap",
            "x",
            "--bus",
            "memory://",
            "--sensor",
            "edge/1",
            "--spool-max-bytes",
            "1G",
        ]
    )
    resolve(args)
    assert args.spool_dir == str(tmp_path / "state" / "spool-edge_1")
    assert (args.spool_max_bytes, args.spool_policy) == (1 << 30, "drop-oldest")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["sense", "--pcap", "x", "--spool-max-bytes", "-3"])


# ---------------------------------------------------------------- the publisher's order


class FlakyBus:
    """The in-process bus with an outage switch: ``fail`` rejects every send after a short
    while, ``hang`` never answers (a client that is stuck). Not Kafka: the order logic only;
    the real broker is below."""

    mode = "up"
    clients = 0

    def __init__(self, bus: MemoryBus) -> None:
        self.inner = bus.publisher()
        FlakyBus.clients += 1

    async def start(self) -> None:
        if FlakyBus.mode != "up":
            raise ConnectionError("bus down")

    async def prepare(self, topics: list[str]) -> None:
        return None

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> asyncio.Future[Any]:
        if FlakyBus.mode == "up":
            return await self.inner.send(topic, value, key)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if FlakyBus.mode == "fail":
            asyncio.get_running_loop().call_later(0.05, fut.set_exception, ConnectionError("down"))
        return fut  # hang: never resolved

    async def flush(self) -> None:
        return None

    async def stop(self) -> None:
        return None


@pytest.mark.parametrize("outage", ["fail", "hang"])
async def test_publisher_keeps_order_through_an_outage_and_loses_nothing(
    tmp_path: Path, outage: str
) -> None:
    bus = MemoryBus.named(f"flaky-{outage}")
    FlakyBus.mode, FlakyBus.clients = "up", 0
    pub = SpoolingPublisher(
        lambda: FlakyBus(bus), Spool(tmp_path), delivery_timeout=0.05, round_records=7,
        retry_s=0.05, grace_s=0.2,
    )  # fmt: skip
    await pub.start()
    results: list[Any] = []
    n = 0

    async def send(count: int) -> None:
        nonlocal n
        for _ in range(count):
            results.append(await pub.send("hits", f'{{"n":{n}}}'.encode(), b"h"))
            n += 1
            if n % 5 == 0:
                await asyncio.sleep(0.01)  # a capture batch: the loop runs in between

    await send(40)
    FlakyBus.mode = outage
    await send(60)
    # the round in flight fails (or times out after limit_s); later hits spool
    await wait_for(lambda: pub.down and pub.spool.depth_records > 0, 10, "the publisher to spool")
    await send(40)
    FlakyBus.mode = "up"
    await send(40)
    await pub.flush()
    got = [json.loads(r.value)["n"] for r in bus.topics["hits"]]
    first = list(dict.fromkeys(got))  # deduplicated by id, first copy kept
    assert first == list(range(180))  # every hit, in order
    assert pub.spool.depth_records == 0 and pub.stats.dropped == dict.fromkeys(POLICIES, 0)
    assert pub.stats.replayed == pub.stats.spooled > 0
    done = [await f for f in results]
    assert all(r in (SPOOLED, DROPPED) or r is not None for r in done)
    assert sum(r == SPOOLED for r in done) <= pub.stats.spooled
    if outage == "hang":
        assert FlakyBus.clients >= 2  # the stuck client was replaced
    await pub.stop()
    MemoryBus.forget(f"flaky-{outage}")


# ---------------------------------------------------------------- a real outage


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """A broker of this module's own: these tests stop it."""
    b = LocalBroker(tmp_path_factory.mktemp("kafka-spool"))
    b.start()
    try:
        yield b
    finally:
        b.stop()


class Queries:
    """DNS queries for s<n>.ds.kaspersky.com to a loopback port nobody listens on, at a pace."""

    def __init__(self, port: int, per_s: float = 100.0) -> None:
        self.port = port
        self.gap = 1.0 / per_s
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            nxt = time.monotonic()
            while not self._stop.is_set():
                q = dns.message.make_query(f"s{self.sent:06d}.ds.kaspersky.com", "A")
                s.sendto(q.to_wire(), ("127.0.0.1", self.port))
                self.sent += 1
                nxt += self.gap
                time.sleep(max(0.0, nxt - time.monotonic()))

    def __enter__(self) -> Queries:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@dataclass
class Sensor:
    proc: subprocess.Popen[bytes]
    metrics: int
    err: Path

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def wait_capturing(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while "capturing on" not in self.stderr():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"sensor did not start capturing:\n{self.stderr()[-3000:]}")
            time.sleep(0.1)

    def finish(self) -> int:
        """SIGTERM (it reads out what the kernel holds, flushes, stops), the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def sense(broker: LocalBroker, topic: str, dport: int, tmp: Path, *extra: str) -> Sensor:
    metrics = free_port()
    err = tmp / f"sense-{metrics}.err"
    with err.open("wb") as fh:  # a file, not a pipe: a full pipe would block the sensor
        proc = subprocess.Popen(
            [
                *KASPWATCH,
                "sense",
                "--interface",
                "lo",
                "--bpf",
                f"udp and dst port {dport}",  # only this test's queries
                "--bus",
                f"kafka://{broker.bootstrap}",
                "--topic",
                topic,
                "--sensor",
                "spool-test",
                "--metrics-addr",
                f"127.0.0.1:{metrics}",
                "--heartbeat-interval",
                "2",
                "--delivery-timeout",
                "3",
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=fh,
            env={"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1", "HOME": str(tmp)},
        )
    return Sensor(proc, metrics, err)


def metric(port: int, name: str) -> float:
    with suppress(OSError):
        return scrape(port).get(name, -1.0)
    return -1.0


async def wait_metric(port: int, name: str, ok: Any, timeout: float, what: str) -> float:
    got = await wait_metrics(port, lambda m: bool(ok(m.get(name, -1.0))), timeout)
    value = got.get(name, -1.0)
    if not ok(value):
        pytest.fail(f"timed out after {timeout} s waiting for {what} ({name} = {value})")
    return value


@pytest.mark.kafka
@pytest.mark.live  # captures on --interface: root
@pytest.mark.timeout(180)
async def test_broker_outage_of_30s_loses_no_hit(broker: LocalBroker, tmp_path: Path) -> None:
    need_tools("ip")  # root for the capture socket
    topic = f"hits-{uuid.uuid4().hex[:8]}"
    await create_topics(broker.bootstrap, (topic, 3), ("kaspwatch.heartbeats.v1", 1))
    dport = free_port()
    spool_dir = tmp_path / "spool"
    sensor = sense(broker, topic, dport, tmp_path, "--spool-dir", str(spool_dir))
    mport = sensor.metrics
    try:
        sensor.wait_capturing()
        with Queries(dport, per_s=50) as queries:
            await wait_metric(mport, "kaspwatch_sensor_published_total", lambda v: v > 50, 20,
                              "hits published before the outage")  # fmt: skip
            before = metric(mport, "kaspwatch_sensor_published_total")
            broker.stop()
            stopped = time.monotonic()
            depth = await wait_metric(
                mport, "kaspwatch_sensor_spool_depth_records", lambda v: v > 0, 20,
                "the sensor to spool",
            )  # fmt: skip
            max_depth = depth
            while time.monotonic() - stopped < 30:
                max_depth = max(max_depth, metric(mport, "kaspwatch_sensor_spool_depth_records"))
                await asyncio.sleep(0.5)
            max_bytes = metric(mport, "kaspwatch_sensor_spool_depth_bytes")
            assert sensor.proc.poll() is None, sensor.stderr()[-3000:]
            broker.start(keep_data=True)
            outage = time.monotonic() - stopped
            t_up = time.monotonic()
            await wait_metric(mport, "kaspwatch_sensor_spool_depth_records", lambda v: v == 0, 60,
                              "the spool to drain")  # fmt: skip
            drained_s = time.monotonic() - t_up
            await asyncio.sleep(2)  # hits after the drain go straight through again
        await asyncio.sleep(1)
        final = scrape(mport)
    finally:
        code = sensor.finish()
    stderr = sensor.stderr()
    assert code == 0, stderr[-3000:]
    # The kernel can drop packets on a loaded machine (the suite shares 2 cores); that is
    # capture, not publishing, and counted apart. What the sensor made into hits must arrive.
    kernel_drops = int(final["kaspwatch_sensor_kernel_drops_total"])
    hits = int(final["kaspwatch_sensor_hits_total"])
    spooled = int(final["kaspwatch_sensor_spooled_total"])
    replayed = int(final["kaspwatch_sensor_spool_replayed_total"])
    dropped = sum(v for k, v in final.items() if k.startswith("kaspwatch_sensor_spool_dropped"))
    assert spooled > 0 and replayed == spooled and dropped == 0
    assert final["kaspwatch_sensor_spool_depth_records"] == 0
    assert final["kaspwatch_sensor_published_total"] == hits

    got = await read_topic(broker.bootstrap, topic, hits, timeout=30)
    docs = [json.loads(v) for _, v in got]
    assert {k for k, _ in got} == {b"127.0.0.1"}  # one key: one partition, one order
    unique: dict[str, dict[str, Any]] = {}
    for d in docs:
        unique.setdefault(d["event_id"], d)
    order = [d["ts"] for d in unique.values()]
    assert order == sorted(order)  # in capture order, after dedup (first copy kept)
    assert len(unique) == hits  # every hit arrived
    seqs = [int(d["name"][1:7]) for d in unique.values()]
    assert seqs == sorted(seqs)
    # on loopback the sensor keeps the arriving copy of each query only: one hit each
    assert len(set(range(queries.sent)) - set(seqs)) <= kernel_drops
    assert hits + kernel_drops >= queries.sent
    report = {
        "queries": queries.sent,
        "hits": hits,
        "published_before_outage": int(before),
        "spooled": spooled,
        "replayed": replayed,
        "dropped": int(dropped),
        "kernel_drops": kernel_drops,
        "max_spool_depth_records": int(max_depth),
        "spool_bytes_at_restart": int(max_bytes),
        "received": len(docs),
        "duplicates_before_dedup": len(docs) - len(unique),
        "duplicates_after_dedup": 0,
        "outage_s": round(outage, 1),
        "drain_s": round(drained_s, 1),
    }
    sys.stderr.write(f"\nspool outage test: {json.dumps(report)}\n")
    assert "spooling hits to" in stderr and "replaying" in stderr


@pytest.mark.kafka
@pytest.mark.live  # captures on --interface: root
@pytest.mark.timeout(120)
async def test_full_spool_counts_and_logs_every_loss_and_survives_a_sensor_restart(
    broker: LocalBroker, tmp_path: Path
) -> None:
    """Broker down, a tiny spool (8 KiB, drop-newest): every hit is kept or counted, logged
    and reflected in the exit code; the sensor stops with hits still on disk, and the next
    sensor on the same spool replays them once the broker is back."""
    need_tools("ip")
    topic = f"hits-{uuid.uuid4().hex[:8]}"
    await create_topics(broker.bootstrap, (topic, 1), ("kaspwatch.heartbeats.v1", 1))
    dport = free_port()
    spool = ["--spool-dir", str(tmp_path / "spool"), "--spool-max-bytes", "8K"]
    sensor = sense(broker, topic, dport, tmp_path, *spool, "--spool-policy", "drop-newest")
    mport = sensor.metrics
    try:
        sensor.wait_capturing()
        with Queries(dport, per_s=200) as queries:
            await wait_metric(mport, "kaspwatch_sensor_published_total", lambda v: v > 0, 20,
                              "hits published before the outage")  # fmt: skip
            broker.stop()
            await wait_metric(
                mport,
                'kaspwatch_sensor_spool_dropped_total{policy="drop-newest"}',
                lambda v: v >= 100,
                40,
                "drops",
            )

        def settled(m: dict[str, float]) -> bool:  # every hit accounted for
            acc = sum(m[k] for k in m if k.startswith("kaspwatch_sensor_spool_dropped_total"))
            acc += m["kaspwatch_sensor_published_total"]
            acc += m["kaspwatch_sensor_spool_depth_records"]
            seen = m["kaspwatch_sensor_hits_total"] + m["kaspwatch_sensor_kernel_drops_total"]
            return acc == m["kaspwatch_sensor_hits_total"] and seen >= queries.sent

        deadline = time.monotonic() + 15
        while not settled(final := scrape(mport)) and time.monotonic() < deadline:
            await asyncio.sleep(0.25)
    finally:
        code = sensor.finish()  # the broker is still down
    stderr = sensor.stderr()
    hits = int(final["kaspwatch_sensor_hits_total"])
    dropped = final['kaspwatch_sensor_spool_dropped_total{policy="drop-newest"}']
    assert final['kaspwatch_sensor_spool_dropped_total{policy="drop-oldest"}'] == 0
    assert 0 < final["kaspwatch_sensor_spool_depth_bytes"] <= 8192
    kept = int(final["kaspwatch_sensor_spool_depth_records"])
    before = int(final["kaspwatch_sensor_published_total"])
    # every hit published, kept or counted as lost (on loopback the sensor keeps the
    # arriving copy of each query only: one hit each)
    assert before + kept + dropped == hits
    assert hits + final["kaspwatch_sensor_kernel_drops_total"] >= queries.sent
    assert code == 1, "a sensor that lost hits says so in its exit code"
    assert "full" in stderr and "drop-newest lost" in stderr
    assert f"({int(dropped)} in total)" in stderr  # the last count, logged on the way out
    assert f"{kept} hits" in stderr and "not yet acknowledged" in stderr

    broker.start(keep_data=True)
    second = sense(broker, topic, free_port(), tmp_path, *spool)
    try:
        second.wait_capturing()
        await wait_metric(second.metrics, "kaspwatch_sensor_spool_replayed_total",
                          lambda v: v == kept, 60, "the spool left on disk to be replayed")  # fmt: skip
    finally:
        assert second.finish() == 0, second.stderr()[-3000:]
    assert f"{kept} hits" in second.stderr() and "left from an earlier run" in second.stderr()
    got = await read_topic(broker.bootstrap, topic, before + kept, timeout=20)
    docs = [json.loads(v) for _, v in got]
    assert len({d["event_id"] for d in docs}) == before + kept  # every hit that was not lost
    # drop-newest keeps the oldest: the hits before the outage, then the first spooled
    # (one hit per query)
    first = list(dict.fromkeys(d["name"] for d in docs))
    assert first == [f"s{n:06d}.ds.kaspersky.com" for n in range(len(first))]
    assert len(first) == before + kept
    sys.stderr.write(
        f"\nfull-spool test: hits {hits}, published {before}, kept {kept}, dropped {int(dropped)}, "
        f"replayed by the next sensor {kept}, received {len(got)}\n"
    )


@pytest.mark.kafka
@pytest.mark.live  # captures on --interface: root
@pytest.mark.timeout(150)
async def test_sensor_started_while_the_broker_is_down_spools_then_delivers(
    broker: LocalBroker, tmp_path: Path
) -> None:
    """A site where Kafka comes up after the sensor (power cut, boot order): the sensor
    starts anyway, captures and spools, and delivers every hit once the broker is up. A
    broker that refuses the sensor (credentials, TLS) still fails the start: tests in
    test_kafka_security.py."""
    need_tools("ip")
    topic = f"hits-{uuid.uuid4().hex[:8]}"
    await create_topics(broker.bootstrap, (topic, 1), ("kaspwatch.heartbeats.v1", 1))
    broker.stop()
    dport = free_port()
    sensor = sense(broker, topic, dport, tmp_path, "--spool-dir", str(tmp_path / "spool"))
    mport = sensor.metrics
    try:
        sensor.wait_capturing()
        with Queries(dport, per_s=50) as queries:
            await wait_metric(mport, "kaspwatch_sensor_spool_depth_records", lambda v: v >= 50,
                              30, "hits spooled while the broker is down")  # fmt: skip
            assert sensor.proc.poll() is None, sensor.stderr()[-3000:]
            broker.start(keep_data=True)
            await wait_metric(mport, "kaspwatch_sensor_spool_replayed_total", lambda v: v >= 50,
                              60, "the spool to be replayed")  # fmt: skip
        await wait_metric(mport, "kaspwatch_sensor_spool_depth_records", lambda v: v == 0, 30,
                          "the spool to drain")  # fmt: skip
        final = scrape(mport)
    finally:
        code = sensor.finish()
    stderr = sensor.stderr()
    assert code == 0, stderr[-3000:]
    assert "cannot connect" in stderr and "spooling hits to" in stderr
    hits = int(final["kaspwatch_sensor_hits_total"])
    assert final["kaspwatch_sensor_published_total"] == hits > 0
    got = await read_topic(broker.bootstrap, topic, hits, timeout=30)
    assert len({json.loads(v)["event_id"] for _, v in got}) == hits
    assert hits + final["kaspwatch_sensor_kernel_drops_total"] >= queries.sent
    # the topics it had not found were created when the broker answered, before the first
    # send could have the broker auto-create them (1 partition, not compacted); the hits
    # topic made above is left as it is
    assert len(await partitions(broker.bootstrap, "kaspwatch.identity.v1")) == 12
    assert (await topic_config(broker.bootstrap, "kaspwatch.identity.v1"))[
        "cleanup.policy"
    ] == "compact"
    assert len(await partitions(broker.bootstrap, topic)) == 1
