"""Alerts as Elastic Common Schema (ECS 8.11) documents, for ``--format ecs`` on stdout and
``--alerts-format ecs`` on the Kafka alerts topic, so Elastic (and any ECS-speaking SIEM)
indexes them as they are.

Only ECS fields: the alert is ``event.kind: alert`` in ``event.category: [network]``; the
machine is ``source`` (and ``host``); the Kaspersky endpoint ``destination`` (for DNS
the name, and the answer's address when there is one: the resolver is ``server``); the
indicator is ``rule`` and ``threat.indicator``; site, zone, owner, criticality, stage and
the remediation are ``labels``. ``tests/ecs/ecs_flat.json`` (Elastic's definitions) checks
every field and its type.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Final

from consumers.alerts.sinks.endpoint import kaspersky_endpoint, resolver
from kaspwatch import __version__

if TYPE_CHECKING:
    from consumers.alerts.engine import Alert

ECS_VERSION: Final = "8.11.0"
SEVERITY: Final = {"info": 21, "low": 21, "medium": 47, "high": 73, "critical": 99}
PROTOCOL: Final = {
    "dns_query": "dns", "dns_answer": "dns", "tls_sni": "tls", "quic_sni": "quic",
    "http_host": "http", "http_connect": "http",
}  # fmt: skip


def _ip_type(address: str) -> str:
    return "ipv6-addr" if ":" in address else "ipv4-addr"


def to_ecs(alert: Alert) -> dict[str, Any]:
    d, ev = alert.to_dict(), alert.event
    ind = d["indicator"]
    ip, port = kaspersky_endpoint(ev)
    destination: dict[str, Any] = {"domain": ev.name} if ev.kind != "ip_flow" else {}
    if ip is not None:
        destination["ip"] = ip
    if port is not None:
        destination["port"] = port
    first_link = next((s for s in d.get("sources", []) if s.startswith("http")), None)
    doc: dict[str, Any] = {
        "@timestamp": d["ts"],
        "ecs": {"version": ECS_VERSION},
        "message": d["summary"],
        "event": {
            "kind": "alert",
            "category": ["network"],
            "type": ["connection" if ev.kind in ("ip_flow", "http_connect") else "protocol"],
            "id": alert.alert_id,
            "action": alert.stage,
            "outcome": "unknown",
            "severity": SEVERITY.get(alert.severity, 47),
            "start": d["first_seen"],
            "dataset": "kaspwatch.alerts",
            "module": "kaspwatch",
            "provider": ev.sensor,
        },
        "source": {"ip": d["host"], "address": d["host"]},
        "host": {"ip": [d["host"]]},
        "destination": destination,
        "network": {"transport": ev.transport},
        "observer": {
            "name": ev.sensor,
            "type": "sensor",
            "vendor": "kaspwatch",
            "product": "kaspwatch",
            "version": __version__,
        },
        "rule": {
            "id": ind["id"],
            "name": f"Kaspersky {ind['category']}: {ind['pattern']}",
            "category": ind["category"],
            "ruleset": "kaspwatch indicator pack",
            "version": __version__,
        },
        "threat": {
            "indicator": {
                "type": _ip_type(ev.dst_ip) if ev.kind == "ip_flow" else "domain-name",
                "name": ind["pattern"],
                "confidence": ind["confidence"].capitalize(),
                "provider": "kaspwatch",
                "first_seen": d["first_seen"],
                "last_seen": d["ts"],
                "sightings": alert.hits,
            }
        },
        "labels": {
            "stage": alert.stage,
            "category": ind["category"],
            "severity": alert.severity,
            "site": d["site"],
            "zone": d["zone"],
            "owner": d["owner"],
            "criticality": d["criticality"],
            "event_id": ev.event_id,
            "status": alert.status,
        },
        "related": {"ip": [d["host"], *([ip] if ip else [])], "hosts": [ev.name]},
    }
    if ev.kind in PROTOCOL:
        doc["network"]["protocol"] = PROTOCOL[ev.kind]
    if ev.kind in ("dns_query", "dns_answer"):
        doc["dns"] = {"question": {"name": d.get("query", ev.name)}}
        if ev.answers:
            doc["dns"]["resolved_ip"] = list(ev.answers)
        srv = resolver(ev)
        if srv is not None:
            doc["server"] = {"ip": srv[0], "port": srv[1]}
            doc["client"] = {"ip": d["host"]}
    elif ev.kind in ("tls_sni", "quic_sni"):
        doc["tls"] = {"client": {"server_name": ev.name}}
    elif ev.kind in ("http_host", "http_connect"):
        doc["url"] = {"domain": ev.name}
    if ev.kind == "ip_flow":
        doc["threat"]["indicator"]["ip"] = ev.dst_ip
    else:
        doc["threat"]["indicator"]["url"] = {"domain": ev.name}
    if "description" in d:
        doc["rule"]["description"] = d["description"]
        doc["threat"]["indicator"]["description"] = d["description"]
    if "remediation" in d:
        doc["labels"]["remediation"] = d["remediation"]
    reference = d.get("runbook_url") or first_link
    if reference:
        doc["rule"]["reference"] = reference
    if first_link:
        doc["threat"]["indicator"]["reference"] = first_link
    if d.get("runbook_url"):
        doc["event"]["reference"] = d["runbook_url"]
    if d.get("dashboard_url"):
        doc["event"]["url"] = d["dashboard_url"]
    if d.get("mac"):  # ECS spells a MAC in upper case with hyphens
        mac = d["mac"].upper().replace(":", "-")
        doc["source"]["mac"] = mac
        doc["host"]["mac"] = [mac]
    if d.get("host_name"):
        doc["host"]["name"] = d["host_name"]
        doc["source"]["domain"] = d["host_name"]
        doc["related"]["hosts"].append(d["host_name"])
    if d.get("identity_source"):
        doc["labels"]["identity_source"] = d["identity_source"]
    if d.get("mac_vendor"):
        doc["labels"]["mac_vendor"] = d["mac_vendor"]
    return doc


def render_ecs(alert: Alert) -> str:
    return json.dumps(to_ecs(alert), separators=(",", ":"))


def ecs_uid(value: bytes) -> str | None:
    """The alert id of an ECS record on the alerts topic; None for anything else."""
    try:
        doc = json.loads(value)
        uid = doc["event"]["id"] if doc["ecs"] else None
    except (ValueError, KeyError, TypeError):
        return None
    return uid if isinstance(uid, str) else None
