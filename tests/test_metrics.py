"""Metrics from hits and heartbeats: sites, active hosts, fleet health, bounded labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from consumers.assets import load_assets
from consumers.metrics import HitMetrics, SensorHealth
from kaspwatch.event import EventError, format_ts, heartbeat_from_json
from sensor.rules.match import Matcher
from tests.factories import EPOCH, KSN, hit


def samples(registry) -> dict[str, float]:  # type: ignore[no-untyped-def]
    out = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


async def test_hits_by_site_active_hosts_and_zero_series(tmp_path: Path) -> None:
    assets = tmp_path / "assets.yaml"
    assets.write_text(
        "schema: kaspwatch-assets/1\nnetworks:\n"
        "  - {cidr: 10.9.0.0/16, site: substation-3, zone: OT, criticality: critical}\n"
    )
    m = HitMetrics(
        assets=load_assets(str(assets)),
        known={("update", "high"), ("telemetry", "high")},
        clock=lambda: EPOCH + 10.0,  # the hits' own time: active hosts count by it
    )
    before = samples(m.registry)
    assert (
        before[
            'kaspwatch_hits_total{category="telemetry",kind="quic_sni",severity="high",site="substation-3"}'
        ]
        == 0
    )
    assert before['kaspwatch_active_hosts{category="update",site="unknown",window="24h"}'] == 0
    await m.handle(
        [hit("10.9.1.1", 0), hit("10.9.1.2", 1), hit("10.9.1.2", 2), hit("192.0.2.7", 3, KSN)]
    )
    got = samples(m.registry)
    assert (
        got[
            'kaspwatch_hits_total{category="update",kind="dns_query",severity="high",site="substation-3"}'
        ]
        == 3
    )
    assert (
        got[
            'kaspwatch_hits_total{category="telemetry",kind="dns_query",severity="high",site="unknown"}'
        ]
        == 1
    )
    assert got['kaspwatch_active_hosts{category="update",site="substation-3",window="5m"}'] == 2
    assert got['kaspwatch_last_hit_timestamp_seconds{site="substation-3"}'] > 1.7e9
    # bounded labels: no address and no domain anywhere in the exposition
    text = generate_latest(m.registry).decode()
    assert "10.9.1" not in text and "kaspersky" not in text


T_BEAT = 1_796_320_800.0  # 2026-12-03T18:00:00Z, the clock's "now" in the heartbeat tests


def beat(
    sensor: str, seconds: float, interval_s: float = 15.0, **more: object
) -> dict[str, object]:
    """A heartbeat as the bus delivers it, sent ``seconds`` after ``T_BEAT``."""
    doc = {
        "schema": 1, "type": "heartbeat", "sensor": sensor,
        "ts": format_ts(int((T_BEAT + seconds) * 1e9)), "interval_s": interval_s,
        "packets": 1000, "hits": 3, "decode_errors": 2, "kernel_drops": 5, "published": 3,
        "publish_failures": 0, "spool_depth": 0, "pack_version": "kaspersky@1", **more,
    }  # fmt: skip
    return heartbeat_from_json(json.dumps(doc).encode())


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def health_registry(health: SensorHealth) -> CollectorRegistry:
    reg = CollectorRegistry()
    reg.register(health)
    return reg


async def test_heartbeats_make_fleet_health_and_silence_means_down() -> None:
    clock = Clock(T_BEAT)
    health = SensorHealth(clock=clock)
    await health.handle([beat("edge-1", 0, interval_s=0.2)])
    reg = health_registry(health)
    got = samples(reg)
    assert got['kaspwatch_sensor_up{sensor="edge-1"}'] == 1
    assert got['kaspwatch_fleet_sensor_kernel_drops_total{sensor="edge-1"}'] == 5
    assert got['kaspwatch_sensor_pack_info{sensor="edge-1",version="kaspersky@1"}'] == 1
    clock.now += 0.7  # more than 3 intervals without a heartbeat
    assert samples(reg)['kaspwatch_sensor_up{sensor="edge-1"}'] == 0


async def test_heartbeat_times_are_the_sensors_own_after_a_backlog() -> None:
    """Four sensors' last beats, minutes apart, read in one batch (the consumer was behind):
    each keeps its own time; only the one that beat within three intervals is up; a beat
    stamped in the future (a clock ahead) counts as now."""
    clock = Clock(T_BEAT)
    health = SensorHealth(clock=clock)
    await health.handle(
        [beat("edge-1", -600), beat("edge-2", -300), beat("edge-3", -120), beat("edge-4", -5)]
    )
    await health.handle([beat("edge-5", 3600)])
    got = samples(health_registry(health))
    stamps = {n: got[f'kaspwatch_sensor_heartbeat_timestamp_seconds{{sensor="{n}"}}']
              for n in ("edge-1", "edge-2", "edge-3", "edge-4", "edge-5")}  # fmt: skip
    assert stamps == {
        "edge-1": T_BEAT - 600,
        "edge-2": T_BEAT - 300,
        "edge-3": T_BEAT - 120,
        "edge-4": T_BEAT - 5,
        "edge-5": T_BEAT,
    }
    up = {n: got[f'kaspwatch_sensor_up{{sensor="{n}"}}'] for n in stamps}
    assert up == {"edge-1": 0, "edge-2": 0, "edge-3": 0, "edge-4": 1, "edge-5": 1}


async def test_a_final_heartbeat_says_finished_and_a_stopped_sensor_does_not() -> None:
    clock = Clock(T_BEAT)
    health = SensorHealth(clock=clock)
    await health.handle([beat("offline", -1, final=True), beat("live", -1), beat("live2", -1)])
    await health.handle([beat("live2", 0, final=False)])
    got = samples(health_registry(health))
    finished = {n: got[f'kaspwatch_sensor_finished{{sensor="{n}"}}'] for n in ("offline", "live", "live2")}  # fmt: skip
    assert finished == {"offline": 1, "live": 0, "live2": 0}
    assert got['kaspwatch_sensor_up{sensor="offline"}'] == 0  # done, not beating


def test_heartbeat_final_must_be_true_or_false() -> None:
    with pytest.raises(EventError, match="final"):
        beat("x", 0, final="yes")


async def test_active_hosts_count_by_the_hits_own_time() -> None:
    """Hits read late (a backlog) count in the windows of their own time, not the read's."""
    now = EPOCH + 3600.0  # tests.factories.hit times are EPOCH + seconds
    m = HitMetrics(known={("update", "high")}, clock=Clock(now))
    await m.handle([hit("10.1.1.1", 0), hit("10.1.1.2", 3590), hit("10.1.1.3", 9999)])
    got = samples(m.registry)
    windows = {w: got[f'kaspwatch_active_hosts{{category="update",site="unknown",window="{w}"}}']
               for w in ("5m", "1h", "24h")}  # fmt: skip
    assert windows == {"5m": 2, "1h": 3, "24h": 3}  # 10.1.1.3 from the future: now
    assert got['kaspwatch_last_hit_timestamp_seconds{site="unknown"}'] == now


def test_sense_says_in_its_last_heartbeat_that_it_finished_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kaspwatch.bus.memory import MemoryBus
    from kaspwatch.cli import main
    from kaspwatch.event import HEARTBEATS_TOPIC
    from tests.testenv import SAMPLE

    monkeypatch.setenv("KASPWATCH_STATE_DIR", str(tmp_path))
    bus = f"fin-{tmp_path.name}"
    try:
        assert (
            main(["sense", "--bus", f"memory://{bus}", "--pcap", str(SAMPLE), "--sensor", "f"]) == 0
        )
        beats = [json.loads(r.value) for r in MemoryBus.named(bus).topics[HEARTBEATS_TOPIC]]
    finally:
        MemoryBus.forget(bus)
    assert [b.get("final") for b in beats] == [None] * (len(beats) - 1) + [True]
    assert beats[-1]["packets"] > 0


async def test_a_sensor_stopped_before_its_end_sends_no_final_beat(matcher: Matcher) -> None:
    import asyncio

    from kaspwatch.bus.memory import MemoryBus
    from sensor.pipeline import Sensor
    from sensor.publish import PublishStats, heartbeats

    bus = MemoryBus()
    stop = asyncio.Event()
    stop.set()  # stopped (a signal, the end of a capture): the beat sent then is the last
    sensor = Sensor(matcher, "t")
    for said in (lambda: False, lambda: True):
        await heartbeats(sensor, PublishStats(), bus.publisher(), [], stop, 1.0, "hb", said)
    assert [json.loads(r.value).get("final") for r in bus.topics["hb"]] == [None, True]


async def test_active_hosts_age_out_of_each_window() -> None:
    now = [float(EPOCH)]
    m = HitMetrics(known={("update", "high")}, clock=lambda: now[0])
    await m.handle([hit("10.9.1.1", 0)])
    now[0] += 100
    await m.handle([hit("10.9.1.2", 100)])

    def active(window: str) -> float:
        return samples(m.registry)[
            f'kaspwatch_active_hosts{{category="update",site="unknown",window="{window}"}}'
        ]

    assert (active("5m"), active("1h"), active("24h")) == (2, 2, 2)
    now[0] += 250  # the first host was last seen 350 s ago, the second 250 s ago
    assert (active("5m"), active("1h"), active("24h")) == (1, 2, 2)
    now[0] += 86_400  # a day later both are gone, and forgotten
    assert (active("5m"), active("1h"), active("24h")) == (0, 0, 0)
    assert m.active.last_seen[("update", "unknown")] == {}
