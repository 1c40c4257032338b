"""Streams of hits for tests that need many.

``sample_hits`` (a fixture: import it with ``sample_hits = hitstream.sample_hits``) is what
``kaspwatch scan`` finds in the sample capture; ``synthetic_hits`` replays it from many
clients as event documents, for producing straight to a topic.

``HitStream`` is a steady stream for fault tests: a pcap stream of DNS queries for Kaspersky update
names from many client hosts (so the hits spread over every partition of a topic keyed by
host), written at a set rate into a sensor's stdin (``kaspwatch sense --pcap -``) and, byte
for byte, into a file: ``kaspwatch scan`` of that file afterwards is the ground truth of which
event ids the sensor must have published.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, Any

import pytest

from tests.cliprocs import cli_env
from tests.testenv import KASPWATCH, SAMPLE

PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)  # µs, Ethernet
_SPORT = slice(34, 36)  # UDP source port in an Ethernet + IPv4 (20 bytes) frame


def _templates(hosts: int) -> list[bytes]:
    """One DNS query frame per client host (UDP checksum 0: 'none', valid on IPv4)."""
    from scapy.layers.dns import DNS, DNSQR
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    return [
        bytes(
            Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:35")
            / IP(src=f"10.60.{h // 250}.{h % 250 + 1}", dst="10.60.255.53")
            / UDP(sport=1024, dport=53, chksum=0)
            / DNS(id=h, rd=1, qd=DNSQR(qname=f"dnl-{h % 20:02d}.geo.kaspersky.com", qtype="A"))
        )
        for h in range(hosts)
    ]


class HitStream(threading.Thread):
    """Writes ``rate`` hit frames per second (in bursts every ``tick`` s) to ``out`` and to
    ``copy`` until ``finish()``; then closes ``out`` (the sensor sees the end of its input).
    Every frame has its own time and source port, hence its own event id."""

    def __init__(
        self, out: IO[bytes], copy: Path, rate: int, hosts: int = 64, tick: float = 0.05
    ) -> None:
        super().__init__(daemon=True)
        self.out = out
        self.copy = copy
        self.rate = rate
        self.tick = tick
        self.frames = _templates(hosts)
        self.written = 0  # frames written so far
        self.error: BaseException | None = None
        self._done = threading.Event()

    def finish(self, timeout: float = 30) -> int:
        self._done.set()
        self.join(timeout)
        if self.error is not None:
            raise AssertionError(f"hit stream failed after {self.written} frames: {self.error}")
        return self.written

    def run(self) -> None:
        base_us = int(time.time()) * 1_000_000
        started = time.monotonic()
        try:
            with self.copy.open("wb") as copy:
                copy.write(PCAP_HEADER)
                self.out.write(PCAP_HEADER)
                while not self._done.is_set():
                    due = int((time.monotonic() - started) * self.rate) - self.written
                    chunk = bytearray()
                    for i in range(self.written, self.written + max(due, 0)):
                        frame = bytearray(self.frames[i % len(self.frames)])
                        frame[_SPORT] = struct.pack(">H", 1024 + i % 60000)
                        ts = base_us + i  # 1 µs apart: unique, increasing
                        n = len(frame)
                        chunk += struct.pack("<IIII", ts // 1_000_000, ts % 1_000_000, n, n)
                        chunk += frame
                    if chunk:
                        self.out.write(chunk)  # blocks while the sensor is behind
                        self.out.flush()
                        copy.write(chunk)
                        self.written += due
                    self._done.wait(self.tick)
        except (BrokenPipeError, OSError, ValueError) as exc:
            self.error = exc
        finally:
            with contextlib.suppress(OSError, ValueError):
                self.out.close()


def scan_ids(pcap: Path, sensor: str, env: dict[str, str]) -> list[str]:
    """The event ids ``kaspwatch scan`` finds in ``pcap`` for this sensor name."""
    out = subprocess.run(
        [*KASPWATCH, "scan", "--sensor", sensor, str(pcap)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=True,
    ).stdout
    return [json.loads(line)["event_id"] for line in out.splitlines()]


@pytest.fixture(scope="module")
def sample_hits(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """What ``kaspwatch scan`` finds in the sample capture: the ground truth."""
    out = subprocess.run(
        [*KASPWATCH, "scan", "--sensor", "e2e", str(SAMPLE)],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(tmp_path_factory.mktemp("scan")),
        check=True,
    ).stdout
    hits = [json.loads(line) for line in out.splitlines()]
    assert hits and all(h["indicator"] for h in hits)
    return hits


def first_contacts(hits: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The hit that opens each (host, category) window: one first_contact alert each."""
    first: dict[tuple[str, str], dict[str, Any]] = {}
    for h in hits:
        first.setdefault((h["host"], h["indicator"]["category"]), h)
    return first


def synthetic_hits(sample: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """The sample's hits replayed by ``count`` pairs of clients: each IPv4 client of the
    sample becomes 10.50.x.y, each IPv6 one fd50::x; event ids and packet ids stay unique."""
    clients = {h["host"] for h in sample}
    out = []
    for i in range(count):
        v4, v6 = f"10.50.{i // 250}.{i % 250 + 1}", f"fd50::{i + 1:x}"
        mapping = {c: (v6 if ":" in c else v4) for c in clients}
        for h in sample:
            doc = json.loads(json.dumps(h))
            for f in ("src_ip", "dst_ip", "host"):
                doc[f] = mapping.get(doc[f], doc[f])
            doc["event_id"] = hashlib.blake2b(
                f"{h['event_id']}|{i}".encode(), digest_size=16
            ).hexdigest()
            if "packet_id" in doc:  # another client's packet: another packet identity
                doc["packet_id"] = hashlib.blake2b(
                    f"{h['packet_id']}|{i}".encode(), digest_size=16
                ).hexdigest()
            out.append(doc)
    return out
