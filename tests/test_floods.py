"""Floods through the real sensor pipeline and the consumers, at CI size (small caps).

The million-scale runs are soak/floods.py (same generators, shipped caps); here each flood
runs to N and on to 4N flood units: every state table stays at or under its cap while its
eviction counter grows, traced memory at 4N is no larger than at N, hits are exactly those
the flood carries, and the number of Prometheus series (sensor and consumers) does not
move with the number of distinct hosts or names.
"""

from __future__ import annotations

import gc
import random
import tracemalloc
from itertools import islice

import pytest
from prometheus_client import CollectorRegistry

from consumers.alerts.engine import AlertEngine
from consumers.alerts.sinks.alertmanager import AlertmanagerSink
from consumers.metrics import ActiveHosts, HitMetrics, SensorHealth
from kaspwatch.event import EventError, event_from_json
from sensor.health import register_sensor
from sensor.pipeline import Sensor
from sensor.publish import PublishStats
from soak.floods import (
    FLOODS,
    GENERATORS,
    KASPERSKY_NET,
    RESOLVER,
    T0,
    WATCHED_ZONE,
    dns_answer,
    dns_query,
    expected_hits,
    flood_addr,
    make_sensor,
    table_sizes,
    tcp,
    udp,
)

CAPS = {"streams": 500, "stream_bytes": 1 << 20, "quic": 200, "flows": 300, "frags": 100}
UNITS = {
    "dns": 600,
    "syn": 3000,
    "hello": 2000,
    "ooo": 2200,
    "quic": 1000,
    "udp": 2000,
    "frag": 1000,
}
EVICTING = {  # the table each flood fills, and the eviction counter that must move
    "dns": ("attributions", "flows"),
    "hello": ("tcp_streams", "tcp_streams"),
    "ooo": ("tcp_stream_bytes", "tcp_streams"),
    "quic": ("quic_connections", "quic_connections"),
    "udp": ("udp_flows", "flows"),
    "frag": ("fragments", "fragments"),
}
CAP_OF = {
    "attributions": "flows",
    "udp_flows": "flows",
    "tcp_streams": "streams",
    "tcp_stream_bytes": "stream_bytes",
    "quic_connections": "quic",
    "quic_by_dcid": "quic",
    "quic_by_flow": "quic",
    "quic_keys": "quic",  # the key cache is capped at max(16, min(max_connections, 1024))
    "fragments": "frags",
}


def _series(registry: CollectorRegistry) -> int:
    return sum(len(m.samples) for m in registry.collect())


def _traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


@pytest.mark.parametrize("flood", FLOODS)
def test_flood_state_and_memory_stay_bounded(flood: str) -> None:
    n = UNITS[flood]
    per_unit = 2 if flood == "dns" else 1
    frames = GENERATORS[flood](4 * n)
    sensor = make_sensor(CAPS)
    registry = CollectorRegistry()
    register_sensor(registry, sensor, PublishStats())
    hits = 0  # counted, not kept: the test must not hold what grows with the flood
    tracemalloc.start()
    try:
        for frame in islice(frames, n * per_unit):
            hits += len(sensor.process_frame(*frame))
        at_n = (_traced(), sensor.evictions(), table_sizes(sensor), _series(registry))
        for frame in frames:
            hits += len(sensor.process_frame(*frame))
        at_4n = (_traced(), sensor.evictions(), table_sizes(sensor), _series(registry))
    finally:
        tracemalloc.stop()
    assert sensor.stats.packets == 4 * n * per_unit
    assert hits == expected_hits(flood, 4 * n)
    for table, size in at_4n[2].items():
        if table in CAP_OF:
            assert size <= CAPS[CAP_OF[table]], (table, size)
    if flood in EVICTING:
        table, counter = EVICTING[flood]
        assert 0.9 * CAPS[CAP_OF[table]] <= at_n[2][table] <= CAPS[CAP_OF[table]]  # full at N
        assert at_4n[1][counter] > at_n[1][counter] > 0, (at_n[1], at_4n[1])
    if flood == "quic":  # distinct authentic DCIDs: the key cache evicts as well
        assert at_4n[1]["quic_keys"] > at_n[1]["quic_keys"] > 0, (at_n[1], at_4n[1])
    # memory does not grow with the flood: 4N within 10% (+64 KiB of allocator noise) of N
    assert at_4n[0] <= at_n[0] * 1.10 + 65536, (flood, at_n[0], at_4n[0])
    assert at_4n[3] == at_n[3]  # the sensor's /metrics series
    print(f"{flood}: traced {at_n[0]} -> {at_4n[0]} bytes, evictions {at_4n[1]}")


def test_dns_flood_hits_are_exact_and_attribution_evicts_oldest() -> None:
    n = 1500
    sensor = make_sensor(CAPS)
    hits = [e for f in GENERATORS["dns"](n) for e in sensor.process_frame(*f)]
    assert len(hits) == expected_hits("dns", n)
    assert {e.kind for e in hits} == {"dns_query", "dns_answer"}
    assert all(e.name.endswith("." + WATCHED_ZONE) for e in hits)
    assert {e.indicator.id for e in hits if e.indicator} == {"kw-telemetry-ksn-zone"}
    assert len({e.name for e in hits}) == n  # one per unique subdomain
    assert sensor.evictions()["flows"] == n - CAPS["flows"]

    def flow(addr: bytes) -> list[tuple[str, str | None]]:
        syn = tcp(bytes([10, 9, 9, 9]), 40001, addr, 443, 1, 0x02, b"")
        return [
            (e.name, e.extra.get("attributed_by")) for e in sensor.process_frame(T0 + 10**9, 1, syn)
        ]

    (newest,) = flow(flood_addr(n - 1))  # still attributed: a flow to it is a hit by name
    assert newest[1] == "dns" and newest[0].endswith(WATCHED_ZONE)
    assert flow(flood_addr(0)) == []  # evicted (198.18/15 is no Kaspersky prefix)


def test_dns_from_a_tunnel_port_is_dns() -> None:
    """Found by the dns soak: an answer to client port 4789 whose ID starts with a byte
    carrying VXLAN's I flag (0x08) was opened as VXLAN and its name lost."""
    sensor = make_sensor()
    name = "x-1." + WATCHED_ZONE
    for port in (2152, 3544, 4789, 4790, 6081):
        answer = bytearray(dns_answer(0x485E, name, bytes([198, 18, 0, 1])))
        frames = [udp(RESOLVER, 53, bytes([10, 1, 2, 3]), port, bytes(answer)),
                  udp(bytes([10, 1, 2, 3]), port, RESOLVER, 53, dns_query(0x485E, name))]  # fmt: skip
        for frame in frames:
            assert [e.name for e in sensor.process_frame(T0, 1, frame)] == [name], port


async def test_consumer_state_and_series_stay_bounded_under_a_syn_flood() -> None:
    """Hits from 4N distinct spoofed sources: the consumers' tables stay at their caps,
    count evictions, and the /metrics series count does not move with the host count."""
    cap = 300
    registry = CollectorRegistry()
    known = {("infrastructure", "medium"), ("telemetry", "high")}

    def capture_hour() -> float:  # the active-host windows end within the flood's hour
        return T0 / 1e9 + 3600

    metrics = HitMetrics(registry=registry, known=known, clock=capture_hour)
    registry.unregister(metrics.active)
    metrics.active = ActiveHosts(
        {(c, "unknown") for c, _ in known}, max_hosts=cap, clock=capture_hour
    )
    registry.register(metrics.active)
    health = SensorHealth(max_sensors=20)
    registry.register(health)
    engine = AlertEngine(max_windows=cap)
    firing = AlertmanagerSink(["http://127.0.0.1:9/"])  # never sent to: only its bookkeeping
    firing.max_firing = cap
    sensor = Sensor(make_sensor().rules, "flood")
    frames = GENERATORS["syn"](4 * 2000)

    async def feed(count: int) -> None:
        for frame in islice(frames, count):
            events = [event_from_json(e.to_json()) for e in sensor.process_frame(*frame)]
            await metrics.handle(events)
            for ev in events:
                for alert in engine.feed(ev):
                    firing._document(alert, 0.0)
        names = [{"sensor": f"s-{random.random()}", "interval_s": 15, "pack_version": "x",
                  "packets": 1, "hits": 1, "decode_errors": 0, "kernel_drops": 0, "published": 1,
                  "publish_failures": 0, "spool_depth": 0} for _ in range(100)]  # fmt: skip
        await health.handle(names)

    await feed(2000)

    def state() -> tuple[int, ...]:
        return (
            _series(registry),
            metrics.active.evicted,
            engine.evicted,
            health.evicted,
            firing.evicted,
        )

    at_n = state()
    await feed(6000)
    at_4n = state()
    assert at_4n[0] == at_n[0], (at_n, at_4n)
    assert all(b > a > 0 for a, b in zip(at_n[1:], at_4n[1:], strict=True)), (at_n, at_4n)
    assert max(len(h) for h in metrics.active.last_seen.values()) == cap
    assert len(engine.windows) == cap and len(health.beats) == 20 and len(firing._sent) == cap
    assert engine.alerts == 4000  # every spoofed source is a first contact, none lost


def test_forged_label_values_are_refused_at_the_bus() -> None:
    """Categories and severities become metric labels: a message with any other value is an
    invalid event (counted), never a new series."""
    sensor = make_sensor()
    (hit,) = sensor.process_frame(*next(GENERATORS["udp"](1)))
    doc = hit.to_json().decode()
    for field, value in (("infrastructure", "x-0001"), ("medium", "sev-0001")):
        with pytest.raises(EventError, match="unknown indicator"):
            event_from_json(doc.replace(f'"{field}"', f'"{value}"').encode())
    assert hit.indicator is not None and hit.indicator.category == "infrastructure"
    assert KASPERSKY_NET[0] == 37
