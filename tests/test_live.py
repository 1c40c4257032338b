"""Live capture: ``kaspwatch run --interface`` inside a namespace sees real dig and curl traffic."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from tests.netns import SERVER_V4, SERVER_V6, namespace_pair, need_tools


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
            sys.executable,
            "-m",
            "kaspwatch",
            "run",
            "--interface",
            net.client_if,
            "--format",
            "ndjson",
            "--sensor",
            "live-test",
        )
        time.sleep(1.5)  # the capture socket is open well before traffic starts
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
