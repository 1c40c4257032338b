"""Links in every alert: ``--runbook-url`` and ``--dashboard-url`` templates.

A template is an http(s) URL with ``{placeholders}`` drawn from ``FIELDS``; each value is
percent-encoded, so a host or a name can never break out of its place in the URL, e.g.
``https://wiki.example/kaspersky/{category}`` or
``https://grafana.example/d/kaspwatch?var-host={host}&from={ts_ms}``.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Final, Protocol
from urllib.parse import quote, urlsplit

from consumers.assets import Asset
from kaspwatch.event import Event, parse_ts

FIELDS: Final = (
    "alert_id", "host", "category", "stage", "severity", "indicator", "name", "kind",
    "site", "zone", "sensor", "ts_ms",
)  # fmt: skip


class LinkError(ValueError):
    """A template is not usable; the message names the flag."""


def check_template(template: str, flag: str) -> str:
    """The template if it is an http(s) URL whose placeholders are all known; LinkError."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise LinkError(
            f"{flag} {template!r}: {exc} (write a literal brace as {{{{ or }}}})"
        ) from None
    for _, fieldname, spec, conv in parts:
        if fieldname is None:
            continue
        if fieldname not in FIELDS or spec or conv:
            raise LinkError(
                f"{flag} {template!r}: unknown placeholder {{{fieldname}}}; "
                f"use {', '.join('{' + f + '}' for f in FIELDS)}"
            )
    try:
        scheme, netloc = urlsplit(template.format_map(dict.fromkeys(FIELDS, "x")))[:2]
    except ValueError as exc:
        raise LinkError(f"{flag} {template!r}: not a URL ({exc})") from None
    if scheme not in ("http", "https") or not netloc:
        raise LinkError(f"{flag} {template!r}: expected an http:// or https:// URL")
    return template


class Linked(Protocol):
    """What a link is made of: an alert (``consumers.alerts.engine.Alert``)."""

    @property
    def alert_id(self) -> str: ...
    @property
    def event(self) -> Event: ...
    @property
    def stage(self) -> str: ...
    @property
    def severity(self) -> str: ...
    @property
    def asset(self) -> Asset: ...


@dataclass(frozen=True, slots=True)
class Links:
    runbook: str | None = None
    dashboard: str | None = None

    def __bool__(self) -> bool:
        return bool(self.runbook or self.dashboard)

    def urls(self, alert: Linked) -> tuple[str, str]:
        """The alert's runbook and dashboard URLs ("" when not configured)."""
        ev, ind = alert.event, alert.event.indicator
        assert ind is not None
        values = {
            "alert_id": alert.alert_id,
            "host": ev.host,
            "category": ind.category,
            "stage": alert.stage,
            "severity": alert.severity,
            "indicator": ind.id,
            "name": ev.name,
            "kind": ev.kind,
            "site": alert.asset.site,
            "zone": alert.asset.zone,
            "sensor": ev.sensor,
            "ts_ms": str(int(parse_ts(ev.ts).timestamp() * 1000)),
        }
        safe = {k: quote(v, safe="") for k, v in values.items()}
        return (
            self.runbook.format_map(safe) if self.runbook else "",
            self.dashboard.format_map(safe) if self.dashboard else "",
        )
