"""Metrics from hits and heartbeats: sites, active hosts, fleet health, bounded labels."""

from __future__ import annotations

import json
from pathlib import Path

from prometheus_client import generate_latest

from consumers.assets import load_assets
from consumers.metrics import HitMetrics, SensorHealth
from kaspwatch.event import heartbeat_from_json
from tests.factories import KSN, hit


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
        assets=load_assets(str(assets)), known={("update", "high"), ("telemetry", "high")}
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


async def test_heartbeats_make_fleet_health_and_silence_means_down() -> None:
    beat = {
        "schema": 1, "type": "heartbeat", "sensor": "edge-1", "ts": "2026-11-27T18:00:00.000000Z",
        "interval_s": 0.2, "packets": 1000, "hits": 3, "decode_errors": 2, "kernel_drops": 5,
        "published": 3, "publish_failures": 0, "spool_depth": 0, "pack_version": "kaspersky@1",
    }  # fmt: skip
    now = [1_800_000_000.0]
    health = SensorHealth(clock=lambda: now[0])
    await health.handle([heartbeat_from_json(json.dumps(beat).encode())])
    from prometheus_client import CollectorRegistry

    reg = CollectorRegistry()
    reg.register(health)
    got = samples(reg)
    assert got['kaspwatch_sensor_up{sensor="edge-1"}'] == 1
    assert got['kaspwatch_fleet_sensor_kernel_drops_total{sensor="edge-1"}'] == 5
    assert got['kaspwatch_sensor_pack_info{sensor="edge-1",version="kaspersky@1"}'] == 1
    now[0] += 0.5  # 2.5 intervals of silence: still up
    assert samples(reg)['kaspwatch_sensor_up{sensor="edge-1"}'] == 1
    assert samples(reg)['kaspwatch_sensor_heartbeat_timestamp_seconds{sensor="edge-1"}'] == 1.8e9
    now[0] += 0.2  # 3.5 intervals: more than 3 without a heartbeat
    assert samples(reg)['kaspwatch_sensor_up{sensor="edge-1"}'] == 0


async def test_active_hosts_age_out_of_each_window() -> None:
    now = [1_800_000_000.0]
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
