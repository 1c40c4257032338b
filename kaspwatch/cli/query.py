"""``kaspwatch query``: ask the incident-response store.

    kaspwatch query hosts [--since T] [--until T] [--category C] [--site S --assets FILE]
    kaspwatch query host IP|HOSTNAME|MAC [--since T] [--until T] [--limit N]
    kaspwatch query name PATTERN [--exact]        (zone, *.zone, or the exact name)
    kaspwatch query dns PATTERN [--exact]         (passive DNS of watched names)
    kaspwatch query after-ban [--date YYYY-MM-DD]

Every query takes ``--db URL`` and ``--format table|csv|json|ndjson``. Exit status, like
grep: 0 when it found something, 1 when it found nothing (``host`` with no stored hits
included; the reason goes to stderr), 2 on an error.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date

from consumers.assets import load_assets
from consumers.store import open_backend, queries
from consumers.store.names import PatternError, parse_pattern
from consumers.store.render import render
from kaspwatch.cli.options import add_assets_option, add_db_option, db_url

QUERY_FORMATS = ("table", "csv", "json", "ndjson")


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected YYYY-MM-DD") from None


def _query_opts(p: argparse.ArgumentParser, window: bool = True) -> None:
    add_db_option(p)
    p.add_argument("--format", choices=QUERY_FORMATS, default="table")
    if window:
        p.add_argument("--since", metavar="TIME", help="YYYY-MM-DD or RFC 3339 (UTC)")
        p.add_argument("--until", metavar="TIME", help="YYYY-MM-DD (whole day) or RFC 3339")


def _filter_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--category", action="append", metavar="CAT", help="only these categories (repeatable)"
    )
    p.add_argument("--site", action="append", metavar="SITE", help="only these sites (repeatable)")
    add_assets_option(p)


def add_arguments(p: argparse.ArgumentParser) -> None:
    q = p.add_subparsers(dest="what", required=True, metavar="QUERY")
    h = q.add_parser("hosts", help="every host that talked to Kaspersky")
    _query_opts(h)
    _filter_opts(h)
    h = q.add_parser("host", help="one host's timeline (exit 1 when nothing is stored)")
    h.add_argument(
        "ip", metavar="HOST", help="an IP address, or a host name or MAC from the identity records"
    )
    _query_opts(h)
    h.add_argument("--limit", type=int, default=10_000, help="at most N hits (0 = all)")
    h = q.add_parser("name", help="who contacted a name: ZONE (and under), *.ZONE, or --exact")
    h.add_argument("pattern", metavar="PATTERN")
    h.add_argument("--exact", action="store_true", help="that name only, not the names under it")
    _query_opts(h, window=False)
    add_assets_option(h)
    h = q.add_parser("dns", help="passive DNS: the addresses watched names resolved to")
    h.add_argument("pattern", metavar="PATTERN")
    h.add_argument("--exact", action="store_true", help="that name only, not the names under it")
    _query_opts(h, window=False)
    h = q.add_parser("after-ban", help="hosts active on or after 2024-09-29 (or --date)")
    h.add_argument("--date", type=_day, default=None, metavar="YYYY-MM-DD")
    h.add_argument(
        "--all-verdicts",
        action="store_true",
        help="also hosts whose verdict is web-artefact, unverified-name or management "
        "(default: installed and oem-engine only)",
    )
    _query_opts(h, window=False)
    _filter_opts(h)


def run(args: argparse.Namespace) -> int:
    assets = load_assets(args.assets) if getattr(args, "assets", None) else None
    since = queries.parse_time(args.since) if getattr(args, "since", None) else None
    until = (
        queries.parse_time(args.until, end_of_day=True) if getattr(args, "until", None) else None
    )
    backend = open_backend(db_url(args), readonly=True)
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
                every_verdict=args.all_verdicts,
            )
    finally:
        backend.close()
    render(result, args.format, sys.stdout)
    sys.stdout.flush()
    verdict = result.about.get("verdict")
    if verdict and args.format == "table":  # the other formats are rows only
        lines = "; ".join(verdict["evidence"])
        print(f"kaspwatch: verdict {verdict['verdict']} ({verdict['confidence']}): {lines}",
              file=sys.stderr)  # fmt: skip
    if result.note:
        print(f"kaspwatch: {result.note}", file=sys.stderr)
    return 0 if result.rows else 1
