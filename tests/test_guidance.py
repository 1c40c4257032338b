"""Guidance in every alert (issue 17, item 2): the indicator's description, a remediation
(per category, overridable per indicator), its sources, and runbook / dashboard links,
from the pack through the event to every sink; Alertmanager read back through its API."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from consumers.alerts.engine import AlertEngine
from consumers.alerts.links import LinkError, Links, check_template
from consumers.alerts.sinks.alertmanager import AlertmanagerSink
from kaspwatch.event import CATEGORIES, EventError, event_from_json
from sensor.rules.indicators import Indicator, PackError, load_pack, shipped_pack_paths
from tests.alertmanager import am_alerts, running_alertmanager
from tests.factories import EPOCH, HEAD, ROW, UPDATE, hit
from tests.testenv import KASPWATCH, SAMPLE

pytestmark = pytest.mark.timeout(60)


def shipped() -> dict[str, Indicator]:
    return {i.id: i for p in shipped_pack_paths() for i in load_pack(p).indicators}


def test_every_shipped_indicator_carries_description_remediation_and_sources() -> None:
    inds = shipped()
    by_category: dict[str, set[str]] = {}
    for ind in inds.values():
        assert ind.remediation and ind.description and ind.sources, ind.id
        ref = ind.ref
        assert (ref.description, ref.remediation) == (ind.description, ind.remediation)
        by_category.setdefault(ind.category, set()).add(ind.remediation)
    assert set(by_category) == set(CATEGORIES)
    # the four kinds of action the ban asks for, each where it belongs
    assert any("Removal." in t for t in by_category["update"])
    assert any("Migration." in t for t in by_category["management"])
    assert any("Licence." in t for t in by_category["activation"])
    assert any("engine swap" in t for t in by_category["oem"])
    # a per-indicator override wins over its category's text
    juniper = inds["kw-oem-juniper-kaspersky-av"].remediation
    assert "SRX" in juniper and juniper not in by_category["update"]
    assert "ClamAV" in inds["kw-oem-stormshield-v4-update"].remediation


def test_site_pack_remediation_table_and_override(tmp_path: Path) -> None:
    row = ROW.format(id="site-a", pattern="mirror.example.com", match="exact", category="update")
    row2 = ROW.format(id="site-b", pattern="kcs.example.com", match="exact", category="management")
    own = "    remediation: call the mirror team\n"
    path = tmp_path / "site.yaml"
    path.write_text(HEAD.replace("indicators:\n", "remediation:\n  update: patch it out\n")
                    + "indicators:\n" + row + own + row2)  # fmt: skip
    a, b = load_pack(path).indicators
    assert (a.remediation, a.ref.remediation) == ("call the mirror team", "call the mirror team")
    assert b.remediation == ""  # no table entry for management: nothing invented


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("remediation:\n  updates: x\n", ":2: remediation for 'updates': not a category"),
        ("remediation:\n  update: ''\n", ":2: remediation for 'update' must be non-empty text"),
        ("remediation: [a]\n", ":1: remediation must be a mapping of category to text"),
    ],
)
def test_bad_remediation_table_names_file_and_line(
    tmp_path: Path, table: str, message: str
) -> None:
    path = tmp_path / "site.yaml"
    row = ROW.format(id="site-a", pattern="mirror.example.com", match="exact", category="update")
    head = HEAD.replace("indicators:\n", "")
    path.write_text(head + table + "indicators:\n" + row)
    with pytest.raises(PackError) as err:
        load_pack(path)
    assert str(err.value).startswith(f"{path}:") and message.split(":", 2)[-1] in str(err.value)


def test_event_carries_guidance_and_old_events_still_parse() -> None:
    ind = shipped()["kw-update-snn"]
    ev = hit("10.1.1.1", 0, ind.ref)
    doc = json.loads(ev.to_json())
    assert doc["indicator"]["remediation"].startswith("Removal.")
    back = event_from_json(ev.to_json())
    assert back.indicator == ind.ref
    old = hit("10.1.1.1", 0, UPDATE)
    assert "remediation" not in json.loads(old.to_json())["indicator"]
    assert event_from_json(old.to_json()).indicator == UPDATE
    doc["indicator"]["sources"] = "not a list"
    with pytest.raises(EventError, match="sources"):
        event_from_json(json.dumps(doc).encode())


def test_links_are_percent_encoded_and_templates_checked() -> None:
    links = Links(
        check_template("https://wiki.example/kw/{category}#{indicator}", "--runbook-url"),
        check_template("https://graf.example/d/kw?var-host={host}&from={ts_ms}", "--dashboard-url"),
    )
    [a] = AlertEngine(links=links).feed(hit("fd00::1", 0))
    assert a.runbook_url == "https://wiki.example/kw/update#kw-update-x"
    assert a.dashboard_url == f"https://graf.example/d/kw?var-host=fd00%3A%3A1&from={EPOCH * 1000}"
    assert a.to_dict()["runbook_url"] == a.runbook_url
    for bad in ("https://x/{nope}", "ftp://x/{host}", "https://x/{host", "/relative/{host}"):
        with pytest.raises(LinkError, match="--runbook-url"):
            check_template(bad, "--runbook-url")


def test_bad_link_template_is_one_line_exit_2() -> None:
    proc = subprocess.run(
        [*KASPWATCH, "run", "--pcap", str(SAMPLE), "--runbook-url", "https://w/{hostname}"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("kaspwatch: error: --runbook-url 'https://w/{hostname}': ")
    assert len(proc.stderr.splitlines()) == 1


def test_run_ndjson_alerts_carry_guidance_and_links() -> None:
    proc = subprocess.run(
        [*KASPWATCH, "run", "--pcap", str(SAMPLE), "--format", "ndjson",
         "--runbook-url", "https://wiki.example/kaspersky/{category}",
         "--dashboard-url", "https://grafana.example/d/kw?var-host={host}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    docs = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    assert docs
    for d in docs:
        assert d["description"] and d["sources"], d
        assert d["remediation"].split(".")[0] in {"Removal", "Contain, then remove", "Licence"}
        assert d["runbook_url"] == f"https://wiki.example/kaspersky/{d['category']}"
        assert d["dashboard_url"].endswith("var-host=" + d["host"].replace(":", "%3A"))


@pytest.fixture(scope="module")
def am(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_alertmanager(tmp_path_factory.mktemp("alertmanager")) as base:
        yield base


async def test_alertmanager_gets_guidance_annotations_and_generator_url(am: str) -> None:
    ind = shipped()["kw-oem-juniper-kaspersky-av"]
    links = Links("https://wiki.example/kw/{indicator}", "https://graf.example/d/kw?h={host}")
    recent = time.time() - EPOCH - 60
    [a] = AlertEngine(links=links).feed(hit("10.4.4.4", recent, ind.ref, "update.juniper-updates.net"))  # fmt: skip
    await AlertmanagerSink([am]).send([a])
    deadline = time.monotonic() + 5
    while not (got := am_alerts(am, host="10.4.4.4")) and time.monotonic() < deadline:
        time.sleep(0.05)
    [alert] = got
    ann = alert["annotations"]
    assert ann["summary"].startswith("10.4.4.4 contacted Kaspersky oem endpoint")
    assert ind.description in ann["description"]
    assert "What to do: " + ind.remediation in ann["description"]
    assert ann["remediation"] == ind.remediation
    assert ann["sources"].splitlines() == list(ind.sources)
    assert ann["runbook_url"] == "https://wiki.example/kw/kw-oem-juniper-kaspersky-av"
    assert alert["generatorURL"] == "https://graf.example/d/kw?h=10.4.4.4"
