"""Asset-map entries keyed by a machine (MAC, host name): they follow the machine that
held the address at the hit, and win over the address's network (issue 17)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from consumers.alerts.engine import AlertEngine
from consumers.assets import AssetError, load_assets
from consumers.identity import IdentityBook
from kaspwatch.event import format_ts
from kaspwatch.identity import Identity
from tests.factories import EPOCH, hit
from tests.testenv import KASPWATCH, REPO

YAML = """schema: kaspwatch-assets/1
networks:
  - cidr: 10.81.0.0/24
    site: hq
    zone: office
    criticality: low
  - mac: 02-11-22-33-44-07
    site: plant-2
    zone: OT
    owner: ops
    criticality: critical
  - host_name: hmi-4
    site: plant-3
    zone: scada
    criticality: high
"""


def ts(seconds: float) -> str:
    return format_ts(int((EPOCH + seconds) * 1e9))


def lease(addr: str, at: float, mac: str, name: str = "") -> Identity:
    return Identity(addr, ts(at), "s", "dhcp", mac, name, lease_s=3600)


@pytest.fixture
def assets(tmp_path: Path) -> Path:
    path = tmp_path / "assets.yaml"
    path.write_text(YAML)
    return path


def test_an_alert_takes_the_asset_of_the_machine_by_mac(assets: Path) -> None:
    book = IdentityBook()
    book.add(lease("10.81.0.75", 0, "02:11:22:33:44:07", "LAB-PC-7"))
    engine = AlertEngine(assets=load_assets(assets), identities=book)
    [alert] = engine.feed(hit("10.81.0.75", 10))
    doc = alert.to_dict()
    assert (doc["site"], doc["zone"], doc["owner"], doc["criticality"]) == (
        "plant-2", "OT", "ops", "critical",
    )  # fmt: skip
    assert alert.severity == "critical"  # high + OT: the machine's zone escalates
    # its neighbour on the same DHCP network, not listed by MAC: the network's entry
    book.add(lease("10.81.0.76", 0, "02:11:22:33:44:08", "LAB-PC-8"))
    [other] = engine.feed(hit("10.81.0.76", 10))
    assert (other.asset.site, other.severity) == ("hq", "high")


def test_the_machine_keeps_its_asset_when_dhcp_moves_it(assets: Path) -> None:
    book = IdentityBook()
    book.add(lease("10.99.0.5", 0, "02:11:22:33:44:07"))  # an address in no network listed
    engine = AlertEngine(assets=load_assets(assets), identities=book)
    [alert] = engine.feed(hit("10.99.0.5", 10))
    assert (alert.asset.site, alert.severity) == ("plant-2", "critical")
    # no identity known: the address alone decides (here: nothing listed)
    [bare] = AlertEngine(assets=load_assets(assets)).feed(hit("10.99.0.5", 10))
    assert bare.asset.site == "unknown"


def test_an_alert_takes_the_asset_of_the_machine_by_host_name(assets: Path) -> None:
    book = IdentityBook()
    book.add(lease("10.81.0.20", 0, "02:aa:00:00:00:01", "HMI-4"))  # names match in any case
    engine = AlertEngine(assets=load_assets(assets), identities=book)
    [alert] = engine.feed(hit("10.81.0.20", 10))
    assert (alert.asset.site, alert.asset.zone, alert.asset.criticality) == (
        "plant-3", "scada", "high",
    )  # fmt: skip
    assert alert.severity == "critical"  # OT escalation: scada is an OT zone
    # the lease ran out by the hit: the machine is not known then, the network decides
    [later] = engine.feed(hit("10.81.0.20", 7200))
    assert later.asset.site == "hq"


def test_csv_takes_mac_and_host_name_columns(tmp_path: Path) -> None:
    path = tmp_path / "assets.csv"
    path.write_text(
        "cidr,mac,host_name,site,zone,owner,criticality\n"
        "10.0.0.0/8,,,corp,office,it,low\n"
        ",0211.2233.4407,,plant-2,OT,ops,critical\n"
        ",,lab-pc-9,lab,office,,medium\n"
    )
    amap = load_assets(path)
    assert len(amap) == 3 and amap.sites == {"corp", "plant-2", "lab"}
    assert amap.lookup("10.1.1.1", "02:11:22:33:44:07").site == "plant-2"
    assert amap.lookup("10.1.1.1", "", "LAB-PC-9").site == "lab"
    assert amap.lookup("10.1.1.1", "02:00:00:00:00:01", "other").site == "corp"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("  - mac: 02:11:22:33:44\n    site: x\n", "assets.yaml:3: mac '02:11:22:33:44' is not a MAC"),
        ("  - host_name: 'two words'\n    site: x\n", "assets.yaml:3: host_name 'two words' is not"),
        ("  - mac: 02:11:22:33:44:07\n    cidr: 10.0.0.0/8\n    site: x\n",
         "assets.yaml:3: an entry has exactly one of cidr, mac, host_name (cidr, mac given)"),
        ("  - site: x\n", "assets.yaml:3: an entry has exactly one of cidr, mac, host_name (none"),
        ("  - host_name: a\n    site: x\n  - host_name: A\n    site: y\n",
         "assets.yaml:5: host_name 'a' listed twice (first at "),
    ],
)  # fmt: skip
def test_bad_machine_entries_name_their_line(tmp_path: Path, entry: str, message: str) -> None:
    path = tmp_path / "assets.yaml"
    path.write_text("schema: kaspwatch-assets/1\nnetworks:\n" + entry)
    with pytest.raises(AssetError) as err:
        load_assets(path)
    assert str(err.value).startswith(f"{tmp_path}/{message}")


def test_a_bad_entry_is_exit_2_naming_its_place(tmp_path: Path) -> None:
    path = tmp_path / "assets.csv"
    path.write_text("cidr,mac,site\n,zz:11,x\n")
    proc = subprocess.run(
        [*KASPWATCH, "run", "--pcap", str(REPO / "samples/sample.pcap"), "--assets", str(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert f"{path}:2: mac 'zz:11' is not a MAC" in proc.stderr
    assert "Traceback" not in proc.stderr
