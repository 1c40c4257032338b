"""Host verdicts in the alerts consumer: installs are told from look-alikes, weak verdicts
alert at most low and say why, and later evidence raises them once (``confirmed``)."""

from __future__ import annotations

from typing import Any

from consumers.alerts.engine import AlertEngine
from consumers.alerts.state import AlertState
from consumers.alerts.verdict import Verdicts, classify
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
