"""Allowlist, configuration file and hot reload of the rules."""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

import pytest

from consumers.alerts.engine import AlertEngine
from kaspwatch.cli.config import ConfigError, load_config
from sensor.pipeline import Sensor
from sensor.rules.allowlist import load_allowlist
from sensor.rules.indicators import PackError
from sensor.rules.ruleset import Reloader, RuleSource
from tests.factories import ROW, site_pack
from tests.testenv import SAMPLE

ALLOW = """schema: kaspwatch-allowlist/1
entries:
  - id: lab-decom
    hosts: [10.77.0.0/24]
    names: [upd.kaspersky.com]
    expires: {expires}
    reason: KES lab being decommissioned, CHG-1234
"""


def scan_sample(source: RuleSource) -> list[dict[str, object]]:
    from sensor.sources.pcapfile import CaptureFile

    sensor = Sensor(source.load(), "t")
    with CaptureFile(str(SAMPLE)) as cap:
        return [e.to_dict() for e in sensor.process(cap)]


def test_allowlisted_hits_are_marked_counted_and_never_alerted(tmp_path: Path) -> None:
    allow = tmp_path / "allow.yaml"
    allow.write_text(ALLOW.format(expires="2099-01-01"))
    events = scan_sample(RuleSource(allowlist=str(allow)))
    marked = {e["name"] for e in events if e.get("allowlisted") == "lab-decom"}
    # only names under upd.kaspersky.com from 10.77.0.0/24 hosts
    assert marked == {"s07.upd.kaspersky.com", "s01.upd.kaspersky.com"}
    assert all(e["host"] == "10.77.0.2" for e in events if e.get("allowlisted"))
    import json

    from kaspwatch.event import event_from_json

    engine = AlertEngine()
    alerts = [
        engine.feed(event_from_json(json.dumps(e).encode())) for e in events if e.get("allowlisted")
    ]
    # s07 query+answer and s01 SNI (the flows are attributed to dnl-11, under geo)
    assert alerts == [[]] * 3 and engine.allowlisted == 3


def test_expired_entries_stop_applying(tmp_path: Path) -> None:
    allow = tmp_path / "allow.yaml"
    allow.write_text(ALLOW.format(expires="2020-01-01"))
    events = scan_sample(RuleSource(allowlist=str(allow)))
    assert not any(e.get("allowlisted") for e in events)
    entries = load_allowlist(allow)
    assert entries.find("10.77.0.2", "s01.upd.kaspersky.com", today=dt.date(2019, 12, 31))
    assert entries.find("10.77.0.2", "s01.upd.kaspersky.com", today=dt.date(2020, 1, 1)) is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "schema: kaspwatch-allowlist/1\nentries:\n  - id: x\n    reason: r\n",
            ":3: an entry needs hosts, names or both",
        ),
        (
            "schema: kaspwatch-allowlist/1\nentries:\n  - id: x\n    hosts: [10.0.0.300]\n    reason: r\n",
            ":3: host '10.0.0.300'",
        ),
        (
            "schema: kaspwatch-allowlist/1\nentries:\n  - id: x\n    hosts: [10.0.0.1]\n",
            ":3: 'reason' is required",
        ),
        (
            "schema: kaspwatch-allowlist/1\nentries:\n  - id: x\n    names: [a.b]\n    expires: soon\n    reason: r\n",
            "expires must be a date",
        ),
        ("entries: []\n", ":1: an allowlist is a mapping with schema"),
    ],
)
def test_bad_allowlists_name_file_and_line(tmp_path: Path, body: str, message: str) -> None:
    p = tmp_path / "allow.yaml"
    p.write_text(body)
    with pytest.raises(PackError) as err:
        load_allowlist(p)
    assert str(err.value).startswith(str(p)) and message in str(err.value)


def test_config_file_relative_paths_and_errors(tmp_path: Path) -> None:
    (tmp_path / "kaspwatch.yaml").write_text(
        "sensor: edge-1\npacks: [site.yaml]\nallowlist: allow.yaml\nwindow: 60\n"
    )
    cfg = load_config(str(tmp_path / "kaspwatch.yaml"))
    assert cfg.sensor == "edge-1" and cfg.window == 60
    assert cfg.packs == (str(tmp_path / "site.yaml"),) and cfg.allowlist == str(
        tmp_path / "allow.yaml"
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("sensor: edge-1\nwindwo: 60\n")
    with pytest.raises(ConfigError, match=rf"{bad}:2: unknown setting 'windwo'"):
        load_config(str(bad))
    bad.write_text("sensor: edge-1\nwindow: -5\n")
    with pytest.raises(ConfigError, match=rf"{bad}:2: window must be a positive"):
        load_config(str(bad))


def test_reload_on_change_swaps_whole_rules_and_keeps_old_on_error(tmp_path: Path) -> None:
    pack = site_pack(
        tmp_path,
        ROW.format(id="kw-site-a", pattern="a.corp.example", match="exact", category="management"),
    )
    source = RuleSource(site_packs=(str(pack),))
    reloader = Reloader(source, source.load(), interval=0.0)
    assert not reloader.maybe_reload()  # nothing changed
    first = reloader.rules
    assert first.matcher.match_name("a.corp.example") is not None

    pack.write_text(
        pack.read_text()
        + ROW.format(id="kw-site-b", pattern="b.corp.example", match="exact", category="oem")
    )
    os.utime(pack, (time.time() + 5, time.time() + 5))
    assert reloader.maybe_reload()
    assert reloader.rules.matcher.match_name("b.corp.example") is not None
    assert first.matcher.match_name("b.corp.example") is None  # the old set was never mutated

    pack.write_text("schema: kaspwatch-indicator-pack/1\nindicators: [oops\n")
    os.utime(pack, (time.time() + 10, time.time() + 10))
    good = reloader.rules
    assert not reloader.maybe_reload()
    assert reloader.rules is good and reloader.failures == 1
    assert reloader.last_error.startswith(f"{pack}:")

    reloader.request()  # SIGHUP: reload even without a change (still broken: still refused)
    assert not reloader.maybe_reload() and reloader.failures == 2


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("schema: kaspwatch-indicator-pack/1\nindicators: 5\n", "must be a non-empty list"),
        ("", "a pack is a mapping"),
        (b"\xff\xfe\x00garbage", "cannot read"),
        ("a: " + "[" * 5000 + "]" * 5000 + "\n", "YAML syntax"),
        (None, "no such file"),  # deleted
        ("swap:com", "too broad"),
        ("swap:severity", "'severity' is required"),
    ],
)
def test_a_running_sensor_keeps_its_last_good_rules_on_any_bad_reload(
    tmp_path: Path, body: str | bytes | None, message: str
) -> None:
    """Issue 8: a running process keeps its last good configuration on reload."""
    good = ROW.format(id="kw-site-a", pattern="a.corp.example", match="exact", category="oem")
    pack = site_pack(tmp_path, good)
    source = RuleSource(site_packs=(str(pack),))
    reloader = Reloader(source, source.load(), interval=0.0)
    running = reloader.rules
    text = pack.read_text()
    if body is None:
        pack.unlink()
    elif isinstance(body, bytes):
        pack.write_bytes(body)
    elif body == "swap:com":
        pack.write_text(text.replace("a.corp.example", "com").replace("exact", "suffix"))
    elif body == "swap:severity":
        pack.write_text(text.replace("severity: high", "severity: [1]"))
    else:
        pack.write_text(body)
    reloader.request()
    assert not reloader.maybe_reload()
    assert reloader.rules is running and reloader.failures == 1
    assert message in reloader.last_error and str(pack) in reloader.last_error
    assert running.matcher.match_name("a.corp.example") is not None


def test_reload_survives_an_unexpected_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pack = site_pack(
        tmp_path,
        ROW.format(id="kw-site-a", pattern="a.corp.example", match="exact", category="oem"),
    )
    source = RuleSource(site_packs=(str(pack),))
    reloader = Reloader(source, source.load(), interval=0.0)
    running = reloader.rules

    def broken(self: RuleSource) -> None:
        raise RecursionError("a validator bug")

    monkeypatch.setattr(RuleSource, "load", broken)
    reloader.request()
    assert not reloader.maybe_reload()
    assert reloader.rules is running and reloader.failures == 1
    assert reloader.last_error == "RecursionError: a validator bug"
