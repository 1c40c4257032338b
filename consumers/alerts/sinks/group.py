"""What a grouped message (one host's alerts, ``--group-wait``) says about its host."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from consumers.alerts.engine import SEVERITY_RANK


def group_summary(docs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What a grouped message says about its host: every category, stage and name."""
    first = docs[0]

    def unique(key: str) -> list[str]:
        return list(dict.fromkeys(str(d[key]) for d in docs))

    severity = max((d["severity"] for d in docs), key=lambda s: SEVERITY_RANK.get(s, 0))
    items = "; ".join(f"{d['category']} {d['stage']} {d['name']} [{d['severity']}]" for d in docs)
    where = f" ({first['site']}/{first['zone']})" if first["site"] != "unknown" else ""
    count = f"{len(docs)} Kaspersky alert{'s' if len(docs) != 1 else ''}"
    return {
        "host": first["host"],
        "site": first["site"],
        "zone": first["zone"],
        "owner": first["owner"],
        "criticality": first["criticality"],
        "severity": severity,
        "count": len(docs),
        "first_ts": min(d["ts"] for d in docs),
        "last_ts": max(d["ts"] for d in docs),
        "categories": unique("category"),
        "stages": unique("stage"),
        "names": unique("name"),
        "indicators": list(dict.fromkeys(d["indicator"]["id"] for d in docs)),
        "alert_ids": [d["alert_id"] for d in docs],
        "summary": f"{first['host']}{where}: {count}: {items}",
    }
