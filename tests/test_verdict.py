"""Host verdicts in the alerts consumer: installs are told from look-alikes, weak verdicts
alert at most low and say why, and later evidence raises them once (``confirmed``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from consumers.alerts.engine import AlertEngine
from consumers.alerts.state import AlertState
from consumers.store import queries
from consumers.store.backends import open_backend
from consumers.store.store import open_store
from consumers.verdict import Verdicts, classify
from kaspwatch.cli import main
from kaspwatch.event import Event, IndicatorRef, format_ts, make_event_id

KSN = IndicatorRef(
    "kw-telemetry-dc1-file-ksn", "dc1-file.ksn.kaspersky-labs.com", "exact", "telemetry",
    "high", "medium", "install",
)  # fmt: skip
UPD = IndicatorRef("kw-update-snn", "s{00..19}.upd.kaspersky.com", "range", "update", "high",
                   "high", "install")  # fmt: skip
WEBAV = IndicatorRef("kw-telemetry-kis-scr-gc", "gc.kis.v2.scr.kaspersky-labs.com", "exact",
                     "portal", "low", "medium", "web")  # fmt: skip
PATH = IndicatorRef("kw-content-update-updaters", "/updaters/", "path", "update", "high",
                    "high", "install")  # fmt: skip
HOST = "10.5.0.9"


def hit(seconds: float, kind: str, name: str, ind: IndicatorRef, **extra: Any) -> Event:
    ts_ns = int((1_800_000_000 + seconds) * 1e9)
    dns_answer = kind == "dns_answer"
    src, dst = ("10.5.0.53", HOST) if dns_answer else (HOST, "203.0.113.4")
    return Event(
        event_id=make_event_id("s", ts_ns, src, 1, dst, 443, "tcp", kind, name),
        ts=format_ts(ts_ns), sensor="s", kind=kind, name=name, src_ip=src, src_port=1,
        dst_ip=dst, dst_port=443, transport="tcp", indicator=ind, extra=dict(extra),
    )  # fmt: skip


DECOY = hit(0, "tls_sni", "dc1-file.ksn.kaspersky-labs.com", KSN, backed_by="none")
UPDATE_DNS = hit(60, "dns_answer", "s07.upd.kaspersky.com", UPD, backed_by="dns")


def test_decoy_sni_then_dns_backed_update_traffic_is_raised_once() -> None:
    engine = AlertEngine()
    (low,) = engine.feed(DECOY)
    doc = low.to_dict()
    assert (doc["stage"], doc["severity"], doc["verdict"]) == (
        "first_contact",
        "low",
        "unverified-name",
    )
    assert "decoy SNI" in doc["verdict_reason"] and "held at low" in doc["summary"]
    raised = engine.feed(UPDATE_DNS)
    assert [(a.stage, a.severity, a.category) for a in raised] == [
        ("first_contact", "high", "update"),
        ("confirmed", "high", "update"),
    ]
    confirmed = raised[1].to_dict()
    assert confirmed["verdict"] == "installed" and confirmed["confirms"] == ["telemetry"]
    # once: more of the same raises nothing new; alert ids keep (host, category, stage)
    assert engine.feed(hit(90, "dns_answer", "s08.upd.kaspersky.com", UPD, backed_by="dns")) == []
    assert len({a.alert_id for a in [low, *raised]}) == 3


def test_web_artefact_alerts_at_most_low_and_says_why() -> None:
    engine = AlertEngine()
    (alert,) = engine.feed(hit(0, "http_host", "gc.kis.v2.scr.kaspersky-labs.com", WEBAV,
                               backed_by="dns"))  # fmt: skip
    doc = alert.to_dict()
    assert (doc["severity"], doc["verdict"]) == ("low", "web-artefact")
    assert "script tag" in doc["verdict_reason"]


def test_updater_path_to_a_bare_address_is_an_install_at_full_severity() -> None:
    engine = AlertEngine()
    req = hit(0, "http_request", "198.51.100.7", PATH, backed_by="none", path="/updaters/u.klz")
    (alert,) = engine.feed(req)
    assert (alert.severity, alert.to_dict()["verdict"]) == ("high", "installed")


def test_events_from_older_sensors_keep_their_severity() -> None:
    """No backed_by and no evidence role: trusted as before (role from the category)."""
    old = IndicatorRef("kw-x", "ds.kaspersky.com", "exact", "update", "high", "high")
    (alert,) = AlertEngine().feed(hit(0, "tls_sni", "ds.kaspersky.com", old))
    assert (alert.severity, alert.to_dict()["verdict"]) == ("high", "installed")


def test_confirmation_survives_a_restart_with_the_windows() -> None:
    state = AlertState(None)
    engine = AlertEngine()
    engine.feed(DECOY)
    state.save_windows(engine.windows, list(engine.windows))
    restarted = AlertEngine()
    restarted.windows = state.load_windows()
    raised = restarted.feed(UPDATE_DNS)
    assert [a.stage for a in raised] == ["first_contact", "confirmed"]
    assert restarted.feed(hit(61, "dns_answer", "s07.upd.kaspersky.com", UPD)) == []


def test_verdict_keeps_the_strongest_and_its_evidence() -> None:
    v = Verdicts()
    v.feed(hit(0, "http_host", "gc.kis.v2.scr.kaspersky-labs.com", WEBAV, backed_by="dns"))
    assert v.get(HOST) is not None and v.get(HOST).verdict == "web-artefact"  # type: ignore[union-attr]
    v.feed(DECOY)
    assert v.get(HOST).verdict == "unverified-name"  # type: ignore[union-attr]
    v.feed(UPDATE_DNS)
    got = v.get(HOST)
    assert got is not None and (got.verdict, got.confidence) == ("installed", "high")
    assert got.evidence == ("dns_answer s07.upd.kaspersky.com [kw-update-snn] backed_by dns",)
    assert classify(hit(0, "dns_query", "canary.kaspwatch.invalid", IndicatorRef(
        "c", "c", "exact", "canary", "info", "high"))) is None  # fmt: skip


# --- the store and its queries ----------------------------------------------------------


def _on(host: str, ev: Event) -> Event:
    from dataclasses import replace

    if ev.kind == "dns_answer":
        return replace(ev, dst_ip=host, event_id=ev.event_id + host)
    return replace(ev, src_ip=host, event_id=ev.event_id + host)


def test_store_keeps_verdicts_and_after_ban_lists_installs_by_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/store.sqlite"
    web = hit(0, "http_host", "gc.kis.v2.scr.kaspersky-labs.com", WEBAV, backed_by="dns")
    req = hit(5, "http_request", "198.51.100.7", PATH, backed_by="none", path="/updaters/u.klz")
    store = open_store(url)
    try:
        store.ingest([_on("10.9.0.1", web), _on("10.9.0.2", DECOY), _on("10.9.0.3", req)])
        # a later batch raises the decoy host: DNS-backed update traffic
        store.ingest([_on("10.9.0.2", UPDATE_DNS)])
    finally:
        store.close()
    b = open_backend(url, readonly=True)
    try:
        every = {r["host"]: r["verdict"] for r in queries.hosts(b).rows}
        assert every == {"10.9.0.1": "web-artefact", "10.9.0.2": "installed",
                         "10.9.0.3": "installed"}  # fmt: skip
        default = queries.after_ban(b)
        assert [r["host"] for r in default.rows] == ["10.9.0.2", "10.9.0.3"]
        assert "1 more host" in default.note and "--all-verdicts" in default.note
        assert len(queries.after_ban(b, every_verdict=True).rows) == 3
        timeline = queries.host_timeline(b, "10.9.0.3")
        assert timeline.to_json()["verdict"]["verdict"] == "installed"
    finally:
        b.close()
    assert main(["query", "after-ban", "--db", url, "--format", "csv"]) == 0
    out, err = capsys.readouterr()
    assert "10.9.0.1" not in out and "--all-verdicts" in err
    assert main(["query", "after-ban", "--all-verdicts", "--db", url, "--format", "csv"]) == 0
    assert "10.9.0.1" in capsys.readouterr().out
