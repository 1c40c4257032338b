"""Evidence roles: every shipped indicator says what a hit is evidence of, checked against
tools/reference/real-traffic-notes.md; site packs may leave it out; events carry it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kaspwatch.event import EVIDENCE, EventError, event_from_json
from sensor.rules.indicators import PackError, load_pack, shipped_pack_path
from sensor.rules.match import Matcher


def test_every_shipped_indicator_names_its_evidence_role() -> None:
    raw = yaml.safe_load(shipped_pack_path().read_text())
    assert all(item.get("evidence") in EVIDENCE for item in raw["indicators"])


@pytest.mark.parametrize(
    ("name", "role", "severity"),
    [
        # web artefacts: a page's web-AV script tag, fraud prevention, shop images
        ("gc.kis.v2.scr.kaspersky-labs.com", "web", "low"),
        ("ff.kis.v2.scr.kaspersky-labs.com", "web", "low"),
        ("ie.kis.v2.scr.kaspersky-labs.com", "web", "low"),
        ("ru.fp.kaspersky-labs.com", "web", "low"),
        ("w-22900.fp.kaspersky-labs.com", "web", "low"),
        ("content.kaspersky-labs.com", "web", "low"),
        # what an installed product does
        ("dc1-file.ksn.kaspersky-labs.com", "install", "high"),
        ("ds.kaspersky.com", "install", "high"),
        ("s07.upd.kaspersky.com", "install", "high"),
        ("statistic.content.ipm-klca.kaspersky.com", "install", "high"),
    ],
)
def test_roles_follow_the_real_traffic_notes(name: str, role: str, severity: str) -> None:
    ind = Matcher(load_pack()).match_name(name, "tls_sni")
    assert ind is not None and (ind.evidence, ind.severity) == (role, severity), name
    assert ind.ref.evidence == role and ind.sources


def test_fraud_prevention_has_a_source_naming_a_document() -> None:
    ind = Matcher(load_pack()).match_name("ru.fp.kaspersky-labs.com", "dns_query")
    assert ind is not None and ind.id == "kw-web-fraud-prevention"
    assert any(s.startswith("https://") for s in ind.sources)


def _pack(tmp_path: Path, **extra: str) -> Path:
    item = {"id": "site-a", "pattern": "a.example.com", "match": "exact", "category": "oem",
            "severity": "high", "confidence": "high", "sources": ["s"], "description": "d",
            **extra}  # fmt: skip
    path = tmp_path / "site.yaml"
    path.write_text(json.dumps({"schema": "kaspwatch-indicator-pack/1", "indicators": [item]}))
    return path


def test_site_packs_may_leave_it_out_or_name_one_from_the_list(tmp_path: Path) -> None:
    assert load_pack(_pack(tmp_path)).indicators[0].evidence == "oem"  # from the category
    assert load_pack(_pack(tmp_path, evidence="web")).indicators[0].evidence == "web"
    with pytest.raises(PackError, match="evidence 'vibes' is not one of install"):
        load_pack(_pack(tmp_path, evidence="vibes"))


def _event(indicator: dict[str, str]) -> bytes:
    return json.dumps({
        "schema": 1, "event_id": "e" * 32, "ts": "2026-11-27T18:00:00.000000Z", "sensor": "s",
        "kind": "tls_sni", "name": "x.kaspersky.com", "src_ip": "10.0.0.1", "src_port": 1,
        "dst_ip": "10.0.0.2", "dst_port": 443, "transport": "tcp", "indicator": indicator,
    }).encode()  # fmt: skip


def test_events_carry_the_role_and_older_events_get_it_from_the_category() -> None:
    base = {"id": "x", "pattern": "x", "match": "exact", "category": "telemetry",
            "severity": "high", "confidence": "high"}  # fmt: skip
    old = event_from_json(_event(base))
    assert old.indicator is not None and old.indicator.role == "install"
    assert "evidence" not in old.to_dict()["indicator"]
    new = event_from_json(_event({**base, "evidence": "web"}))
    assert new.indicator is not None and new.indicator.role == "web"
    assert new.to_dict()["indicator"]["evidence"] == "web"
    with pytest.raises(EventError, match="unknown indicator evidence"):
        event_from_json(_event({**base, "evidence": "vibes"}))
