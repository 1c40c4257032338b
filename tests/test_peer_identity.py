"""Suricata EVE ``dhcp`` records and Zeek ``dhcp.log`` as identity (issue 17): peers'
DHCP observations name the machine in alerts, as the sensor's own DHCP decoder does."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import jsonschema
import pytest

from kaspwatch.identity import Identity
from sensor.peers import open_peer
from sensor.peers.eve import PeerLineError, eve_records
from sensor.pipeline import Sensor
from sensor.rules.indicators import load_pack, shipped_pack_paths
from sensor.rules.match import Matcher
from tests.testenv import KASPWATCH, REPO

PEERS = Path(__file__).parent / "peer-output"
EVE = PEERS / "suricata-8.0.6" / "dhcp-workstation.pcap.eve.json"
ZEEK = PEERS / "zeek"
SCHEMA = json.loads((REPO / "kaspwatch/schema/identity.v1.schema.json").read_text())


def identities(path: Path, fmt: str) -> list[Identity]:
    sensor = Sensor(Matcher([load_pack(p) for p in shipped_pack_paths()]), "t")
    out: list[Identity] = []
    [source] = open_peer(str(path), fmt)
    for rec in source:
        if rec is not None:
            sensor.process_record(rec)
            out += sensor.identity.drain()
    assert source.bad == 0
    for ident in out:
        jsonschema.validate(ident.to_dict(), SCHEMA)
    return out


def test_run_on_suricata_eve_names_the_machine_in_its_alerts() -> None:
    proc = subprocess.run(
        [*KASPWATCH, "run", "--eve", str(EVE), "--format", "ndjson"],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    docs = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    assert len(docs) == 2
    for d in docs:
        assert d["host"] == "10.81.0.75"
        assert (d["host_name"], d["mac"], d["identity_source"]) == (
            "LAB-PC-7", "02:11:22:33:44:07", "dhcp",
        )  # fmt: skip
        assert "10.81.0.75 (LAB-PC-7, 02:11:22:33:44:07)" in d["summary"]


def test_eve_dhcp_ack_binds_the_address_with_the_requests_host_name() -> None:
    [ident] = identities(EVE, "eve")  # one ACK; the DISCOVER/REQUEST name the MAC only
    assert (ident.address, ident.mac, ident.hostname, ident.source, ident.lease_s) == (
        "10.81.0.75", "02:11:22:33:44:07", "LAB-PC-7", "dhcp", 3600,
    )  # fmt: skip
    assert ident.ts == "2026-12-06T17:02:32.428694Z"


def test_zeek_dhcp_log_transactions_with_an_ack_bind() -> None:
    [ack] = identities(ZEEK / "scripts.base.protocols.dhcp.dhcp-ack-msg-types/dhcp.log", "zeek")
    assert (ack.address, ack.mac, ack.hostname, ack.lease_s) == (
        "192.168.0.10", "00:0a:28:00:fa:42", "", 3600,
    )  # fmt: skip
    # DISCOVER..ACK,DECLINE binds; RELEASE and INFORM (no ACK) bind nothing
    [full] = identities(ZEEK / "scripts.base.protocols.dhcp.dhcp-all-msg-types/dhcp.log", "zeek")
    assert (full.address, full.mac, full.hostname, full.lease_s) == (
        "128.2.6.189", "90:b1:1c:99:49:29", "btest.is.cool", 900,
    )  # fmt: skip


def test_every_zeek_dhcp_baseline_reads_without_a_bad_line() -> None:
    logs = sorted(ZEEK.glob("scripts.base.protocols.dhcp.*/dhcp.log"))
    # zeek-cut output (a plain header, no #fields) is bad lines by design (MANIFEST.md)
    logs = [p for p in logs if "#fields" in p.read_text()]
    assert len(logs) >= 6
    found = [i for log in logs for i in identities(log, "zeek")]
    assert found and all(i.mac and i.address for i in found)


def test_zeek_json_dhcp_names_the_machine_from_an_earlier_transaction(tmp_path: Path) -> None:
    log = tmp_path / "dhcp.log"
    log.write_text(
        '{"ts": 1750000000.0, "mac": "02:11:22:33:44:07", "host_name": "LAB-PC-7",'
        ' "msg_types": ["DISCOVER", "OFFER"]}\n'
        '{"ts": 1750000001.5, "mac": "02:11:22:33:44:07", "assigned_addr": "10.81.0.75",'
        ' "lease_time": 1800.0, "client_fqdn": "lab-pc-7.corp.example",'
        ' "msg_types": ["REQUEST", "ACK"]}\n'
    )
    [ident] = identities(log, "zeek")
    assert (ident.address, ident.hostname, ident.fqdn, ident.lease_s) == (
        "10.81.0.75", "", "lab-pc-7.corp.example", 1800,
    )  # fmt: skip
    assert ident.names() == "lab-pc-7"


@pytest.mark.parametrize(
    "dhcp",
    [
        {"type": "reply", "dhcp_type": "ack", "client_mac": "nonsense", "assigned_ip": "10.0.0.1"},
        {"type": "reply", "dhcp_type": "ack", "client_mac": "02:11:22:33:44:07",
         "assigned_ip": "10.0.0.300"},
        {"type": "reply", "dhcp_type": "ack", "client_mac": "02:11:22:33:44:07",
         "assigned_ip": "10.0.0.1", "lease_time": "soon"},
    ],
)  # fmt: skip
def test_bad_eve_dhcp_is_a_bad_line(dhcp: dict[str, object]) -> None:
    doc = {
        "timestamp": "2026-12-06T17:02:32.428694+0000", "event_type": "dhcp", "proto": "UDP",
        "src_ip": "10.0.0.254", "src_port": 67, "dest_ip": "10.0.0.1", "dest_port": 68,
        "dhcp": dhcp,
    }  # fmt: skip
    with pytest.raises(PeerLineError, match="dhcp: "):
        eve_records(doc)


def test_run_on_eve_takes_the_asset_of_the_machine_its_dhcp_names(tmp_path: Path) -> None:
    """Both halves together: the EVE's DHCP names the machine, the asset map lists it by
    MAC, so its alerts carry its site and escalate for its OT zone (the address's own
    network says office)."""
    assets = tmp_path / "assets.csv"
    assets.write_text(
        "cidr,mac,site,zone,owner,criticality\n10.81.0.0/24,,hq,office,it,low\n"
        ",02:11:22:33:44:07,plant-2,OT,ops,critical\n"
    )
    proc = subprocess.run(
        [*KASPWATCH, "run", "--eve", str(EVE), "--assets", str(assets), "--format", "ndjson"],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    docs = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    assert len(docs) == 2
    for d in docs:
        assert (d["site"], d["zone"], d["owner"], d["criticality"]) == (
            "plant-2", "OT", "ops", "critical",
        )  # fmt: skip
        assert d["severity"] == "critical" and d["indicator_severity"] == "high"
