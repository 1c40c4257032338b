"""Passive host identity (issue 17, item 1): DHCP and ARP name the machine behind an
address; alerts carry the identity valid when the hit happened.

The capture ``tests/captures/dhcp-workstation.pcap`` is a real exchange (dnsmasq and
isc-dhcp-client in namespaces, host LAB-PC-7, MAC 02:11:22:33:44:07, then Kaspersky
lookups); the live test makes its own with the same tools and ``dig``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from consumers.alerts.engine import AlertEngine
from consumers.identity import IdentityBook, mac_vendor
from kaspwatch.event import format_ts
from kaspwatch.identity import Identity, IdentityError, identity_from_json, normalize_mac
from sensor.decode import DecodeError
from sensor.decode.dhcp import decode_arp, decode_dhcp
from sensor.identity import IdentityWatch
from sensor.pipeline import Sensor
from sensor.rules.indicators import load_pack, shipped_pack_paths
from sensor.rules.match import Matcher
from sensor.sources.pcapfile import CaptureFile
from tests import cliprocs
from tests.alertmanager import am_alerts, running_alertmanager
from tests.cliprocs import cli_env, wait_for
from tests.factories import EPOCH, KSN, UPDATE, hit
from tests.kafkautil import create_topics, read_topic, standard_topics
from tests.netns import SERVER_V4, namespace_pair, need_tools, sh
from tests.testenv import KASPWATCH, REPO

CAPTURE = REPO / "tests" / "captures" / "dhcp-workstation.pcap"
SCHEMA = json.loads((REPO / "kaspwatch" / "schema" / "identity.v1.schema.json").read_text())
MAC = "02:11:22:33:44:07"


def sensor() -> Sensor:
    return Sensor(Matcher([load_pack(p) for p in shipped_pack_paths()]), "edge", strict=True)


def test_real_dhcp_exchange_names_the_machine_and_its_alerts() -> None:
    s = sensor()
    events = [e for frame in CaptureFile(str(CAPTURE)) for e in s.process_frame(*frame)]
    idents = s.identity.drain()
    for ident in idents:
        jsonschema.validate(ident.to_dict(), SCHEMA)
        assert identity_from_json(ident.to_json()) == ident
    dhcp = [i for i in idents if i.source == "dhcp"]
    assert [(i.address, i.mac, i.hostname, i.lease_s) for i in dhcp] == [
        ("10.81.0.75", MAC, "LAB-PC-7", 3600)
    ]
    arp = {i.address: i.mac for i in idents if i.source == "arp"}
    assert arp == {"10.81.0.1": "be:1d:ca:b6:df:53"}  # the server; the client's ARP repeats DHCP
    book, engine = IdentityBook(), AlertEngine()
    engine.identities = book
    for ident in idents:
        book.add(ident)
    alerts = [a for e in events for a in engine.feed(e)]
    assert {a.category for a in alerts} == {"update", "telemetry"}
    for a in alerts:
        d = a.to_dict()
        assert (d["host_name"], d["mac"], d["identity_source"]) == ("LAB-PC-7", MAC, "dhcp")
        assert d["summary"].startswith(f"10.81.0.75 (LAB-PC-7, {MAC}) contacted")


def test_run_on_the_capture_alerts_name_the_machine() -> None:
    proc = subprocess.run(
        [*KASPWATCH, "run", "--pcap", str(CAPTURE), "--format", "ecs"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    docs = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    assert len(docs) == 2
    for d in docs:
        assert d["host"]["name"] == "LAB-PC-7" and d["source"]["mac"] == "02-11-22-33-44-07"


def ts(seconds: float) -> str:
    return format_ts(int((EPOCH + seconds) * 1e9))


def ident(addr: str, at: float, mac: str, name: str = "", lease: int | None = 3600) -> Identity:
    return Identity(addr, ts(at), "s", "dhcp" if name else "arp", mac, name, lease_s=lease)


def test_an_address_that_changes_hands_names_the_holder_at_each_hit() -> None:
    book = IdentityBook()
    book.add(ident("10.1.1.5", 100, "02:00:00:00:00:0a", "WS-A"))
    book.add(ident("10.1.1.5", 200, "02:00:00:00:00:0b", "WS-B"))  # the lease moved
    book.add(ident("10.1.1.5", 150, "02:00:00:00:00:0a", "", None))  # ARP, out of order
    assert book.at("10.1.1.5", ts(50)) is None  # before anyone held it
    a, arp, b = (book.at("10.1.1.5", ts(t)) for t in (120, 160, 250))
    assert a is not None and (a.hostname, a.mac) == ("WS-A", "02:00:00:00:00:0a")
    assert arp is not None and (arp.hostname, arp.source) == ("WS-A", "arp")  # names kept
    assert b is not None and (b.hostname, b.mac) == ("WS-B", "02:00:00:00:00:0b")
    assert book.at("10.1.1.5", ts(200 + 3601)) is None  # B's lease ran out unrenewed
    engine = AlertEngine(identities=book)
    [first] = engine.feed(hit("10.1.1.5", 120, UPDATE))
    [second] = engine.feed(hit("10.1.1.5", 250, KSN, "ksn.kaspersky-labs.com"))
    assert (first.to_dict()["host_name"], second.to_dict()["host_name"]) == ("WS-A", "WS-B")


def test_identity_tables_are_bounded_and_count_evictions() -> None:
    book = IdentityBook(max_addresses=2, per_address=2)
    for i in range(3):
        book.add(ident(f"10.0.0.{i}", i, "02:00:00:00:00:01", "X"))
    for t in (10, 11, 12):
        book.add(ident("10.0.0.2", t, "02:00:00:00:00:01", "X"))
    assert len(book) == 2 and book.evicted == 1 and book.dropped == 2
    watch = IdentityWatch("s", max_clients=1, max_bindings=1)
    s = sensor()
    s.identity = watch
    for frame in CaptureFile(str(CAPTURE)):
        s.process_frame(*frame)
    assert watch.bindings_evicted == 2  # .1 (ARP), .75 (DHCP), .1 again (ARP reply): one kept
    assert s.evictions()["identity_bindings"] == 2


def test_mac_vendor_from_the_ieee_registry() -> None:
    assert mac_vendor("00:1b:21:00:00:01") == "Intel Corporate"
    assert mac_vendor(MAC) == ""  # locally administered: no vendor
    assert normalize_mac("02-11-22-33-44-07") == MAC == normalize_mac(bytes.fromhex("021122334407"))


@pytest.mark.parametrize(
    "doc",
    [
        {"address": "10.0.0.1"},
        {"address": "nope", "ts": ts(0), "sensor": "s", "source": "dhcp"},
        {"address": "10.0.0.1", "ts": ts(0), "sensor": "s", "source": "dhcp", "mac": "x"},
        {"address": "10.0.0.1", "ts": ts(0), "sensor": "s", "source": "smoke-signals"},
    ],
)
def test_bad_identity_records_are_refused(doc: dict[str, Any]) -> None:
    with pytest.raises(IdentityError):
        identity_from_json(json.dumps({"schema": 1, "type": "identity", **doc}).encode())


def test_malformed_dhcp_and_arp_are_decode_errors() -> None:
    good = next(
        bytes(f[2]) for f in CaptureFile(str(CAPTURE)) if len(f[2]) == 342
    )  # the DISCOVER's frame
    payload = good[42:]
    assert decode_dhcp(payload).hostname == b"LAB-PC-7"
    for bad in (payload[:100], payload[:236] + b"xxxx", payload[:240] + b"\x0c\x40LAB"):
        with pytest.raises(DecodeError):
            decode_dhcp(bad)
    with pytest.raises(DecodeError):
        decode_arp(b"\xff" * 12 + b"\x08\x06" + b"\0" * 10)


# ---------------------------------------------------------------- live


def _wait(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.mark.live
@pytest.mark.timeout(90)
def test_live_dhcp_then_kaspersky_lookups_name_the_machine(tmp_path: Path) -> None:
    """dnsmasq leases one address; LAB-PC-7 (its MAC, host name sent by dhclient) takes it
    and looks Kaspersky up with dig, releases it; LAB-PC-8 (another MAC) gets the same
    address and looks up an activation host. The live sensor's alerts name each machine;
    the capture replayed through ``run --format ecs --alertmanager`` too."""
    need_tools("ip", "dnsmasq", "dig", "tcpdump", "dhclient")
    with namespace_pair("id") as net:
        sif, cif = net.server[:15], net.client_if
        sh("ip", "-n", net.client, "-4", "addr", "flush", "dev", cif)
        conf = tmp_path / "dnsmasq.conf"
        conf.write_text(
            f"no-resolv\nno-hosts\nbind-interfaces\ninterface={sif}\nlisten-address={SERVER_V4}\n"
            f"dhcp-range=10.78.0.50,10.78.0.50,255.255.255.0,1h\n"
            f"dhcp-leasefile={tmp_path}/leases\naddress=/kaspersky.com/{SERVER_V4}\n"
            f"address=/kaspersky-labs.com/{SERVER_V4}\n"
        )
        dnsmasq = net.spawn(net.server, "dnsmasq", "-k", f"--conf-file={conf}",
                            f"--pid-file={tmp_path}/dnsmasq.pid")  # fmt: skip
        pcap = tmp_path / "dhcp.pcap"
        out, err = (tmp_path / "run.out").open("w"), (tmp_path / "run.err").open("w")
        tcpdump = net.spawn(net.server, "tcpdump", "-i", sif, "-n", "--immediate-mode", "-U",
                            "-s", "0", "-w", str(pcap))  # fmt: skip
        run = subprocess.Popen(
            ["ip", "netns", "exec", net.server, sys.executable, "-m", "kaspwatch", "run",
             "--interface", sif, "--format", "ndjson", "--sensor", "edge"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=err, text=True, cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        net.procs.append(run)
        _wait(lambda: "capturing on" in (tmp_path / "run.err").read_text(), 20, "the sensor")
        time.sleep(0.5)  # tcpdump's "listening" goes to a pipe: give it its moment
        assert dnsmasq.poll() is None and tcpdump.poll() is None
        script = tmp_path / "dhclient-script"  # sets the address only: no resolv.conf
        script.write_text(
            '#!/bin/sh\ncase "$reason" in BOUND|RENEW|REBIND|REBOOT)\n'
            '  ip -4 addr add "$new_ip_address/24" dev "$interface";;\n'
            'RELEASE|EXPIRE|STOP) ip -4 addr flush dev "$interface";;\nesac\nexit 0\n'
        )
        script.chmod(0o755)
        for host, mac, name in (("LAB-PC-7", MAC, "dnl-09.geo.kaspersky.com"),
                                ("LAB-PC-8", "02:11:22:33:44:08", "activation-v2.kaspersky.com")):  # fmt: skip
            sh("ip", "-n", net.client, "link", "set", cif, "address", mac)
            dconf = tmp_path / f"{host}.conf"
            dconf.write_text(f'send host-name "{host}";\n')
            args = ["-4", "-1", "-sf", str(script), "-cf", str(dconf),
                    "-lf", str(tmp_path / f"{host}.leases"), "-pf", str(tmp_path / f"{host}.pid")]  # fmt: skip
            got = net.run(net.client, "dhclient", *args, cif, timeout=40)
            assert got.returncode == 0, got.stderr
            addrs = net.run(net.client, "ip", "-4", "-o", "addr", "show", "dev", cif).stdout
            assert "10.78.0.50/24" in addrs, addrs
            dig = net.run(net.client, "dig", f"@{SERVER_V4}", "-b", "10.78.0.50", name, "+short")
            assert dig.stdout.strip() == SERVER_V4, dig.stdout + dig.stderr
            net.run(net.client, "dhclient", "-r", *args, cif, timeout=20)
        time.sleep(0.5)
        run.send_signal(signal.SIGTERM)
        tcpdump.send_signal(signal.SIGINT)
        run.wait(20)
        tcpdump.wait(10)
    alerts = [json.loads(x) for x in (tmp_path / "run.out").read_text().splitlines()
              if x.startswith("{")]  # fmt: skip
    by_cat = {a["category"]: a for a in alerts}
    assert set(by_cat) == {"update", "activation"}, (tmp_path / "run.err").read_text()[-2000:]
    assert (by_cat["update"]["host_name"], by_cat["update"]["mac"]) == ("LAB-PC-7", MAC)
    assert (by_cat["activation"]["host_name"], by_cat["activation"]["mac"]) == (
        "LAB-PC-8", "02:11:22:33:44:08",
    )  # fmt: skip
    assert all(a["host"] == "10.78.0.50" and a["remediation"] for a in alerts)

    with running_alertmanager(tmp_path / "am") as am:
        proc = subprocess.run(
            [*KASPWATCH, "run", "--pcap", str(pcap), "--format", "ecs", "--alertmanager", am],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
        ecs = {d["labels"]["category"]: d for d in map(json.loads, lines)}
        assert ecs["update"]["host"]["name"] == "LAB-PC-7"
        assert ecs["update"]["source"]["mac"] == "02-11-22-33-44-07"
        assert ecs["activation"]["host"]["name"] == "LAB-PC-8"
        [am_update] = am_alerts(am, category="update")
        ann = am_update["annotations"]
        assert (ann["host_name"], ann["mac"]) == ("LAB-PC-7", MAC)
        assert "LAB-PC-7" in ann["summary"] and ann["remediation"]


# ---------------------------------------------------------------- the store binds late


def test_store_binds_identities_that_arrive_after_the_hits(tmp_path: Path) -> None:
    """The hits are stored first (the DNS half of the capture), the consumers restart,
    then the DHCP half arrives: ``query host`` by address, host name or MAC names the
    machine for those earlier hits."""
    hits, dhcp = tmp_path / "hits.pcap", tmp_path / "dhcp.pcap"
    subprocess.run(["editcap", "-r", str(CAPTURE), str(hits), "15-18"], check=True)
    subprocess.run(["editcap", "-r", str(CAPTURE), str(dhcp), "1-14"], check=True)
    db = f"sqlite:///{tmp_path}/store.sqlite"
    for pcap in (hits, dhcp):  # two runs: the second is a restart that learns the identity
        subprocess.run([*KASPWATCH, "run", "--pcap", str(pcap), "--db", db, "--no-stdout"],
                       check=True, capture_output=True)  # fmt: skip

    def query(who: str) -> list[dict[str, Any]]:
        proc = subprocess.run([*KASPWATCH, "query", "host", who, "--db", db, "--format", "json"],
                              capture_output=True, text=True, check=False)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        rows: list[dict[str, Any]] = json.loads(proc.stdout)
        return rows

    by_ip = query("10.81.0.75")
    assert len(by_ip) == 4
    assert {(r["host_name"], r["mac"]) for r in by_ip} == {("LAB-PC-7", MAC)}
    assert query("lab-pc-7") == by_ip == query("02-11-22-33-44-07")
    proc = subprocess.run([*KASPWATCH, "query", "host", "NOBODY", "--db", db],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert proc.returncode == 2 and "nor a host name or MAC" in proc.stderr


def test_store_attributes_each_hit_to_the_holder_of_its_time(tmp_path: Path) -> None:
    from consumers.store import open_store
    from consumers.store.queries import host_timeline

    store = open_store(f"sqlite:///{tmp_path}/s.sqlite")
    store.ingest(
        [hit("10.1.1.5", 120, UPDATE), hit("10.1.1.5", 250, KSN, "ksn.kaspersky-labs.com")]
    )
    store.ingest_identities([ident("10.1.1.5", 100, "02:00:00:00:00:0a", "WS-A"),
                             ident("10.1.1.5", 200, "02:00:00:00:00:0b", "WS-B")])  # fmt: skip
    rows = host_timeline(store.backend, "10.1.1.5").rows
    assert [(r["name"], r["host_name"]) for r in rows] == [
        ("s01.upd.kaspersky.com", "WS-A"), ("ksn.kaspersky-labs.com", "WS-B"),
    ]  # fmt: skip
    assert [r["name"] for r in host_timeline(store.backend, "ws-b").rows] == [
        "ksn.kaspersky-labs.com"
    ]
    store.close()


def test_identity_evictions_are_metrics() -> None:
    from prometheus_client import CollectorRegistry

    from consumers.alerts.collector import DeliveryCollector
    from consumers.alerts.delivery import AlertDelivery
    from consumers.alerts.state import AlertState

    delivery = AlertDelivery(AlertEngine(identities=IdentityBook(max_addresses=1)), [],
                             AlertState(None))  # fmt: skip
    delivery.engine.identities.add(ident("10.0.0.1", 1, MAC, "A"))
    delivery.engine.identities.add(ident("10.0.0.2", 2, MAC, "A"))
    reg = CollectorRegistry()
    reg.register(DeliveryCollector(delivery))
    got = reg.get_sample_value("kaspwatch_identity_evictions_total", {"table": "addresses"})
    assert got == 1.0


# ---------------------------------------------------------------- through Kafka

procs = cliprocs.procs  # fixture


@pytest.mark.kafka
@pytest.mark.timeout(120)
async def test_dhcp_seen_by_one_sensor_names_the_hits_of_another_through_kafka(
    kafka_bootstrap: str, procs: cliprocs.Procs, tmp_path: Path
) -> None:
    """A sensor near the DHCP server publishes the identity; the edge sensor, later, the
    Kaspersky lookups; ``kaspwatch alerts`` joins them: ECS on stdout and on the topic."""
    names = await standard_topics(kafka_bootstrap, hits_partitions=2)
    ident_topic = f"identity-{names['group']}"
    await create_topics(kafka_bootstrap, (ident_topic, 1), configs={"cleanup.policy": "compact"})
    hits, dhcp = tmp_path / "hits.pcap", tmp_path / "dhcp.pcap"
    subprocess.run(["editcap", "-r", str(CAPTURE), str(hits), "15-18"], check=True)
    subprocess.run(["editcap", "-r", str(CAPTURE), str(dhcp), "1-14"], check=True)
    bus = ["--bus", f"kafka://{kafka_bootstrap}", "--topic", names["hits"],
           "--identity-topic", ident_topic]  # fmt: skip

    def sense(pcap: Path, sensor: str) -> None:
        proc = subprocess.run([*KASPWATCH, "sense", "--pcap", str(pcap), *bus, "--sensor", sensor],
                              capture_output=True, text=True, timeout=60, env=cli_env(tmp_path))  # fmt: skip
        assert proc.returncode == 0, proc.stderr

    sense(dhcp, "dhcp-relay")
    alerts = procs.start("alerts", [
        *KASPWATCH, "alerts", *bus, "--alerts-topic", names["alerts"], "--alerts-format", "ecs",
        "--dead-letter-topic", names["dlq"], "--group", names["group"],
        "--state", str(tmp_path / "s.sqlite"), "--format", "ecs",
    ])  # fmt: skip
    # every instance reads the whole identity topic outside the group, before joining it
    await wait_for(lambda: f"{ident_topic}: 2 records restored from 1 partitions" in
                   alerts.err.read_text(), 60, "the identity topic restored", alerts)  # fmt: skip
    sense(hits, "edge")

    def lines() -> list[dict[str, Any]]:
        return [json.loads(x) for x in alerts.stdout().splitlines() if x.startswith("{")]

    await wait_for(lambda: len(lines()) >= 2, 60, "two alerts", alerts)
    on_topic = [json.loads(v) for _, v in await read_topic(kafka_bootstrap, names["alerts"], 2)]
    for doc in [*lines(), *on_topic]:
        assert (doc["host"]["name"], doc["source"]["mac"]) == ("LAB-PC-7", "02-11-22-33-44-07")
        assert doc["observer"]["name"] == "edge" and doc["labels"]["identity_source"] == "dhcp"
    assert len(on_topic) == 2


def test_query_hosts_shows_the_machine(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/store.sqlite"
    subprocess.run([*KASPWATCH, "run", "--pcap", str(CAPTURE), "--db", db, "--no-stdout"],
                   check=True, capture_output=True)  # fmt: skip
    proc = subprocess.run([*KASPWATCH, "query", "hosts", "--db", db, "--format", "json"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    [row] = json.loads(proc.stdout)
    assert (row["host"], row["host_name"], row["mac"]) == ("10.81.0.75", "LAB-PC-7", MAC)


def _frame(src: str, sport: int, dns: Any) -> tuple[int, int, bytes]:
    from scapy.all import IP, UDP, Ether, raw

    pkt = Ether(src="02:00:00:00:00:99", dst="01:00:5e:00:00:fb") / IP(src=src, dst="224.0.0.251")
    return 1_800_000_000 * 10**9, 1, raw(pkt / UDP(sport=sport, dport=sport) / dns)


def test_mdns_and_llmnr_responses_name_their_sender() -> None:
    from scapy.all import DNS, DNSQR, DNSRR

    s = sensor()
    for frame in CaptureFile(str(CAPTURE)):  # DHCP named 10.81.0.75 LAB-PC-7 first
        s.process_frame(*frame)
    s.identity.drain()
    same = DNS(
        qr=1, aa=1, qd=None, an=DNSRR(rrname="LAB-PC-7.local.", type="A", rdata="10.81.0.75")
    )
    other = DNS(
        qr=1, aa=1, qd=None, an=DNSRR(rrname="LAB-PC-9.local.", type="A", rdata="10.81.0.9")
    )
    proxy = DNS(
        qr=1, aa=1, qd=None, an=DNSRR(rrname="printer.local.", type="A", rdata="10.81.0.50")
    )
    llmnr = DNS(
        id=7, qr=1, qd=DNSQR(qname="WS-12"), an=DNSRR(rrname="WS-12", type="A", rdata="10.81.0.76")
    )
    s.process_frame(*_frame("10.81.0.75", 5353, same))  # what DHCP said: nothing new
    s.process_frame(*_frame("10.81.0.9", 5353, other))
    s.process_frame(*_frame("10.81.0.9", 5353, proxy))  # about another address: not proof
    s.process_frame(*_frame("10.81.0.76", 5355, llmnr))
    got = [(i.address, i.hostname, i.source, i.mac) for i in s.identity.drain()]
    assert got == [("10.81.0.9", "lab-pc-9", "mdns", ""), ("10.81.0.76", "ws-12", "llmnr", "")]
    book = IdentityBook()
    book.add(Identity("10.81.0.9", ts(0), "s", "mdns", "", "lab-pc-9"))
    book.add(Identity("10.81.0.9", ts(5), "s", "arp", "02:00:00:00:00:09"))  # ARP adds the MAC
    found = book.at("10.81.0.9", ts(10))
    assert found is not None and (found.hostname, found.mac) == ("lab-pc-9", "02:00:00:00:00:09")


def test_times_compare_as_times_not_strings() -> None:
    """A peer sensor may write fewer fraction digits (1 to 6 are valid): as strings
    "…00.5Z" sorts after "…00.500001Z", as times it is before."""
    book = IdentityBook()
    book.add(Identity("10.1.1.7", "2027-01-15T08:00:00.5Z", "s", "dhcp", MAC, "WS-T"))
    found = book.at("10.1.1.7", "2027-01-15T08:00:00.500001Z")
    assert found is not None and found.hostname == "WS-T"
    assert book.at("10.1.1.7", "2027-01-15T08:00:00.499999Z") is None
