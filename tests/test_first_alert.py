"""The first alert of each kind is visible on the dashboards and to the rules.

``increase()`` cannot see the first value of a series: a counter born at 1 shows no increase
until it moves again, so the first critical OT alert showed as 0 on "Alerts raised". Every
(category, stage, severity) series must exist at 0 before the first alert; proven on a real
Prometheus (Debian ``prometheus``) scraping the alerts consumer's collector.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, start_http_server

from consumers.alerts.collector import DeliveryCollector
from consumers.alerts.delivery import AlertDelivery
from consumers.alerts.engine import STAGES, AlertEngine
from consumers.alerts.state import AlertState
from consumers.assets import load_assets
from kaspwatch.event import CATEGORIES, SEVERITIES, IndicatorRef
from tests.factories import KSN, hit
from tests.prometheus import Prometheus, Target, dashboard_targets, rule_expressions, signals
from tests.testenv import REPO, free_port

RULES = REPO / "deploy" / "prometheus" / "rules" / "kaspwatch.rules.yaml"
CANARY = IndicatorRef(
    "kw-canary-self-test", "canary.kaspwatch.test", "suffix", "canary", "info", "high"
)


def _delivery(tmp_path: Path) -> AlertDelivery:
    assets = tmp_path / "assets.csv"
    assets.write_text("cidr,site,zone,owner,criticality\n10.9.0.0/16,ot-plant-1,OT,ops,critical\n")
    return AlertDelivery(AlertEngine(assets=load_assets(str(assets))), [], AlertState(None))


def test_every_alert_series_exists_at_zero_on_a_fresh_collector(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    registry.register(DeliveryCollector(_delivery(tmp_path)))
    for cat in CATEGORIES:
        for stage in STAGES:
            for sev in SEVERITIES:
                labels = {"category": cat, "stage": stage, "severity": sev}
                assert registry.get_sample_value("kaspwatch_alerts_total", labels) == 0, labels


def _wait(what: str, ok: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        time.sleep(0.2)


def _values(prom: Prometheus, expr: str) -> list[tuple[dict[str, str], float]]:
    doc = prom.query(expr)
    assert doc["status"] == "success", (expr, doc)
    return [(r["metric"], float(r["value"][1])) for r in doc["data"]["result"]]


async def test_first_alert_ever_shows_in_the_panels_and_the_canary_rule(tmp_path: Path) -> None:
    delivery = _delivery(tmp_path)
    registry = CollectorRegistry()
    registry.register(DeliveryCollector(delivery))
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    scrapes = "count_over_time(kaspwatch_alerts_suppressed_total[1h])"
    try:
        target = Target("kaspwatch-alerts", f"127.0.0.1:{port}", {})
        with Prometheus(tmp_path / "prom", [target], [RULES]) as prom:

            def scraped() -> float:
                got = _values(prom, scrapes)
                return got[0][1] if got else 0.0

            _wait("two scrapes before any alert", lambda: scraped() >= 2)
            ot = hit("10.9.1.1", 0, KSN, "dc1.ksn.kaspersky-labs.com")  # critical in OT
            canary = hit("10.1.1.1", 0, CANARY, "1.canary.kaspwatch.test")
            await delivery.handle([ot, canary])
            raised = scraped()
            _wait("two scrapes after the first alerts", lambda: scraped() >= raised + 2)

            queries = [
                (f"{q.dashboard} / {q.panel}", q.expr.replace("$__range", "1h"))
                for path in sorted((REPO / "dashboards").glob("*.json"))
                for q in dashboard_targets(path)
                if "kaspwatch_alerts_total" in q.expr
            ]
            queries = [(n, e.replace("$__rate_interval", "1m")) for n, e in queries]
            queries += [
                (f"rule {name}", part)
                for _, name, expr in rule_expressions(RULES)
                for part in signals(expr)
                if "kaspwatch_alerts_total" in part
            ]
            assert len(queries) >= 4, queries  # 3 panels, the canary rule
            for name, expr in queries:
                got = _values(prom, expr)
                assert got and max(v for _, v in got) > 0, (name, expr, got)
            newest = _values(
                prom,
                'sum by (category, stage, severity) (increase(kaspwatch_alerts_total{category="telemetry"}[1h]))',
            )
            assert {(m["stage"], m["severity"]) for m, v in newest if v > 0} == {
                ("first_contact", "critical")
            }
    finally:
        server.shutdown()
        thread.join(5)
