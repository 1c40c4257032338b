"""PACKET_FANOUT: two sensor processes in one group on a namespace's veth split the flows,
each flow going to exactly one of them, and no alert is raised twice."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from bench.hitload import client_ip, frames, write_pcap
from tests.netns import namespace_pair, need_tools, wait_for_stderr
from tests.testenv import KASPWATCH

pytestmark = pytest.mark.live  # root: network namespaces and live capture

FLOWS = 300


def test_two_fanout_sensors_see_every_flow_exactly_once(tmp_path: Path) -> None:
    need_tools("ip", "tcpreplay")
    pcap = tmp_path / "hits.pcap"
    write_pcap(pcap, frames(FLOWS))
    with namespace_pair("fan") as net:
        sensors = [
            net.spawn(
                net.client,
                *KASPWATCH,
                "run",
                "--interface",
                net.client_if,
                "--fanout",
                "4242",
                "--format",
                "ndjson",
                "--sensor",
                f"fan-{i}",
            )
            for i in range(2)
        ]
        for proc in sensors:
            wait_for_stderr(proc, "fanout group 4242")
        server_if = net.client_if.replace("kwc", "kws", 1)
        replay = net.run(net.server, "tcpreplay", "-q", "--pps", "2000", "-i", server_if, str(pcap))
        assert replay.returncode == 0, replay.stderr
        time.sleep(1.0)
        outputs = []
        for proc in sensors:
            proc.send_signal(signal.SIGTERM)
            stdout, stderr = proc.communicate(timeout=30)
            assert proc.returncode == 0, stderr
            outputs.append(stdout)

    hosts = [
        [json.loads(line)["host"] for line in out.splitlines() if line.startswith("{")]
        for out in outputs
    ]
    for mine in hosts:
        assert mine, "a fanout member got no flows at all"
        assert len(mine) == len(set(mine)), "one process alerted twice for a host"
    assert not set(hosts[0]) & set(hosts[1]), "a flow reached both members of the group"
    assert set(hosts[0]) | set(hosts[1]) == {client_ip(n) for n in range(FLOWS)}


def test_fanout_refuses_a_group_out_of_range() -> None:
    need_tools("ip")
    with namespace_pair("fanbad") as net:
        out = net.run(
            net.client,
            *KASPWATCH,
            "run",
            "--interface",
            net.client_if,
            "--fanout",
            "70000",
        )
    assert out.returncode == 2, out.stderr
    assert f"{net.client_if}: fanout group 70000 is not in 0-65535" in out.stderr
