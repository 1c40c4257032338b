"""``kaspwatch indicators check | explain | list | export``: trust, read, debug and hand out the
packs."""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from pathlib import Path
from typing import Any

from kaspwatch.cli.options import add_rule_options, rule_source
from kaspwatch.table import print_table
from sensor.decode import normalise_name
from sensor.rules.allowlist import load_allowlist
from sensor.rules.export import FORMATS, export
from sensor.rules.indicators import Indicator, PackError, load_pack, shipped_pack_paths
from sensor.rules.match import KIND_WHERE, Matcher


def add_arguments(p: argparse.ArgumentParser) -> None:
    isub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = isub.add_parser("check", help="validate packs (no FILE: shipped + configured site packs)")
    c.add_argument("files", nargs="*", metavar="FILE")
    add_rule_options(c)
    e = isub.add_parser("explain", help="which indicator matches a name or IP, and why")
    e.add_argument("target", metavar="NAME_OR_IP")
    e.add_argument("--kind", default=None, help="where it was seen (default: every kind)")
    e.add_argument("--format", choices=("text", "json"), default="text")
    add_rule_options(e)
    ls = isub.add_parser("list", help="every indicator with its fields")
    ls.add_argument("--format", choices=("table", "json"), default="table")
    add_rule_options(ls)
    x = isub.add_parser(
        "export", help="the packs as Suricata rules, Zeek intel, a DNS RPZ, CSV or JSON"
    )
    x.add_argument("--format", choices=tuple(FORMATS), required=True)
    x.add_argument(
        "--out",
        metavar="FILE",
        help="write here (default stdout); zeek-intel also writes its script as FILE's .zeek",
    )
    x.add_argument(
        "--rpz-action",
        choices=("nxdomain", "nodata", "passthru"),
        default="nxdomain",
        help="rpz: block with NXDOMAIN or NODATA, or passthru to only log (default nxdomain)",
    )
    add_rule_options(x)


def run(args: argparse.Namespace) -> int:
    action = {"check": _check, "explain": _explain, "list": _list, "export": _export}[args.action]
    return action(args)


def _check(args: argparse.Namespace) -> int:
    """Validate each file on its own; report every bad one as ``file:line: message``."""
    source = rule_source(args)
    if args.files:
        packs, allowlists = list(args.files), [args.allowlist] if args.allowlist else []
    else:
        shipped = [str(p) for p in shipped_pack_paths()] if source.shipped else []
        packs = shipped + list(source.site_packs)
        allowlists = [source.allowlist] if source.allowlist else []
    failed = 0
    ids: dict[str, str] = {}
    for path in packs:
        try:
            pack = load_pack(path)
        except PackError as exc:
            print(exc, file=sys.stderr)
            failed += 1
            continue
        for ind in pack.indicators:
            if ind.id in ids:
                print(f"{path}: note: {ind.id} overrides the indicator of {ids[ind.id]}")
            ids[ind.id] = path
        print(
            f"{path}: ok: pack {pack.name} {pack.version}, {len(pack.indicators)} indicators, "
            f"{len(pack.exclusions)} exclusions"
        )
    for path in allowlists:
        try:
            allow = load_allowlist(path)
        except PackError as exc:
            print(exc, file=sys.stderr)
            failed += 1
            continue
        expired = len(allow.entries) - len(allow.active_entries())
        print(f"{path}: ok: allowlist, {len(allow.entries)} entries ({expired} expired)")
    return 1 if failed else 0


def _describe(ind: Indicator, reason: str) -> dict[str, Any]:
    return {
        "id": ind.id,
        "pattern": ind.pattern,
        "match": ind.match,
        "where": sorted(ind.where),
        **({"path_prefix": ind.path_prefix} if ind.path_prefix else {}),
        "category": ind.category,
        "severity": ind.severity,
        "confidence": ind.confidence,
        "pack": ind.pack,
        "reason": reason,
        "description": ind.description,
        "sources": list(ind.sources),
    }


def _explain(args: argparse.Namespace) -> int:
    rules = rule_source(args).load()
    matcher: Matcher = rules.matcher
    raw = args.target.strip()
    result: dict[str, Any] = {"input": raw}
    try:
        addr = ipaddress.ip_address(raw.strip("[]"))
    except ValueError:
        addr = None
    if addr is not None:
        result["name"] = str(addr)
        found = matcher.ip_candidates(addr.packed)
        excluded = None
    else:
        name = normalise_name(raw)
        if name is None:
            print(
                f"kaspwatch: error: {raw!r} is neither a host name nor an IP address",
                file=sys.stderr,
            )
            return 2
        result["name"] = name
        found = list(matcher.candidates(name))
        if args.kind:
            where = KIND_WHERE.get(args.kind)
            if where is None:
                print(f"kaspwatch: error: unknown kind {args.kind!r}", file=sys.stderr)
                return 2
            found = [(i, r) for i, r in found if where in i.where]
        excluded = matcher.excluded(name)
    result["excluded_by"] = excluded
    matches = [] if excluded else [_describe(i, r) for i, r in found]
    result["match"] = matches[0] if matches else None
    result["also"] = matches[1:]
    if args.format == "json":
        print(json.dumps(result, indent=2))
    else:
        _print_explain(result)
    return 0 if result["match"] else 1


def _print_explain(result: dict[str, Any]) -> None:
    print(result["name"])
    if result["excluded_by"]:
        print(
            f"  no match: excluded by {result['excluded_by']} (pack exclusions: a known lookalike "
            "or a non-product host)"
        )
        return
    best = result["match"]
    if best is None:
        print("  no match: no indicator covers this name or address")
        return
    print(
        f"  MATCH {best['id']}  {best['category']} / severity {best['severity']} / "
        f"confidence {best['confidence']}"
    )
    print(f"    why:   {best['reason']} ({best['match']})")
    print(
        f"    where: {', '.join(best['where'])}"
        + (
            f", only when the HTTP path starts with {best['path_prefix']}"
            if "path_prefix" in best
            else ""
        )
        + f"   pack: {best['pack']}"
    )
    print(f"    what:  {best['description']}")
    for src in best["sources"]:
        print(f"    source: {src}")
    for other in result["also"]:
        print(
            f"  also covered by {other['id']} ({other['match']} {other['pattern']}, "
            f"{other['category']}/{other['severity']}): less specific"
        )


def _list(args: argparse.Namespace) -> int:
    rules = rule_source(args).load()
    indicators = list(rules.matcher.indicators.values())
    if args.format == "json":
        print(json.dumps([_describe(i, "") | {"reason": None} for i in indicators], indent=2))
        return 0
    rows = [
        (
            i.id,
            i.match,
            i.pattern,
            i.category,
            i.severity,
            i.confidence,
            ",".join(sorted(i.where)),
            i.pack,
        )
        for i in indicators
    ]
    print_table(
        rows,
        sys.stdout,
        ("id", "match", "pattern", "category", "severity", "confidence", "where", "pack"),
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    rules = rule_source(args).load()
    out = Path(args.out) if args.out else None
    if out is not None and (out.is_dir() or not out.parent.is_dir()):
        print(
            f"kaspwatch: error: --out {args.out}: give a file in an existing directory",
            file=sys.stderr,
        )
        return 2
    files = export(rules.matcher.packs, args.format, out.name if out else None, args.rpz_action)
    (_, text), *companions = files.items()
    if out is None:
        sys.stdout.write(text)
        for name, _ in companions:
            print(f"kaspwatch: note: {name} is written only with --out", file=sys.stderr)
        return 0
    for name, body in files.items():
        target = out.parent / name
        tmp = target.with_name(target.name + ".tmp")
        try:
            tmp.write_text(body, encoding="utf-8")
            tmp.replace(target)
        except OSError as exc:
            print(f"kaspwatch: error: --out {target}: {exc.strerror}", file=sys.stderr)
            return 2
        print(f"{target}: {args.format}, {body.count(chr(10))} lines", file=sys.stderr)
    return 0
