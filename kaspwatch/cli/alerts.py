"""``kaspwatch alerts``: consume hits, raise alerts to every configured sink."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable

from prometheus_client import start_http_server

from consumers.alerts.changelog import CHANGELOG_TOPIC, ChangelogState
from consumers.alerts.collector import DeliveryCollector
from consumers.alerts.engine import render_json
from consumers.alerts.grouping import flush_every
from consumers.alerts.handover import Handover
from consumers.alerts.resend import resend_firing
from consumers.alerts.sinks import SinkOptionError
from consumers.alerts.sinks.ecs import render_ecs
from consumers.identity import apply_identities, parse_with_identities
from consumers.loop import ConsumerHealth, DeadLetters, consume
from consumers.metrics import HitMetrics
from kaspwatch.bus import (
    Record,
    Subscriber,
    open_publisher,
    open_reader,
    open_subscriber,
    parse_bus_url,
    prepare_changelog,
)
from kaspwatch.cli.alerting import (
    STATE_STORES,
    add_alert_options,
    build_sinks,
    links_from_options,
    open_delivery,
    state_path,
)
from kaspwatch.cli.kafka import (
    add_group_options,
    add_kafka_options,
    add_topic_options,
    create_topics,
)
from kaspwatch.cli.options import add_bus_option, add_metrics_addr, add_rule_options, verified_hit
from kaspwatch.cli.process import Stopper
from kaspwatch.event import ALERTS_TOPIC, DEAD_LETTER_TOPIC, HITS_TOPIC
from kaspwatch.identity import IDENTITY_TOPIC


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_bus_option(p)
    p.add_argument("--group", default="kaspwatch-alerts", help="Kafka consumer group")
    p.add_argument("--topic", default=HITS_TOPIC)
    p.add_argument(
        "--identity-topic",
        default=IDENTITY_TOPIC,
        help="identity records (DHCP, ARP) that name the machine in each alert; '' for none",
    )
    p.add_argument("--alerts-topic", default=ALERTS_TOPIC, help="alert records go here")
    p.add_argument(
        "--alerts-format",
        choices=("ocsf", "ecs"),
        default="ocsf",
        help="records on the alerts topic: OCSF 1.3 Detection Finding (default) or ECS 8.11",
    )
    p.add_argument("--format", choices=("ndjson", "ecs"), default="ndjson", help="alerts on stdout")
    p.add_argument("--dead-letter-topic", default=DEAD_LETTER_TOPIC)
    add_metrics_addr(p, "serve this consumer's metrics (deliveries, sink failures, dead letters)")
    add_alert_options(p, state_default=True)
    p.add_argument(
        "--state-store",
        choices=STATE_STORES,
        help="sqlite: the --state file (one instance per group, default); changelog: per "
        "hits partition on a compacted Kafka topic, so several instances can share the "
        "group (README 'Scaling out'); config 'alerts: state_store'",
    )
    p.add_argument(
        "--state-topic",
        help="the alert state changelog topic (--state-store changelog; default "
        f"{CHANGELOG_TOPIC}); config 'alerts: state_topic'",
    )
    add_rule_options(p)  # the pack hits are re-matched against: a hit's indicator is a claim
    add_kafka_options(p)
    add_group_options(p)
    add_topic_options(p)


def join_identities(
    args: argparse.Namespace, sub: Subscriber, apply: Callable[[list[Record]], Awaitable[None]]
) -> Subscriber:
    """The hits' group subscriber with the identity topic read whole (Kafka)."""
    from kaspwatch.bus.globaltable import GlobalJoin, KafkaGlobalTopic
    from kaspwatch.bus.security import PLAINTEXT

    where = parse_bus_url(args.bus)[1]
    table = KafkaGlobalTopic(where, args.identity_topic, "kaspwatch-alerts-identity",
                             args.kafka or PLAINTEXT)  # fmt: skip
    return GlobalJoin(sub, table, apply)


def run(args: argparse.Namespace) -> int:
    links_from_options(args)  # a bad template fails before any client exists
    if not args.group_wait >= 0:
        raise SinkOptionError(f"--group-wait {args.group_wait:g}: give 0 or more seconds")
    metrics = HitMetrics()
    parse = parse_with_identities(args.identity_topic, verified_hit(args))

    async def main() -> None:
        stopper = Stopper()
        stopper.install()
        publisher = open_publisher(args.bus, client_id="kaspwatch-alerts", security=args.kafka)
        topics = [args.identity_topic, args.topic] if args.identity_topic else [args.topic]
        # on Kafka every instance reads the whole identity topic outside the group (a
        # group would split it between instances): the group gets the hits only
        whole = bool(args.identity_topic) and parse_bus_url(args.bus)[0] == "kafka"
        sub: Subscriber = open_subscriber(
            args.bus,
            [args.topic] if whole else topics,
            args.group,
            client_id="kaspwatch-alerts",
            security=args.kafka,
            settings=args.group_settings,
        )
        written = [args.alerts_topic, args.dead_letter_topic]
        # before any client that must be closed; the hits and alerts topics first, so the
        # changelog (co-partitioned with them) is sized on what this command asked for
        await create_topics(args, [*topics, *written], [args.identity_topic], args.group_settings)
        if args.state_store == "changelog":
            await prepare_changelog(
                args.bus, args.topic, args.alerts_topic, args.state_topic, args.kafka
            )
        await publisher.start()
        await publisher.prepare(written)
        reader = open_reader(args.bus, client_id="kaspwatch-alerts", security=args.kafka)
        render = render_ecs if args.format == "ecs" else render_json
        sinks = build_sinks(args, publisher, render, reader)
        state = None
        if args.state_store == "changelog":
            state = ChangelogState(
                state_path(args, args.group), publisher, reader, args.state_topic
            )
        delivery, _ = open_delivery(args, sinks, args.group, state)
        dead = DeadLetters(metrics.invalid, publisher, args.dead_letter_topic)
        if whole:
            sub = join_identities(args, sub, apply_identities(delivery.engine.identities, dead))
        sub.listen(Handover(delivery, args.topic, reader))
        metrics.registry.register(DeliveryCollector(delivery))
        if args.metrics_addr:
            start_http_server(args.metrics_addr[1], args.metrics_addr[0], registry=metrics.registry)
        for sink in delivery.sinks:
            await sink.start()
        await sub.start()
        health = ConsumerHealth(metrics.registry).group(args.group)
        try:
            await asyncio.gather(
                consume(sub, [delivery], stopper.stop, dead, parse=parse, health=health),
                resend_firing(delivery.sinks, stopper.stop),
                flush_every(delivery.flush_groups, stopper.stop),
            )
            await delivery.flush_groups(everything=True)  # stopping: send what is held
        finally:
            await sub.stop()
            for sink in delivery.sinks:
                await sink.stop()
            await publisher.stop()
            delivery.state.close()

    asyncio.run(main())
    return 0
