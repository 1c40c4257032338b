"""``kaspwatch store``: consume hits into the incident-response store.

    kaspwatch store --bus kafka://HOST:PORT --db URL [--group G] [--retention-days N]
                    [--from-beginning | --from-time 2026-11-01T00:00:00Z] [--until-caught-up]

``--db URL`` is ``sqlite:///PATH`` or ``postgresql://USER@HOST/DB`` (default ``$KASPWATCH_DB``,
else ``sqlite:///$KASPWATCH_STATE_DIR/store.sqlite``). ``--from-beginning`` /
``--from-time`` rebuild: a fresh consumer group (named in the log) replays the hits topic
from that point; hits already stored are skipped by ``event_id``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from datetime import UTC, datetime

from consumers.identity import parse_with_identities
from consumers.loop import DeadLetters, consume
from consumers.store import StoreError, open_store
from consumers.store.queries import parse_time
from kaspwatch.bus import Replay, open_subscriber, parse_bus_url
from kaspwatch.cli.kafka import (
    add_group_options,
    add_kafka_options,
    add_topic_options,
    create_topics,
)
from kaspwatch.cli.options import add_bus_option, add_db_option, db_url
from kaspwatch.cli.process import Stopper
from kaspwatch.event import HITS_TOPIC
from kaspwatch.identity import IDENTITY_TOPIC

log = logging.getLogger("kaspwatch")

DEFAULT_GROUP = "kaspwatch-store"


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive number of days")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_bus_option(p)
    p.add_argument("--topic", default=HITS_TOPIC)
    p.add_argument(
        "--identity-topic",
        default=IDENTITY_TOPIC,
        help="identity records (DHCP, ARP) kept to name the machine behind each hit; '' for none",
    )
    p.add_argument(
        "--group",
        help=f"Kafka consumer group (default {DEFAULT_GROUP}; a fresh one when rebuilding)",
    )
    add_db_option(p)
    p.add_argument(
        "--retention-days",
        type=_positive,
        metavar="N",
        help="delete stored hits older than N days (aggregates keep first/last seen)",
    )
    start = p.add_mutually_exclusive_group()
    start.add_argument(
        "--from-beginning", action="store_true", help="rebuild: replay the whole hits topic"
    )
    start.add_argument(
        "--from-time", metavar="TIME", help="rebuild: replay from this time (RFC 3339 or date)"
    )
    p.add_argument(
        "--until-caught-up",
        action="store_true",
        help="exit once every hit on the topic is stored (for a rebuild)",
    )
    add_kafka_options(p)
    add_group_options(p)
    add_topic_options(p)


class _Count:
    def __init__(self) -> None:
        self.value = 0

    def inc(self) -> None:
        self.value += 1


def run(args: argparse.Namespace) -> int:
    scheme, _ = parse_bus_url(args.bus)
    start_ms = parse_time(args.from_time) // 1000 if args.from_time else None
    rebuild = bool(args.from_beginning or args.from_time)
    group = args.group or (
        f"{DEFAULT_GROUP}-rebuild-{datetime.now(UTC):%Y%m%dT%H%M%SZ}" if rebuild else DEFAULT_GROUP
    )
    if scheme != "kafka" and args.from_time:
        raise StoreError("--from-time needs a kafka:// bus")
    store = open_store(db_url(args, create_default=True), args.retention_days)
    if rebuild:
        log.info(
            "rebuilding %s from %s as consumer group %s (continue later with --group %s)",
            store.backend.where,
            "the beginning" if args.from_beginning else args.from_time,
            group,
            group,
        )
    invalid = _Count()
    replay = Replay(args.from_beginning, start_ms) if rebuild or args.until_caught_up else None

    async def main() -> None:
        stopper = Stopper()
        stopper.install()
        topics = [args.identity_topic, args.topic] if args.identity_topic else [args.topic]
        sub = open_subscriber(
            args.bus,
            topics,
            group,
            client_id="kaspwatch-store",
            security=args.kafka,
            replay=replay,
            settings=args.group_settings,
        )
        await create_topics(args, topics, [args.identity_topic], args.group_settings)
        await sub.start()
        finished = (lambda: True) if args.until_caught_up else None
        try:
            parse = parse_with_identities(args.identity_topic)
            await consume(sub, [store], stopper.stop, DeadLetters(invalid), finished, parse)
        finally:
            await sub.stop()

    started = time.monotonic()
    try:
        asyncio.run(main())
    finally:
        store.close()
    s = store.stats
    log.info(
        "store: %d hits stored, %d already stored, %d past retention, %d purged, "
        "%d invalid messages in %.1f s",
        s.stored,
        s.duplicates,
        s.expired,
        s.purged,
        invalid.value,
        time.monotonic() - started,
    )
    return 0
