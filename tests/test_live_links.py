"""Live capture on interfaces that are not Ethernet: frames carry the interface's own link
type (a tun device hands over bare IP packets), and the capture filter compiles for it."""

from __future__ import annotations

import signal
import sys

import pytest

from tests.netns import namespace_pair, need_tools, wait_for_stderr
from tests.testenv import KASPWATCH

pytestmark = pytest.mark.live  # root: network namespaces and live capture

# holds a tun device open (without a reader attached the kernel sends nothing to it) and
# throws away what the kernel routes into it
TUN_HOLDER = """
import fcntl, os, struct, sys
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", sys.argv[1].encode(), 0x0001 | 0x1000))
print("ready", flush=True)
while True:
    os.read(fd, 65536)
"""


def test_live_capture_on_a_tun_device_reads_raw_ip() -> None:
    need_tools("ip", "dig")
    with namespace_pair("tun") as net:
        tun = "kwtun0"
        holder = net.spawn(net.client, sys.executable, "-c", TUN_HOLDER, tun)
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        assert net.run(net.client, "ip", "addr", "add", "10.79.0.1/24", "dev", tun).returncode == 0
        assert net.run(net.client, "ip", "link", "set", tun, "up").returncode == 0
        run = net.spawn(net.client, *KASPWATCH, "run", "--interface", tun, "--format", "ndjson")
        wait_for_stderr(run, "capturing on")
        # routed into the tun device; nothing answers
        net.run(net.client, "dig", "+tries=1", "+time=1", "@10.79.0.2", "ds.kaspersky.com", "A")
        run.send_signal(signal.SIGTERM)
        _stdout, stderr = run.communicate(timeout=30)
    assert run.returncode == 0, stderr
    assert "1 packets, 1 hits," in stderr, stderr
