"""``kaspwatch metrics``: consume hits and heartbeats, serve Prometheus metrics."""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Iterable

from prometheus_client import start_http_server

from consumers.assets import load_assets
from consumers.loop import ConsumerHealth, DeadLetters, consume, parse_with
from consumers.metrics import HitMetrics, LagCollector, SensorHealth
from kaspwatch.bus import open_subscriber
from kaspwatch.cli.kafka import (
    add_group_options,
    add_kafka_options,
    add_topic_options,
    create_topics,
)
from kaspwatch.cli.options import add_bus_option, add_rule_options, listen_addr, verified_hit
from kaspwatch.cli.process import Stopper
from kaspwatch.event import HEARTBEATS_TOPIC, HITS_TOPIC, heartbeat_from_json
from sensor.rules.indicators import Indicator, load_pack, shipped_pack_paths

log = logging.getLogger("kaspwatch")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_bus_option(p)
    p.add_argument("--group", default="kaspwatch-metrics", help="Kafka consumer group")
    p.add_argument("--topic", default=HITS_TOPIC)
    p.add_argument(
        "--listen",
        type=listen_addr,
        default=("127.0.0.1", 9108),
        metavar="HOST:PORT",
        help="where to serve /metrics (default 127.0.0.1:9108)",
    )
    p.add_argument("--heartbeats-topic", default=HEARTBEATS_TOPIC)
    p.add_argument("--assets", metavar="FILE", help="asset map: adds the site label")
    p.add_argument(
        "--lag-groups",
        default="kaspwatch-alerts,kaspwatch-metrics,kaspwatch-store",
        help="consumer groups whose lag to export, comma-separated",
    )
    add_rule_options(p)  # hits are counted by this pack's indicators, not by their claims
    add_kafka_options(p)
    add_group_options(p)
    add_topic_options(p)


def known_pairs(indicators: Iterable[Indicator] | None = None) -> set[tuple[str, str]]:
    """(category, severity) pairs of the packs in force (default: the shipped ones):
    their series start at zero."""
    if indicators is None:
        indicators = [i for p in shipped_pack_paths() for i in load_pack(p).indicators]
    return {(i.category, i.severity) for i in indicators}


def run(args: argparse.Namespace) -> int:
    metrics = HitMetrics(assets=load_assets(args.assets), known=known_pairs())
    parse = parse_with(verified_hit(args))
    health = SensorHealth()
    lag = LagCollector()
    for collector in (health, lag):
        metrics.registry.register(collector)
    host, port = args.listen
    start_http_server(port, host, registry=metrics.registry)
    log.info("serving metrics on http://%s:%d/metrics", host, port)

    async def main() -> None:
        stopper = Stopper()
        stopper.install()
        sub = open_subscriber(
            args.bus,
            [args.topic],
            args.group,
            client_id="kaspwatch-metrics",
            security=args.kafka,
            settings=args.group_settings,
        )
        beats = open_subscriber(
            args.bus,
            [args.heartbeats_topic],
            f"{args.group}-heartbeats",
            client_id="kaspwatch-metrics",
            security=args.kafka,
            settings=args.group_settings,
        )
        await create_topics(args, [args.topic, args.heartbeats_topic], group=args.group_settings)
        sub.listen(metrics)  # hosts of a revoked partition leave the active-host gauges
        await sub.start()
        await beats.start()
        groups = [g for g in args.lag_groups.split(",") if g]
        progress = ConsumerHealth(metrics.registry)
        try:
            await asyncio.gather(
                consume(
                    sub,
                    [metrics],
                    stopper.stop,
                    DeadLetters(metrics.invalid),
                    parse=parse,
                    health=progress.group(args.group),
                ),
                consume(
                    beats,
                    [health],
                    stopper.stop,
                    DeadLetters(metrics.invalid),
                    parse=parse_with(heartbeat_from_json),
                    health=progress.group(f"{args.group}-heartbeats"),
                ),
                lag.refresh(args.bus, groups, stopper.stop, security=args.kafka),
            )
        finally:
            await sub.stop()
            await beats.stop()

    asyncio.run(main())
    return 0
