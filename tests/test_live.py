"""Live capture: ``kaspwatch run --interface`` inside a namespace sees real dig and curl traffic."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

from tests.netns import SERVER_V4, SERVER_V6, namespace_pair, need_tools, wait_for_stderr
from tests.testenv import KASPWATCH

pytestmark = pytest.mark.live  # root: network namespaces and live capture


def test_live_interface_run_alerts_on_real_traffic(tmp_path: Path) -> None:
    need_tools("ip", "dig", "dnsmasq", "curl")
    conf = tmp_path / "dnsmasq.conf"
    conf.write_text(
        "no-resolv\nno-hosts\nbind-interfaces\n"
        f"listen-address={SERVER_V4}\nlisten-address={SERVER_V6}\n"
        f"address=/kaspersky.com/{SERVER_V4}\naddress=/example.org/{SERVER_V4}\n"
        "cname=cdn-updates.example.net,dnl-07.geo.kaspersky.com\n"
    )
    with namespace_pair("live") as net:
        net.spawn(
            net.server, "dnsmasq", "-k", f"--conf-file={conf}", f"--pid-file={tmp_path}/d.pid"
        )
        net.spawn(
            net.server,
            sys.executable,
            "-m",
            "http.server",
            "80",
            "--bind",
            SERVER_V4,
            "--directory",
            str(tmp_path),
        )
        run = net.spawn(
            net.client,
            *KASPWATCH,
            "run",
            "--interface",
            net.client_if,
            "--format",
            "ndjson",
            "--sensor",
            "live-test",
        )
        wait_for_stderr(run, "capturing on")  # socket bound, kernel filter attached
        assert run.poll() is None, run.communicate()[1]
        for name in ("ds.kaspersky.com", "www.example.org", "cdn-updates.example.net"):
            out = net.run(net.client, "dig", "+tries=1", "+time=2", f"@{SERVER_V4}", name, "A")
            assert out.returncode == 0, out.stderr
        out = net.run(
            net.client,
            "dig",
            "+tries=1",
            "+time=2",
            f"@{SERVER_V6}",
            "activation-v2.kaspersky.com",
            "AAAA",
        )
        assert out.returncode == 0, out.stderr
        curl = net.run(
            net.client,
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "--max-time",
            "5",
            "--resolve",
            f"downloads.kaspersky-labs.com:80:{SERVER_V4}",
            "http://downloads.kaspersky-labs.com/",
        )
        assert curl.returncode == 0, curl.stderr
        time.sleep(0.5)
        run.send_signal(signal.SIGTERM)
        stdout, stderr = run.communicate(timeout=30)
    assert run.returncode == 0, stderr
    import json

    alerts = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert {(a["host"], a["category"]) for a in alerts} == {
        ("10.78.0.2", "update"),
        ("fd78::2", "activation"),
    }
    assert "Summary: hosts talking to Kaspersky" in stdout
    summary = stdout.split("Summary:", 1)[1]
    for name in ("ds.kaspersky.com", "dnl-07.geo.kaspersky.com", "downloads.kaspersky-labs.com"):
        assert name in summary
    assert "example.org" not in summary


def test_sighup_reloads_site_pack_live_and_keeps_old_rules_on_a_bad_file(tmp_path: Path) -> None:
    import json
    import os

    from tests.factories import HEAD, ROW

    need_tools("ip", "dig", "dnsmasq", "curl")
    conf = tmp_path / "dnsmasq.conf"
    conf.write_text(
        f"no-resolv\nno-hosts\nbind-interfaces\nlisten-address={SERVER_V4}\naddress=/example/{SERVER_V4}\n"
        f"address=/test/{SERVER_V4}\n"
    )
    pack = tmp_path / "site.yaml"
    ksc = ROW.format(
        id="kw-site-ksc", pattern="ksc.corp.example", match="exact", category="management"
    )
    oem = ROW.format(id="kw-site-oem", pattern="av.oem.example", match="exact", category="oem")
    pack.write_text(HEAD + ksc)

    def dig(net, name: str) -> None:  # type: ignore[no-untyped-def]
        out = net.run(net.client, "dig", "+tries=1", "+time=2", f"@{SERVER_V4}", name, "A")
        assert out.returncode == 0, out.stderr

    with namespace_pair("hup") as net:
        net.spawn(
            net.server, "dnsmasq", "-k", f"--conf-file={conf}", f"--pid-file={tmp_path}/d.pid"
        )
        run = net.spawn(
            net.client,
            *KASPWATCH,
            "run",
            "--interface",
            net.client_if,
            "--pack",
            str(pack),
            "--format",
            "ndjson",
            "--metrics-addr",
            "127.0.0.1:9309",
        )
        wait_for_stderr(run, "capturing on")
        dig(net, "ksc.corp.example")
        dig(net, "av.oem.example")  # not an indicator yet
        dig(net, "1234.canary.kaspwatch.test")  # the documented self-test
        time.sleep(0.5)
        pack.write_text(HEAD + ksc + oem)
        run.send_signal(signal.SIGHUP)
        time.sleep(1.0)  # reload happens between batches; the capture is quiet meanwhile
        dig(net, "av.oem.example")
        pack.write_text(HEAD + "  - id: [broken\n")
        os.utime(pack)
        run.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        metrics = net.run(net.client, "curl", "-s", "http://127.0.0.1:9309/metrics").stdout
        dig(net, "av.oem.example")  # old rules still in force: still a hit
        time.sleep(0.5)
        run.send_signal(signal.SIGTERM)
        stdout, stderr = run.communicate(timeout=30)
    assert run.returncode == 0, stderr
    alerts = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert {a["category"] for a in alerts} == {"management", "oem", "canary"}
    oem_alert = next(a for a in alerts if a["category"] == "oem")
    assert oem_alert["indicator"]["id"] == "kw-site-oem"
    assert "kaspwatch_indicator_pack_reload_failures_total 1.0" in metrics
    assert 'kaspwatch_indicator_pack_info{name="site",version="7"} 1.0' in metrics
    assert f"{pack}:" in stderr and "keeping the running rules" in stderr
    # av.oem.example: one hit after the reload and one after the refused reload
    assert "av.oem.example" in stdout.split("Summary:", 1)[1]


def test_sensor_drops_root_after_opening_its_socket(tmp_path: Path) -> None:
    import json

    need_tools("ip", "dig", "dnsmasq")
    conf = tmp_path / "dnsmasq.conf"
    conf.write_text(
        f"no-resolv\nno-hosts\nbind-interfaces\nlisten-address={SERVER_V4}\naddress=/com/{SERVER_V4}\n"
    )
    with namespace_pair("usr") as net:
        net.spawn(
            net.server, "dnsmasq", "-k", f"--conf-file={conf}", f"--pid-file={tmp_path}/d.pid"
        )
        run = net.spawn(
            net.client,
            *KASPWATCH,
            "run",
            "--interface",
            net.client_if,
            "--user",
            "nobody",
            "--format",
            "ndjson",
        )
        wait_for_stderr(run, "capturing on")
        status = Path(f"/proc/{run.pid}/status").read_text()
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        caps = next(line for line in status.splitlines() if line.startswith("CapEff:")).split()[1]
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        out = net.run(net.client, "dig", "+tries=1", "+time=2", f"@{SERVER_V4}", "ds.kaspersky.com")
        assert out.returncode == 0, out.stderr
        time.sleep(0.5)
        run.send_signal(signal.SIGTERM)
        stdout, stderr = run.communicate(timeout=30)
    assert set(uids) == {"65534"}, status  # real, effective, saved, fs: all nobody
    assert int(caps, 16) == 0  # no capability left
    assert int(fields["CapBnd"].strip(), 16) == 0  # and none can come back (setuid binaries)
    assert fields["NoNewPrivs"].strip() == "1"
    alerts = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert [(a["host"], a["name"]) for a in alerts] == [("10.78.0.2", "ds.kaspersky.com")], stderr


def test_one_datagram_on_loopback_is_one_packet_and_one_hit(tmp_path: Path) -> None:
    """On ``lo`` a packet socket gets each packet twice (sent and received): one DNS query
    must count as one packet and one hit, not two."""
    need_tools("ip", "dig")
    with namespace_pair("lo") as net:
        run = net.spawn(net.client, *KASPWATCH, "run", "--interface", "lo", "--format", "ndjson")
        wait_for_stderr(run, "capturing on")
        # nothing listens: the one query goes unanswered (the port-unreachable ICMP is
        # not in the capture filter)
        net.run(net.client, "dig", "+tries=1", "+time=1", "@127.0.0.1", "ds.kaspersky.com", "A")
        run.send_signal(signal.SIGTERM)  # reads out what the kernel holds, then ends
        _stdout, stderr = run.communicate(timeout=30)
    assert run.returncode == 0, stderr
    assert "1 packets, 1 hits," in stderr, stderr
