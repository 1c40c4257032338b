"""Prometheus Alertmanager (API v2): ``POST {url}/api/v2/alerts`` to every configured URL.

Labels are bounded (alertname, severity, category, stage, site, zone, host); everything
unbounded (names, ids) goes into annotations. A firing alert carries ``endsAt`` =
first sent + ``resolve_after_s``: Alertmanager resolves it then unless it is resolved
earlier (status "resolved" sets ``endsAt`` = now). Alertmanager HA wants every alert
sent to every member, so a batch succeeds only when every URL accepted it. Callers
re-send ``resend_due(now)`` periodically so a restarted Alertmanager learns them again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final

from consumers.alerts.engine import Alert
from consumers.alerts.sinks import SinkError, SinkOptionError
from consumers.alerts.sinks.http import check_url, post
from kaspwatch.table import printable

ALERTNAME: Final = "KasperskyTraffic"
MAX_FIRING: Final = 100_000  # firing alerts remembered for re-sending


@dataclass
class _Sent:
    alert: Alert
    hit_at: float  # wall clock when this sink first saw the alert
    sent_at: float = 0.0  # last time every URL accepted it (0: never)


def _rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _description(a: Alert) -> str:
    """What happened, then what the indicator means and what to do next."""
    d = a.to_dict()
    ind = d["indicator"]
    asked = f" (asked {d['query']})" if "query" in d and d["query"] != d["name"] else ""
    parts = [
        f"{d['host']} ({d['site']}/{d['zone']}, owner {d['owner'] or 'unknown'}, "
        f"criticality {d['criticality']}) reached {d['name']}{asked} via {d['kind']}; "
        f"indicator {ind['id']} ({ind['match']} {ind['pattern']}, confidence "
        f"{ind['confidence']}); first seen {d['first_seen']}, {d['hits']} hits in the window"
    ]
    if "description" in d:
        parts.append(d["description"])
    if "remediation" in d:
        parts.append(f"What to do: {d['remediation']}")
    return "\n\n".join(parts)


LABEL_MAX: Final = 128


def _label(value: str) -> str:
    """A label value: printable (controls escaped) and bounded; labels group and route."""
    value = printable(value)
    return value if len(value) <= LABEL_MAX else value[: LABEL_MAX - 3] + "..."


def to_am(a: Alert, ends_at: float, generator_url: str | None = None) -> dict[str, Any]:
    """One Alertmanager v2 ``postableAlert``. ``generatorURL`` is the alert's dashboard link
    (``--dashboard-url``), else the sink's ``generator_url``."""
    d = a.to_dict()
    ends = _rfc3339(ends_at)
    annotations = {
        "summary": d["summary"],
        "description": _description(a),
        "alert_id": a.alert_id,
        "event_id": a.event.event_id,
        "name": a.event.name,
        "indicator": d["indicator"]["id"],
    }
    for key in ("host_name", "mac", "mac_vendor", "remediation", "runbook_url", "dashboard_url"):
        if d.get(key):
            annotations[key] = d[key]
    if "sources" in d:
        annotations["sources"] = "\n".join(d["sources"])
    doc: dict[str, Any] = {
        "labels": {
            k: _label(v)
            for k, v in (
                ("alertname", ALERTNAME),
                ("severity", a.severity),
                ("category", a.category),
                ("stage", a.stage),
                ("site", a.asset.site),
                ("zone", a.asset.zone),
                ("host", a.event.host),
            )
        },
        "annotations": annotations,
        # Alertmanager refuses startsAt after endsAt (sensor clock ahead): clamp.
        "startsAt": min(a.first_seen, ends),
        "endsAt": ends,
    }
    if a.dashboard_url or generator_url:
        doc["generatorURL"] = a.dashboard_url or generator_url
    return doc


class AlertmanagerSink:
    name = "alertmanager"

    def __init__(
        self,
        urls: list[str],
        resend_s: float = 300,
        resolve_after_s: float = 3600,
        *,
        generator_url: str | None = None,
        attempts: int = 3,
        backoff_s: float = 0.5,
        timeout_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not urls:
            raise ValueError("--alertmanager: at least one URL is needed")
        self.urls = [check_url(u, "--alertmanager").rstrip("/") for u in urls]
        self.resend_s, self.resolve_after_s = resend_s, resolve_after_s
        self.generator_url = generator_url
        self.attempts, self.backoff_s, self.timeout_s = attempts, backoff_s, timeout_s
        # firing alerts to re-send, oldest first; bounded: one forgotten past MAX_FIRING is
        # not re-sent, so Alertmanager resolves it at its endsAt (counted in ``evicted``)
        self._sent: dict[str, _Sent] = {}
        self.max_firing = MAX_FIRING
        self.evicted = 0
        self._clock = clock

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def send(self, alerts: list[Alert]) -> None:
        if not alerts:
            return
        now = self._clock()
        body = json.dumps([self._document(a, now) for a in alerts]).encode()
        results = await asyncio.gather(  # every HA member; one failure fails the batch
            *(self._post(f"{u}/api/v2/alerts", body) for u in self.urls),
            return_exceptions=True,
        )
        errors = [str(r) for r in results if isinstance(r, SinkError)]
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, SinkError):
                raise r
        if errors:
            raise SinkError("; ".join(errors))
        for a in alerts:
            if a.alert_id in self._sent:
                self._sent[a.alert_id].sent_at = now

    async def _post(self, url: str, body: bytes) -> None:
        await post(
            self.name,
            url,
            body,
            _HEADERS,
            attempts=self.attempts,
            backoff_s=self.backoff_s,
            timeout=self.timeout_s,
        )

    async def resolve(self, alert: Alert) -> None:
        """Tell Alertmanager this alert ended now."""
        await self.send([replace(alert, status="resolved")])

    def resend_due(self, now: float) -> list[Alert]:
        """Firing alerts not sent for ``resend_s`` that have not yet expired; prunes."""
        for gone in [k for k, s in self._sent.items() if self._expired(s, now)]:
            del self._sent[gone]
        return [s.alert for s in self._sent.values() if now - s.sent_at > self.resend_s]

    def _expired(self, s: _Sent, now: float) -> bool:
        return now >= s.hit_at + self.resolve_after_s

    def _document(self, a: Alert, now: float) -> dict[str, Any]:
        if a.status == "resolved":
            self._sent.pop(a.alert_id, None)
            return to_am(a, now, self.generator_url)
        s = self._sent.setdefault(a.alert_id, _Sent(a, now))
        if len(self._sent) > self.max_firing:
            del self._sent[next(iter(self._sent))]
            self.evicted += 1
        return to_am(a, s.hit_at + self.resolve_after_s, self.generator_url)


_HEADERS: Final = {"Content-Type": "application/json"}


def add_options(p: argparse._ActionsContainer) -> None:
    p.add_argument(
        "--alertmanager",
        metavar="URL",
        action="append",
        default=[],
        help="Prometheus Alertmanager base URL (repeatable: every one gets every alert)",
    )


def from_options(args: argparse.Namespace) -> AlertmanagerSink | None:
    if not args.alertmanager:
        return None
    try:
        return AlertmanagerSink(args.alertmanager)
    except ValueError as exc:
        raise SinkOptionError(str(exc)) from None
