"""CSV and JSON for SIEM lookups and MISP-style imports: every field, nothing lost.

CSV has one row per indicator and per exclusion (``type``), the pack version in a column (a
lookup table takes no comment lines); JSON carries the pack version at the top.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any, Final

from sensor.rules.export.view import PackView, reference
from sensor.rules.indicators import Exclusion, Indicator, expand_range

FORMAT: Final = "kaspwatch-indicator-export/1"
COLUMNS: Final = (
    "type",
    "id",
    "pattern",
    "match",
    "names",
    "where",
    "path_prefix",
    "category",
    "severity",
    "confidence",
    "pack",
    "pack_version",
    "reference",
    "description",
    "sources",
)


def _indicator(ind: Indicator) -> dict[str, Any]:
    return {
        "id": ind.id,
        "pattern": ind.pattern,
        "match": ind.match,
        "names": expand_range(ind.pattern) if ind.match == "range" else [ind.pattern],
        "where": sorted(ind.where),
        "path_prefix": ind.path_prefix,
        "category": ind.category,
        "severity": ind.severity,
        "confidence": ind.confidence,
        "pack": ind.pack,
        "reference": reference(ind),
        "description": ind.description,
        "sources": list(ind.sources),
    }


def _exclusion(e: Exclusion) -> dict[str, Any]:
    return {"pattern": e.pattern, "match": e.match, "reason": " ".join(e.reason.split())}


def write_json(view: PackView, out_name: str) -> dict[str, str]:
    doc = {
        "format": FORMAT,
        "pack_version": view.version,
        "indicators": [_indicator(i) for i in view.indicators],
        "exclusions": [_exclusion(e) for e in view.exclusions],
    }
    return {out_name: json.dumps(doc, indent=2, ensure_ascii=False) + "\n"}


def write_csv(view: PackView, out_name: str) -> dict[str, str]:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for ind in view.indicators:
        d = _indicator(ind)
        w.writerow(
            [
                "indicator",
                d["id"],
                d["pattern"],
                d["match"],
                " ".join(d["names"]),
                " ".join(d["where"]),
                d["path_prefix"] or "",
                d["category"],
                d["severity"],
                d["confidence"],
                d["pack"],
                view.version,
                d["reference"] or "",
                d["description"],
                " | ".join(d["sources"]),
            ]
        )
    for e in view.exclusions:
        w.writerow(
            [
                "exclusion",
                "",
                e.pattern,
                e.match,
                e.pattern,
                *[""] * 6,
                view.version,
                "",
                " ".join(e.reason.split()),
                "",
            ]
        )
    return {out_name: buf.getvalue()}
