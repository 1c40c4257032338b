"""Throw-away test hosts: two network namespaces joined by a veth pair.

Only these namespaces' own addresses ever receive traffic; no default route is set.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

SERVER_V4, CLIENT_V4 = "10.78.0.1", "10.78.0.2"
SERVER_V6, CLIENT_V6 = "fd78::1", "fd78::2"


def need_tools(*tools: str) -> None:
    import pytest  # here, so bench/ scripts can use namespace_pair without pytest

    from tests import tiers

    tiers.require(tiers.LIVE, f"needs root and {', '.join(tools) or 'namespaces'}")
    if os.geteuid() != 0:
        pytest.fail("namespace tests need root (ip netns); run the suite as root, as CI does")
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing tools {missing}: run bash .ci/system-packages.sh")


def sh(*args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=timeout)


@dataclass
class Pair:
    client: str
    server: str
    client_if: str
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def run(self, ns: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", ns, *args, check=False, timeout=timeout)

    def spawn(self, ns: str, *args: str) -> subprocess.Popen[str]:
        p = subprocess.Popen(
            ["ip", "netns", "exec", ns, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(p)
        return p


@contextmanager
def namespace_pair(tag: str) -> Iterator[Pair]:
    from tests import tiers

    tiers.require(tiers.LIVE, "creates network namespaces")
    suffix = f"{tag}{os.getpid() % 10000}"
    client, server = f"kwc{suffix}", f"kws{suffix}"
    cif, sif = f"kwc{suffix}"[:15], f"kws{suffix}"[:15]
    pair = Pair(client, server, cif)
    try:
        sh("ip", "netns", "add", client)
        sh("ip", "netns", "add", server)
        sh("ip", "link", "add", cif, "netns", client, "type", "veth", "peer", sif, "netns", server)
        for ns, ifname, v4, v6 in (
            (client, cif, CLIENT_V4, CLIENT_V6),
            (server, sif, SERVER_V4, SERVER_V6),
        ):
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "addr", "add", f"{v4}/24", "dev", ifname)
            sh("ip", "-n", ns, "addr", "add", f"{v6}/64", "dev", ifname, "nodad")
            sh("ip", "-n", ns, "link", "set", ifname, "up")
        time.sleep(0.2)
        yield pair
    finally:
        for p in pair.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        sh("ip", "netns", "del", client, check=False)
        sh("ip", "netns", "del", server, check=False)


def wait_for_stderr(proc: subprocess.Popen[str], text: str, timeout: float = 15.0) -> str:
    """Read the process's stderr until ``text`` appears; return what was read."""
    import select

    import pytest

    assert proc.stderr is not None
    seen = ""
    deadline = time.monotonic() + timeout
    while text not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            pytest.fail(f"process never said {text!r}; stderr so far:\n{seen}")
        ready, _, _ = select.select([proc.stderr], [], [], left)
        if ready:  # raw read: a buffered readline could keep a second line out of select's sight
            chunk = os.read(proc.stderr.fileno(), 65536)
            seen += chunk.decode(errors="replace")
    return seen
