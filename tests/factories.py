"""Builders of test inputs that several test modules use: indicator hits and site packs.

Test modules import these from here, never from one another: a test module is free to
change its helpers without breaking unrelated files that happened to borrow them.
"""

from __future__ import annotations

from pathlib import Path

from kaspwatch.event import Event, IndicatorRef, format_ts, make_event_id

UPDATE = IndicatorRef("kw-update-x", "upd.kaspersky.com", "suffix", "update", "high", "high")
KSN = IndicatorRef("kw-telemetry-x", "ksn.kaspersky-labs.com", "suffix", "telemetry", "high", "low")


EPOCH = 1_750_000_000  # 2025-06-15: hits are dated after it; the contract refuses the future


def hit(
    host: str, seconds: float, ind: IndicatorRef = UPDATE, name: str = "s01.upd.kaspersky.com"
) -> Event:
    """A DNS query hit from ``host`` at ``seconds`` after a fixed epoch (event time)."""
    ts_ns = int((EPOCH + seconds) * 1e9)
    return Event(
        event_id=make_event_id("s", ts_ns, host, 1, "10.0.0.53", 53, "udp", "dns_query", name),
        ts=format_ts(ts_ns),
        sensor="s",
        kind="dns_query",
        name=name,
        src_ip=host,
        src_port=1,
        dst_ip="10.0.0.53",
        dst_port=53,
        transport="udp",
        indicator=ind,
    )


HEAD = "schema: kaspwatch-indicator-pack/1\nname: site\nversion: '7'\nindicators:\n"
ROW = (
    "  - id: {id}\n    pattern: '{pattern}'\n    match: {match}\n    category: {category}\n"
    "    severity: high\n    confidence: high\n    sources: [CMDB asset 4711]\n"
    "    description: our own update mirror\n"
)


def site_pack(tmp_path: Path, *rows: str, name: str = "site.yaml") -> Path:
    """A site indicator pack file made of ``HEAD`` and ``ROW.format(...)`` rows."""
    p = tmp_path / name
    p.write_text(HEAD + "".join(rows))
    return p
