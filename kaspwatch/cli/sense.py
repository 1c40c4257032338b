"""``kaspwatch sense``: capture, match, and publish hits to the bus (spooling while it is down)."""

from __future__ import annotations

import argparse
import asyncio
import logging

from prometheus_client import CollectorRegistry, start_http_server

from kaspwatch.bus import Publisher, open_publisher
from kaspwatch.bus.spool import Spool
from kaspwatch.bus.spooling_publisher import SpoolingPublisher
from kaspwatch.cli.capture import (
    add_source_options,
    counts_word,
    finish,
    nothing_read,
    open_sources,
)
from kaspwatch.cli.kafka import add_kafka_options, add_topic_options, create_topics
from kaspwatch.cli.options import (
    add_bus_option,
    add_metrics_addr,
    add_sensor_options,
    add_spool_options,
    build_sensor,
)
from kaspwatch.cli.process import Stopper, hand_over
from kaspwatch.event import HEARTBEATS_TOPIC, HITS_TOPIC
from kaspwatch.identity import IDENTITY_TOPIC
from sensor.health import register_sensor
from sensor.publish import PublishStats, heartbeats, run_sensor

log = logging.getLogger("kaspwatch")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_source_options(p)
    add_bus_option(p)
    p.add_argument("--topic", default=HITS_TOPIC)
    p.add_argument(
        "--identity-topic",
        default=IDENTITY_TOPIC,
        help="identity records (DHCP, ARP), keyed by address; create it compacted",
    )
    p.add_argument("--observations", action="store_true", help="also publish non-matching names")
    p.add_argument("--heartbeats-topic", default=HEARTBEATS_TOPIC)
    p.add_argument("--heartbeat-interval", type=float, default=15.0, metavar="SECONDS")
    add_metrics_addr(p, "serve the sensor's metrics here")
    add_spool_options(p)
    add_sensor_options(p)
    add_kafka_options(p)
    add_topic_options(p)


def run(args: argparse.Namespace) -> int:
    sensor, reloader = build_sensor(args, observations=args.observations)
    if args.user and not args.pcap:  # made while still root, for the user live capture drops to
        hand_over(args.spool_dir, args.user)
    sources = open_sources(args, sensor)
    spool = Spool(args.spool_dir, args.spool_max_bytes, policy=args.spool_policy)
    publish = PublishStats()
    if args.metrics_addr:
        registry = CollectorRegistry()
        register_sensor(registry, sensor, publish, reloader, sources)
        start_http_server(args.metrics_addr[1], args.metrics_addr[0], registry=registry)

    stopper = Stopper(reloader.request)

    async def main() -> None:
        stopper.install()

        def connect() -> Publisher:
            return open_publisher(
                args.bus,
                client_id=f"kaspwatch-sensor-{args.sensor}",
                security=args.kafka,
                delivery_timeout=args.delivery_timeout,
            )

        topics = [args.topic, args.heartbeats_topic, args.identity_topic]
        publisher = publish.spooling = SpoolingPublisher(
            connect,
            spool,
            args.delivery_timeout,
            passthrough=(args.heartbeats_topic,),
            topics=(args.topic,),
            # at start, or when the bus first answers: before the first send would have the
            # broker auto-create them
            on_connect=lambda: create_topics(args, topics, compacted=[args.identity_topic]),
        )
        await publisher.start()
        await publisher.prepare(topics)
        sensed = asyncio.Event()
        read_out = False  # every source was a file and was read to its end

        def finished() -> bool:
            return read_out

        beat = asyncio.create_task(
            heartbeats(
                sensor,
                publish,
                publisher,  # heartbeats pass straight through, never spooled
                sources,
                sensed,
                args.heartbeat_interval,
                args.heartbeats_topic,
                finished,
            )
        )
        try:
            await run_sensor(
                sources,
                sensor,
                publisher,
                publish,
                stopper.halt,
                args.topic,
                reloader,
                args.identity_topic,
            )
            read_out = not stopper.halt.is_set() and not any(src.live for src in sources)
        finally:
            sensed.set()
            await beat
            await publisher.stop()

    asyncio.run(main())
    if nothing_read(sources):
        return finish(sources, stopper)
    s = sensor.stats
    st = publish.spooling.stats if publish.spooling else None
    log.info(
        "sensor %s: %d %s, %d hits, %d published, %d publish failures, %d decode errors, "
        "%d kernel drops; spool: %d spooled, %d replayed, %d dropped, %d waiting",
        args.sensor,
        s.packets + s.records,
        counts_word(sources),
        s.hits,
        publish.acknowledged,
        publish.lost,
        s.decode_errors,
        sum(src.kernel_drops() for src in sources),
        st.spooled if st else 0,
        st.replayed if st else 0,
        sum(st.dropped.values()) if st else 0,
        publish.spool_depth,
    )
    return finish(sources, stopper) or (1 if publish.lost or publish.spool_depth else 0)
