"""Alerts: at most one per (host, indicator category) per suppression window.

Windows run on event time, so replaying a capture or the topic gives the same alerts,
and alert ids are derived from the first event of the window, so a replay after a
crash re-sends the same id and a downstream deduplicates it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TextIO

from kaspwatch.bus import Publisher
from kaspwatch.event import ALERTS_TOPIC, Event, parse_ts

SEVERITY_RANK = {"info": 0, "low": 1, "medium": 2, "high": 3, "critical": 4}


@dataclass
class _Window:
    start: datetime
    suppressed: int = 0


@dataclass(frozen=True, slots=True)
class Alert:
    alert_id: str
    event: Event

    def to_dict(self) -> dict[str, Any]:
        ev = self.event
        ind = ev.indicator
        assert ind is not None
        doc: dict[str, Any] = {
            "schema": 1,
            "alert_id": self.alert_id,
            "ts": ev.ts,
            "host": ev.host,
            "category": ind.category,
            "severity": ind.severity,
            "confidence": ind.confidence,
            "indicator": ind.to_dict(),
            "name": ev.name,
            "kind": ev.kind,
            "dst_ip": ev.dst_ip,
            "dst_port": ev.dst_port,
            "sensor": ev.sensor,
            "event_id": ev.event_id,
            "summary": (
                f"{ev.host} contacted Kaspersky {ind.category} endpoint {ev.name} "
                f"({ev.kind}, indicator {ind.id}, severity {ind.severity})"
            ),
        }
        if ev.query:
            doc["query"] = ev.query
        return doc

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()


class AlertEngine:
    """Pure decision logic: which hits become alerts."""

    def __init__(self, window_s: float = 3600.0) -> None:
        self.window = timedelta(seconds=window_s)
        self._state: dict[tuple[str, str], _Window] = {}
        self.alerts = 0
        self.suppressed = 0
        self.allowlisted = 0

    def feed(self, event: Event) -> Alert | None:
        ind = event.indicator
        if ind is None:
            return None
        if event.extra.get("allowlisted"):
            self.allowlisted += 1  # a sanctioned exception: counted, never alerted
            return None
        key = (event.host, ind.category)
        ts = parse_ts(event.ts)
        win = self._state.get(key)
        if win is not None and win.start <= ts < win.start + self.window:
            win.suppressed += 1
            self.suppressed += 1
            return None
        self._state[key] = _Window(ts)
        self.alerts += 1
        digest = hashlib.blake2b(
            f"{event.host}|{ind.category}|{event.event_id}".encode(), digest_size=16
        ).hexdigest()
        return Alert(digest, event)


class AlertSink:
    """Writes alerts to stdout (NDJSON) and/or the alerts topic, waiting for both."""

    def __init__(
        self,
        engine: AlertEngine,
        publisher: Publisher | None = None,
        out: TextIO | None = sys.stdout,
        topic: str = ALERTS_TOPIC,
        render: Callable[[Alert], str] | None = None,
    ) -> None:
        self.engine = engine
        self.publisher = publisher
        self.out = out
        self.topic = topic
        self.render = render or render_json
        self.emitted = 0

    async def handle(self, events: list[Event]) -> None:
        pending: list[asyncio.Future[Any]] = []
        for ev in events:
            alert = self.engine.feed(ev)
            if alert is None:
                continue
            self.emitted += 1
            body = alert.to_json()
            if self.out is not None:
                self.out.write(self.render(alert) + "\n")
            if self.publisher is not None:
                pending.append(await self.publisher.send(self.topic, body, ev.host.encode()))
        if self.out is not None:
            self.out.flush()
        if pending:
            await asyncio.gather(*pending)


def render_json(alert: Alert) -> str:
    return alert.to_json().decode()


def render_text(alert: Alert) -> str:
    """One line for a person at a terminal."""
    d = alert.to_dict()
    asked = f", asked {d['query']}" if "query" in d else ""
    return (
        f"ALERT {d['ts']} {d['severity'].upper():<6} {d['category']:<14} host {d['host']:<15} "
        f"{d['name']} ({d['kind']}{asked}) [{d['indicator']['id']}]"
    )
