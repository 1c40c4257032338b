"""Alerts as OCSF Detection Finding (class_uid 2004, OCSF 1.x) for the Kafka alerts topic,
so a SIEM that speaks OCSF (Security Lake, Splunk, Sentinel...) takes them as they are.

The topic can be read back: the sink keeps the offsets the broker acknowledged for its last
batch (``acked``, recorded with the delivery), and ``read_back`` lists the alert ids on the
topic past such offsets, so after a crash the delivery never writes an alert twice."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from consumers.alerts.sinks import SinkError
from consumers.alerts.sinks.ecs import ecs_uid, to_ecs
from consumers.alerts.sinks.endpoint import kaspersky_endpoint, resolver
from kaspwatch import __version__
from kaspwatch.bus import BusError, Publisher, TopicReader
from kaspwatch.event import ALERTS_TOPIC, parse_ts

if TYPE_CHECKING:
    from consumers.alerts.engine import Alert

OCSF_VERSION: Final = "1.3.0"
CLASS_UID: Final = 2004  # Detection Finding
CATEGORY_UID: Final = 2  # Findings
SEVERITY_ID: Final = {"info": 1, "low": 2, "medium": 3, "high": 4, "critical": 5}
CONFIDENCE_ID: Final = {"low": 1, "medium": 2, "high": 3}
log = logging.getLogger("kaspwatch.alerts")


def _ms(ts: str) -> int:
    return int(parse_ts(ts).timestamp() * 1000)


def to_ocsf(alert: Alert) -> dict[str, Any]:
    """The finding's destination is the Kaspersky endpoint (for DNS: the name and the
    answer's address), never the resolver, which goes to ``unmapped.resolver``."""
    d = alert.to_dict()
    resolved = alert.status == "resolved"
    activity_id = 3 if resolved else 1  # 1 Create, 3 Close
    ip, port = kaspersky_endpoint(alert.event)
    dst: dict[str, Any] = {"hostname": d["name"]}
    if ip is not None:
        dst["ip"] = ip
    if port is not None:
        dst["port"] = port
    srv = resolver(alert.event)
    extra: dict[str, Any] = {"resolver": {"ip": srv[0], "port": srv[1]}} if srv else {}
    for key in ("remediation", "sources", "runbook_url", "dashboard_url"):
        if key in d:
            extra[key] = d[key]
    doc = {
        "class_uid": CLASS_UID,
        "class_name": "Detection Finding",
        "category_uid": CATEGORY_UID,
        "category_name": "Findings",
        "activity_id": activity_id,
        "type_uid": CLASS_UID * 100 + activity_id,
        "time": _ms(d["ts"]),
        "severity_id": SEVERITY_ID.get(d["severity"], 0),
        "severity": d["severity"].capitalize(),
        "status_id": 4 if resolved else 1,  # 1 New, 4 Resolved
        "confidence_id": CONFIDENCE_ID.get(d["confidence"], 0),
        "message": d["summary"],
        "metadata": {
            "version": OCSF_VERSION,
            "uid": d["alert_id"],
            "product": {"name": "kaspwatch", "vendor_name": "kaspwatch", "version": __version__},
            "labels": [f"stage:{d['stage']}", f"category:{d['category']}"],
        },
        "finding_info": {
            "uid": d["alert_id"],
            "title": f"Kaspersky {d['category']} traffic ({d['stage'].replace('_', ' ')})",
            "desc": d["summary"],
            "first_seen_time": _ms(d["first_seen"]),
            "last_seen_time": _ms(d["ts"]),
            "types": [d["category"], d["stage"]],
            "analytic": {
                "uid": d["indicator"]["id"],
                "name": d["indicator"]["pattern"],
                "type_id": 1,  # Rule
                "type": "Rule",
            },
            "related_events": [{"uid": d["event_id"], "type": d["kind"]}],
        },
        "device": {
            "ip": d["host"],
            "location": {"desc": f"{d['site']}/{d['zone']}"},
            **({"hostname": d["host_name"]} if d.get("host_name") else {}),
            **({"mac": d["mac"]} if d.get("mac") else {}),
        },
        "dst_endpoint": dst,
        "unmapped": {
            "site": d["site"],
            "zone": d["zone"],
            "owner": d["owner"],
            "criticality": d["criticality"],
            "sensor": d["sensor"],
            "hits": d["hits"],
            **({"query": d["query"]} if "query" in d else {}),
            **extra,
        },
    }
    if "description" in d:
        doc["finding_info"]["desc"] = f"{d['summary']}. {d['description']}"
    return doc


def finding_uid(value: bytes) -> str | None:
    """The alert id of a record on the alerts topic; None for anything else."""
    try:
        uid = json.loads(value)["finding_info"]["uid"]
    except (ValueError, KeyError, TypeError):
        return None
    return uid if isinstance(uid, str) else None


FORMATS: Final[dict[str, Callable[[Alert], dict[str, Any]]]] = {"ocsf": to_ocsf, "ecs": to_ecs}


def record_uid(value: bytes) -> str | None:
    """The alert id of a record on the alerts topic, in either format; None otherwise."""
    return finding_uid(value) or ecs_uid(value)


class KafkaTopicSink:
    """Alerts to the alerts topic as OCSF (default) or ECS JSON, keyed by host; waits for the
    broker's acks. With a ``reader`` of the same bus it can read back what is on the topic
    (records of either format, so switching formats keeps exactly-once)."""

    name = "kafka"

    def __init__(
        self,
        publisher: Publisher,
        topic: str = ALERTS_TOPIC,
        reader: TopicReader | None = None,
        fmt: str = "ocsf",
    ) -> None:
        self.publisher = publisher
        self.topic = topic
        self.reader = reader
        self.render = FORMATS[fmt]
        self.acked: dict[int, int] = {}  # partition -> offset after the last batch's record
        # host -> hits partition, when the state is per partition: each alert goes to the
        # alerts topic partition of its hit's partition (the topics are co-partitioned)
        self.partition_for: Callable[[str], int | None] | None = None

    async def read_back(
        self, since: dict[int, int] | None, partitions: list[int] | None = None
    ) -> tuple[set[str], dict[int, int]]:
        """Alert ids on the topic from ``since`` (partition -> offset; None: none) to its
        end, and the end offsets (``partitions``: of those only); without a reader:
        nothing, and ``since``."""
        found, ends = await self.read_back_by_partition(since, partitions)
        return {u for ids in found.values() for u in ids}, ends

    async def read_back_by_partition(
        self, since: dict[int, int] | None, partitions: list[int] | None = None
    ) -> tuple[dict[int, set[str]], dict[int, int]]:
        """``read_back`` with the alert ids per partition of the topic."""
        if self.reader is None:
            return {}, dict(since or {})
        try:
            records, ends = await self.reader.read(self.topic, since, partitions)
        except BusError as exc:
            raise SinkError(f"kafka sink, reading back topic {self.topic}: {exc}") from exc
        found: dict[int, set[str]] = {}
        strangers = 0
        for r in records:
            uid = record_uid(r.value)
            if uid is None:
                strangers += 1
            else:
                found.setdefault(r.partition, set()).add(uid)
        if strangers:
            log.warning(
                "kafka sink: %d records on topic %s are not kaspwatch findings (ignored)",
                strangers,
                self.topic,
            )
        return found, ends

    async def start(self) -> None:
        return None

    async def send(self, alerts: list[Alert]) -> None:
        route = self.partition_for
        futures = [
            await (
                self.publisher.send(self.topic, self._value(a), a.event.host.encode())
                if route is None
                else self.publisher.send(
                    self.topic, self._value(a), a.event.host.encode(), route(a.event.host)
                )
            )
            for a in alerts
        ]
        try:
            acks = await asyncio.gather(*futures)
        except Exception as exc:
            raise SinkError(f"kafka sink, topic {self.topic}: {exc}") from exc
        self.acked = {}
        for md in acks:
            self.acked[md.partition] = max(self.acked.get(md.partition, 0), md.offset + 1)

    def _value(self, alert: Alert) -> bytes:
        return json.dumps(self.render(alert), separators=(",", ":")).encode()

    async def stop(self) -> None:
        return None
