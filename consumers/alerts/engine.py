"""Alerts an on-call analyst can act on: one per (host, category, stage) per window.

Stages escalate: ``first_contact`` (the first hit of a category), ``sustained`` (the
host keeps at it: SUSTAINED_HITS hits spread over at least SUSTAINED_SPAN in the window)
and ``resolver_bypass`` (a watched name asked of a public resolver: the product is
working around DNS enforcement). Severity starts at the indicator's, rises one step for
``sustained`` and ``resolver_bypass``, and one more when the host sits in an OT zone.

A packet several sensors report (the same ``packet_id``) is one hit: the copies after
the first count for nothing.

Each hit also feeds the host's verdict (``verdict.py``). While a host's verdict is
``web-artefact`` or ``unverified-name`` its alerts are at most ``low`` and say why; the
window remembers that (``capped``). When later evidence makes the verdict ``installed``,
``management`` or ``oem-engine``, a ``confirmed`` alert raises it at the confirming
indicator's severity, once per window.

Windows run on event time, so replaying a capture or the topic gives the same alerts;
alert ids derive from the window's first event, so a replay re-sends the same id.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Final

from consumers.alerts.links import Links
from consumers.assets import UNKNOWN, Asset, AssetMap
from consumers.identity import HostIdentity, IdentityBook
from consumers.verdict import Verdict, Verdicts
from kaspwatch.event import CATEGORIES, SEVERITIES, Event, parse_ts

ASCENDING: Final = tuple(reversed(SEVERITIES))  # info first: a raise is a step up
SEVERITY_RANK: Final = {s: i for i, s in enumerate(ASCENDING)}
STAGES: Final = ("first_contact", "sustained", "resolver_bypass", "confirmed")
CAPPED: Final = "capped"  # a window mark (not a stage): an alert of it was held at low
WEAK_CEILING: Final = "low"
SUSTAINED_HITS: Final = 5
SUSTAINED_SPAN: Final = timedelta(minutes=5)
MAX_WINDOWS: Final = 200_000  # (host, category) windows kept in memory
# packet ids a window remembers: other sensors' copies of a packet come within moments
# (the hits topic is keyed by host, so one host's reports share a partition)
WINDOW_PACKETS: Final = 512


def raise_severity(severity: str, steps: int) -> str:
    return ASCENDING[min(SEVERITY_RANK.get(severity, 2) + steps, len(ASCENDING) - 1)]


@dataclass
class Window:
    """What the engine remembers per (host, category): persisted across restarts."""

    start: datetime
    first_event: str
    hits: int = 0
    last: datetime | None = None
    stages: set[str] = field(default_factory=set)
    # the latest packets counted (not persisted: a copy across a restart counts again)
    packets: dict[str, None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Alert:
    alert_id: str
    event: Event
    stage: str
    severity: str
    asset: Asset
    hits: int
    first_seen: str
    status: str = "firing"
    verdict: Verdict | None = None  # the host's verdict when the alert was raised
    capped: bool = False  # held at low: the verdict is a web artefact or an unverified name
    confirms: tuple[str, ...] = ()  # confirmed: the categories whose low alerts it raises
    runbook_url: str = ""
    dashboard_url: str = ""
    identity: HostIdentity | None = None  # the machine that held the address at the hit

    @property
    def category(self) -> str:
        assert self.event.indicator is not None
        return self.event.indicator.category

    def to_dict(self) -> dict[str, Any]:
        ev = self.event
        ind = ev.indicator
        assert ind is not None
        where = f" in {self.asset.site}/{self.asset.zone}" if self.asset is not UNKNOWN else ""
        who = self.identity
        if who is not None and (who.hostname or who.mac):
            where = f" ({', '.join(x for x in (who.hostname, who.mac) if x)}){where}"
        doc: dict[str, Any] = {
            "schema": 1,
            "alert_id": self.alert_id,
            "status": self.status,
            "ts": ev.ts,
            "first_seen": self.first_seen,
            "host": ev.host,
            "category": ind.category,
            "stage": self.stage,
            "severity": self.severity,
            "indicator_severity": ind.severity,
            "confidence": ind.confidence,
            "indicator": ind.core(),
            "name": ev.name,
            "kind": ev.kind,
            "dst_ip": ev.dst_ip,
            "dst_port": ev.dst_port,
            "sensor": ev.sensor,
            "event_id": ev.event_id,
            "hits": self.hits,
            "site": self.asset.site,
            "zone": self.asset.zone,
            "owner": self.asset.owner,
            "criticality": self.asset.criticality,
            "summary": (
                f"{ev.host}{where} {_STAGE_TEXT[self.stage]} Kaspersky {ind.category} endpoint "
                f"{ev.name} ({ev.kind}, indicator {ind.id})"
            ),
        }
        if ev.query:
            doc["query"] = ev.query
        v = self.verdict
        if v is not None:
            doc["verdict"] = v.verdict
            doc["verdict_confidence"] = v.confidence
            doc["evidence"] = list(v.evidence)
            if self.capped:
                doc["verdict_reason"] = f"at most low: {v.reason}"
                doc["summary"] += f"; verdict {v.verdict}, held at low: {v.reason}"
            elif self.confirms:
                doc["confirms"] = list(self.confirms)
                doc["summary"] += (
                    f"; verdict now {v.verdict} ({v.confidence}): raises the earlier low "
                    f"{', '.join(self.confirms)} alerts"
                )
        if who is not None:
            doc["host_name"], doc["mac"] = who.hostname, who.mac
            doc["mac_vendor"], doc["identity_source"] = who.mac_vendor, who.source
        # guidance: what the hit means, what to do next, where it is documented
        for key, value in (
            ("description", ind.description),
            ("remediation", ind.remediation),
            ("sources", list(ind.sources)),
            ("runbook_url", self.runbook_url),
            ("dashboard_url", self.dashboard_url),
        ):
            if value:
                doc[key] = value
        return doc

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()


_STAGE_TEXT: Final = {
    "first_contact": "contacted",
    "sustained": "keeps contacting",
    "resolver_bypass": "bypassed internal DNS (public resolver) to reach",
    "confirmed": "is confirmed running Kaspersky by",
}


class AlertEngine:
    """Pure decision logic: which hits become alerts, at which stage and severity."""

    def __init__(
        self,
        window_s: float = 3600.0,
        assets: AssetMap | None = None,
        max_windows: int = MAX_WINDOWS,
        links: Links | None = None,
        identities: IdentityBook | None = None,
    ) -> None:
        self.window = timedelta(seconds=window_s)
        self.links = links or Links()
        self.identities = identities if identities is not None else IdentityBook()
        self.assets = assets or AssetMap([])
        # (host, category) -> window, oldest opened first; bounded: a flood of spoofed
        # sources must not grow it without end. An evicted window that was still open can
        # only cost a repeated first_contact alert for that host later, never a lost one.
        self.windows: dict[tuple[str, str], Window] = {}
        self.max_windows = max_windows
        self.evicted = 0
        self.newest: datetime | None = None  # the latest event time seen
        self.alerts = 0
        self.suppressed = 0
        self.allowlisted = 0
        self.repeats = 0  # hits of a packet already counted (another sensor's copy)
        self.verdicts = Verdicts(max_windows)

    def feed(self, event: Event) -> list[Alert]:
        """Alerts this hit raises (none, or one per stage it reaches first)."""
        ind = event.indicator
        if ind is None:
            return []
        if event.extra.get("allowlisted"):
            self.allowlisted += 1  # a sanctioned exception: counted, never alerted
            return []
        before, verdict = self.verdicts.feed(event)
        key = (event.host, ind.category)
        ts = parse_ts(event.ts)
        if self.newest is None or ts > self.newest:
            self.newest = ts
        win = self.windows.get(key)
        if win is None or not (win.start <= ts < win.start + self.window):
            self.windows.pop(key, None)
            win = self.windows[key] = Window(ts, event.event_id)
            if len(self.windows) > self.max_windows:
                del self.windows[next(iter(self.windows))]
                self.evicted += 1
        pid = event.packet_id
        if pid is not None:
            if pid in win.packets:
                self.repeats += 1  # the same packet from another sensor: not another hit
                return []
            win.packets[pid] = None
            if len(win.packets) > WINDOW_PACKETS:
                del win.packets[next(iter(win.packets))]
        win.hits += 1
        win.last = ts if win.last is None else max(win.last, ts)
        reached = ["first_contact"]
        if win.hits >= SUSTAINED_HITS and win.last - win.start >= SUSTAINED_SPAN:
            reached.append("sustained")
        if event.extra.get("resolver_bypass"):
            reached.append("resolver_bypass")
        capped = verdict is not None and not verdict.strong
        confirms: tuple[str, ...] = ()
        if verdict is not None and verdict.strong and (before is None or not before.strong):
            confirms = self._confirms(event.host, ind.category)  # rose: raise low alerts
            if confirms:
                reached.append("confirmed")
        new = [stage for stage in reached if stage not in win.stages]
        if not new:
            self.suppressed += 1
            return []
        who = self.identities.at(event.host, event.ts)  # what is known now, at the hit's time
        # the machine's own entry (its MAC, its name) wins over the address's network
        asset = (
            self.assets.lookup(event.host, who.mac, who.hostname)
            if who is not None
            else self.assets.lookup(event.host)
        )
        out = []
        for stage in new:
            win.stages.add(stage)
            steps = (stage not in ("first_contact", "confirmed")) + asset.is_ot
            severity = raise_severity(ind.severity, steps)
            if capped and SEVERITY_RANK[severity] > SEVERITY_RANK[WEAK_CEILING]:
                severity = WEAK_CEILING
            if capped:
                win.stages.add(CAPPED)
            digest = hashlib.blake2b(
                f"{event.host}|{ind.category}|{stage}|{win.first_event}".encode(), digest_size=16
            ).hexdigest()
            out.append(
                Alert(
                    alert_id=digest,
                    event=event,
                    stage=stage,
                    severity=severity,
                    asset=asset,
                    hits=win.hits,
                    first_seen=win.start.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                    verdict=verdict,
                    capped=capped,
                    confirms=confirms if stage == "confirmed" else (),
                    identity=who,
                )
            )
        self.alerts += len(out)
        return [self._linked(a) for a in out] if self.links else out

    def _linked(self, alert: Alert) -> Alert:
        runbook, dashboard = self.links.urls(alert)
        return replace(alert, runbook_url=runbook, dashboard_url=dashboard)

    def _confirms(self, host: str, current: str) -> tuple[str, ...]:
        """The categories whose windows hold an alert kept at low for this host, marked
        confirmed so that they are raised once (the mark is saved with the windows); the
        current event's window gets its stage from ``feed``."""
        found = []
        for category in CATEGORIES:
            win = self.windows.get((host, category))
            if win is not None and CAPPED in win.stages and "confirmed" not in win.stages:
                if category != current:
                    win.stages.add("confirmed")
                found.append(category)
        return tuple(found)


def render_json(alert: Alert) -> str:
    return alert.to_json().decode()


def render_text(alert: Alert) -> str:
    """One line for a person at a terminal."""
    d = alert.to_dict()
    asked = f", asked {d['query']}" if "query" in d else ""
    site = f" {d['site']}/{d['zone']}" if d["site"] != "unknown" else ""
    return (
        f"ALERT {d['ts']} {d['severity'].upper():<8} {d['category']:<14} {d['stage']:<15} "
        f"host {d['host']}{site}  {d['name']} ({d['kind']}{asked}) [{d['indicator']['id']}]"
    )
