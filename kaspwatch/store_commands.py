"""``kaspwatch store``, ``query`` and ``api``: the incident-response store on the command line.

    kaspwatch store --bus kafka://HOST:PORT --db URL [--group G] [--retention-days N]
                    [--from-beginning | --from-time 2026-11-01T00:00:00Z] [--until-caught-up]
    kaspwatch query hosts [--since T] [--until T] [--category C] [--site S --assets FILE]
    kaspwatch query host IP [--since T] [--until T] [--limit N]
    kaspwatch query name PATTERN [--exact]        (zone, *.zone, or the exact name)
    kaspwatch query dns PATTERN [--exact]         (passive DNS of watched names)
    kaspwatch query after-ban [--date YYYY-MM-DD]
    kaspwatch api [--listen 127.0.0.1:9110] [--token-file PATH]

Every command takes ``--db URL`` (``sqlite:///PATH`` or ``postgresql://USER@HOST/DB``;
default ``$KASPWATCH_DB``, else ``sqlite:///$KASPWATCH_STATE_DIR/store.sqlite``);
``query`` takes ``--format table|csv|json|ndjson``.

Exit status of ``query``, like grep: 0 when it found something, 1 when it found nothing
(``host`` with no stored hits included; the reason goes to stderr), 2 on an error.
``--from-beginning`` / ``--from-time`` rebuild: a fresh consumer group (named in the log)
replays the hits topic from that point; hits already stored are skipped by ``event_id``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import stat
import sys
import threading
import time
from datetime import UTC, date, datetime
from pathlib import Path

from consumers.store.base import StoreError, default_db_url
from kaspwatch.argtypes import listen_addr
from kaspwatch.bus import BusError
from kaspwatch.event import HITS_TOPIC
from kaspwatch.kafka_options import add_kafka_options

log = logging.getLogger("kaspwatch")

QUERY_FORMATS = ("table", "csv", "json", "ndjson")
DEFAULT_GROUP = "kaspwatch-store"


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive number of days")
    return value


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected YYYY-MM-DD") from None


def _db_opt(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        metavar="URL",
        help="sqlite:///PATH or postgresql://USER@HOST[:PORT]/DB (env KASPWATCH_DB; "
        "default sqlite:///$KASPWATCH_STATE_DIR/store.sqlite)",
    )


def _query_opts(p: argparse.ArgumentParser, window: bool = True) -> None:
    _db_opt(p)
    p.add_argument("--format", choices=QUERY_FORMATS, default="table")
    if window:
        p.add_argument("--since", metavar="TIME", help="YYYY-MM-DD or RFC 3339 (UTC)")
        p.add_argument("--until", metavar="TIME", help="YYYY-MM-DD (whole day) or RFC 3339")


def _filter_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--category", action="append", metavar="CAT", help="only these categories (repeatable)"
    )
    p.add_argument("--site", action="append", metavar="SITE", help="only these sites (repeatable)")
    p.add_argument("--assets", metavar="FILE", help="asset map (YAML or CSV): adds the site")


def add_store_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``store``, ``query`` and ``api`` sub-commands."""
    p = sub.add_parser("store", help="consume hits into the incident-response store")
    p.add_argument("--bus", help="kafka://HOST:PORT[,HOST:PORT] (config 'bus', env KASPWATCH_BUS)")
    p.add_argument("--topic", default=HITS_TOPIC)
    p.add_argument(
        "--group",
        help=f"Kafka consumer group (default {DEFAULT_GROUP}; a fresh one when rebuilding)",
    )
    _db_opt(p)
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

    p = sub.add_parser("query", help="ask the store: hosts, host IP, name, dns, after-ban")
    q = p.add_subparsers(dest="what", required=True, metavar="QUERY")
    h = q.add_parser("hosts", help="every host that talked to Kaspersky")
    _query_opts(h)
    _filter_opts(h)
    h = q.add_parser("host", help="one host's timeline (exit 1 when nothing is stored)")
    h.add_argument("ip", metavar="IP")
    _query_opts(h)
    h.add_argument("--limit", type=int, default=10_000, help="at most N hits (0 = all)")
    h = q.add_parser("name", help="who contacted a name: ZONE (and under), *.ZONE, or --exact")
    h.add_argument("pattern", metavar="PATTERN")
    h.add_argument("--exact", action="store_true", help="that name only, not the names under it")
    _query_opts(h, window=False)
    h.add_argument("--assets", metavar="FILE", help="asset map (YAML or CSV): adds the site")
    h = q.add_parser("dns", help="passive DNS: the addresses watched names resolved to")
    h.add_argument("pattern", metavar="PATTERN")
    h.add_argument("--exact", action="store_true", help="that name only, not the names under it")
    _query_opts(h, window=False)
    h = q.add_parser("after-ban", help="hosts active on or after 2024-09-29 (or --date)")
    h.add_argument("--date", type=_day, default=None, metavar="YYYY-MM-DD")
    _query_opts(h, window=False)
    _filter_opts(h)

    p = sub.add_parser("api", help="serve the store's queries as a read-only HTTP JSON API")
    _db_opt(p)
    p.add_argument(
        "--listen",
        type=listen_addr,
        default=("127.0.0.1", 9110),
        metavar="HOST:PORT",
        help="where to listen (default 127.0.0.1:9110: loopback only)",
    )
    p.add_argument(
        "--token-file",
        metavar="PATH",
        help="require 'Authorization: Bearer <token>' with the token in this file",
    )
    p.add_argument("--assets", metavar="FILE", help="asset map (YAML or CSV): adds the site")


def dispatch_store(args: argparse.Namespace) -> int:
    """Run ``store``, ``query`` or ``api``; store errors are one line on stderr, exit 2."""
    handler = {"store": cmd_store, "query": cmd_query, "api": cmd_api}[args.command]
    try:
        return handler(args)
    except StoreError as exc:
        print(f"kaspwatch: error: {exc}", file=sys.stderr)
        return 2


def _db(args: argparse.Namespace) -> str:
    return str(args.db or default_db_url())


# ---------------------------------------------------------------------------- store


class _Stop:
    """SIGINT/SIGTERM end the consume loop after the batch in hand is committed."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.event.set)


class _Count:
    def __init__(self) -> None:
        self.value = 0

    def inc(self) -> None:
        self.value += 1


def cmd_store(args: argparse.Namespace) -> int:
    from consumers.loop import DeadLetters, consume
    from consumers.store import open_store
    from consumers.store.queries import parse_time
    from kaspwatch.bus import Subscriber, open_subscriber, parse_bus_url

    bus = args.bus or os.environ.get("KASPWATCH_BUS")
    if not bus:
        raise BusError("no bus: give --bus, set KASPWATCH_BUS, or 'bus:' in the config file")
    scheme, where = parse_bus_url(bus)
    start_ms = parse_time(args.from_time) // 1000 if args.from_time else None
    rebuild = bool(args.from_beginning or args.from_time)
    group = args.group or (
        f"{DEFAULT_GROUP}-rebuild-{datetime.now(UTC):%Y%m%dT%H%M%SZ}" if rebuild else DEFAULT_GROUP
    )
    if scheme != "kafka" and args.from_time:
        raise StoreError("--from-time needs a kafka:// bus")
    store = open_store(_db(args), args.retention_days)
    if rebuild:
        log.info(
            "rebuilding %s from %s as consumer group %s (continue later with --group %s)",
            store.backend.where,
            "the beginning" if args.from_beginning else args.from_time,
            group,
            group,
        )
    invalid = _Count()

    async def main() -> None:
        stop = _Stop()
        stop.install()
        sub: Subscriber
        if scheme == "kafka" and (rebuild or args.until_caught_up):
            from consumers.store.replay import ReplaySubscriber
            from kaspwatch.bus.security import PLAINTEXT

            sub = ReplaySubscriber(
                where,
                [args.topic],
                group,
                "kaspwatch-store",
                args.from_beginning,
                start_ms,
                security=args.kafka or PLAINTEXT,
            )
        else:
            sub = open_subscriber(
                bus, [args.topic], group, client_id="kaspwatch-store", security=args.kafka
            )
        await sub.start()
        finished = (lambda: True) if args.until_caught_up else None
        try:
            await consume(sub, [store], stop.event, DeadLetters(invalid), finished)
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


# ---------------------------------------------------------------------------- query


def cmd_query(args: argparse.Namespace) -> int:
    from consumers.assets import load_assets
    from consumers.store import open_backend, queries
    from consumers.store.names import PatternError, parse_pattern
    from consumers.store.render import render

    assets = load_assets(args.assets) if getattr(args, "assets", None) else None
    since = queries.parse_time(args.since) if getattr(args, "since", None) else None
    until = (
        queries.parse_time(args.until, end_of_day=True) if getattr(args, "until", None) else None
    )
    backend = open_backend(_db(args), readonly=True)
    try:
        if args.what == "hosts":
            result = queries.hosts(
                backend, since, until, args.category or (), args.site or (), assets
            )
        elif args.what == "host":
            if args.limit < 0:
                raise queries.QueryError("--limit must be 0 (all) or more")
            result = queries.host_timeline(backend, args.ip, since, until, args.limit)
        elif args.what in ("name", "dns"):
            try:
                match = parse_pattern(args.pattern, args.exact)
            except PatternError as exc:
                raise queries.QueryError(str(exc)) from None
            if args.what == "name":
                result = queries.name_contacts(backend, match, assets)
            else:
                result = queries.passive_dns(backend, match)
        else:
            result = queries.after_ban(
                backend,
                args.date or queries.BAN_DATE,
                args.category or (),
                args.site or (),
                assets,
            )
    finally:
        backend.close()
    render(result, args.format, sys.stdout)
    sys.stdout.flush()
    if result.note:
        print(f"kaspwatch: {result.note}", file=sys.stderr)
    return 0 if result.rows else 1


# ---------------------------------------------------------------------------- api


def _read_token(path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
        mode = Path(path).stat().st_mode
    except OSError as exc:
        raise StoreError(f"{path}: cannot read the token: {exc.strerror}") from None
    if not text or any(c.isspace() for c in text):
        raise StoreError(f"{path}: the token file must hold one token (no spaces)")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("token file %s is readable by others; chmod 600 it", path)
    return text


def cmd_api(args: argparse.Namespace) -> int:
    from consumers.assets import load_assets
    from consumers.store.api import make_server

    token = _read_token(args.token_file) if args.token_file else None
    assets = load_assets(args.assets) if args.assets else None
    host, port = args.listen
    server = make_server(_db(args), (host, port), token, assets)
    if token is None and host not in ("127.0.0.1", "::1", "localhost"):
        log.warning("serving the store on %s without a token: use --token-file", host)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    thread = threading.Thread(target=server.serve_forever, name="kaspwatch-api", daemon=True)
    thread.start()
    shown = f"[{host}]" if ":" in host else host
    log.info(
        "serving the store API on http://%s:%d (%s)",
        shown,
        server.server_address[1],
        "bearer token required" if token else "no token",
    )
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.shutdown()
        server.server_close()
        server.pool.close()
    return 0


# ---------------------------------------------------------------------------- standalone
