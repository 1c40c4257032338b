"""Alerts as OCSF Detection Finding (class_uid 2004, OCSF 1.x) for the Kafka alerts topic,
so a SIEM that speaks OCSF (Security Lake, Splunk, Sentinel...) takes them as they are."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any, Final

from consumers.sinks import SinkError
from kaspwatch import __version__
from kaspwatch.bus import Publisher
from kaspwatch.event import ALERTS_TOPIC, parse_ts

if TYPE_CHECKING:
    from consumers.alerts import Alert

OCSF_VERSION: Final = "1.3.0"
CLASS_UID: Final = 2004  # Detection Finding
CATEGORY_UID: Final = 2  # Findings
SEVERITY_ID: Final = {"info": 1, "low": 2, "medium": 3, "high": 4, "critical": 5}
CONFIDENCE_ID: Final = {"low": 1, "medium": 2, "high": 3}


def _ms(ts: str) -> int:
    return int(parse_ts(ts).timestamp() * 1000)


def to_ocsf(alert: Alert) -> dict[str, Any]:
    d = alert.to_dict()
    resolved = alert.status == "resolved"
    activity_id = 3 if resolved else 1  # 1 Create, 3 Close
    return {
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
        "device": {"ip": d["host"], "location": {"desc": f"{d['site']}/{d['zone']}"}},
        "dst_endpoint": {"ip": d["dst_ip"], "port": d["dst_port"], "hostname": d["name"]},
        "unmapped": {
            "site": d["site"],
            "zone": d["zone"],
            "owner": d["owner"],
            "criticality": d["criticality"],
            "sensor": d["sensor"],
            "hits": d["hits"],
            **({"query": d["query"]} if "query" in d else {}),
        },
    }


class KafkaTopicSink:
    """Alerts to the alerts topic as OCSF JSON, keyed by host; waits for the broker's acks."""

    name = "kafka"

    def __init__(self, publisher: Publisher, topic: str = ALERTS_TOPIC) -> None:
        self.publisher = publisher
        self.topic = topic

    async def start(self) -> None:
        return None

    async def send(self, alerts: list[Alert]) -> None:
        futures = [
            await self.publisher.send(
                self.topic,
                json.dumps(to_ocsf(a), separators=(",", ":")).encode(),
                a.event.host.encode(),
            )
            for a in alerts
        ]
        try:
            await asyncio.gather(*futures)
        except Exception as exc:
            raise SinkError(f"kafka sink, topic {self.topic}: {exc}") from exc

    async def stop(self) -> None:
        return None
