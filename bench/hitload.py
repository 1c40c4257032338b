"""Known-answer load for live tests and benches: one Kaspersky DNS query per client host.

Every frame comes from its own client address (10.100.0.0/16 and up), so each is its own
flow for PACKET_FANOUT and its own (host, category, stage) for the alerts consumer: N
frames make exactly N hits and N first-contact alerts. Frames are built by hand (a few
µs each) and written as a classic pcap for tcpreplay. Importable without pytest.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

QUERY_NAME = "kw{n}.upd.kaspersky.com"  # zone upd.kaspersky.com: category "update"
RESOLVER = bytes((10, 78, 0, 1))  # the namespace pair's server address (tests/netns.py)


def client_ip(n: int, base: int = 100) -> str:
    """The n-th client address: 10.<base + n // 65536>.<n // 256 % 256>.<n % 256>."""
    return f"10.{base + n // 65536}.{n // 256 % 256}.{n % 256}"


def _checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def dns_query_frame(n: int, base: int = 100, client: int | None = None) -> bytes:
    """Ethernet/IPv4/UDP DNS A query for ``kw<n>.upd.kaspersky.com`` from client ``client``
    (default: ``n``)."""
    name = QUERY_NAME.format(n=n)
    qname = b"".join(bytes((len(label),)) + label.encode() for label in name.split(".")) + b"\0"
    dns = struct.pack("!HHHHHH", n & 0xFFFF, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)
    udp = struct.pack("!HHHH", 1024 + n % 60000, 53, 8 + len(dns), 0) + dns
    src = bytes(int(x) for x in client_ip(n if client is None else client, base).split("."))
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), n & 0xFFFF, 0, 64, 17, 0, src, RESOLVER
    )
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    eth = b"\x02\x00\x00\x00\x00\x01" + b"\x02\x00\x00\x00\x00\x02" + b"\x08\x00"
    return eth + ip + udp


def frames(count: int, base: int = 100, hosts: int | None = None) -> Iterator[bytes]:
    """``count`` queries; from ``count`` distinct clients, or round-robin over ``hosts``."""
    for n in range(count):
        yield dns_query_frame(n, base, None if hosts is None else n % hosts)


def write_pcap(path: Path, packets: Iterator[bytes], interval_us: int = 100) -> int:
    """A classic little-endian µs pcap (Ethernet); tcpreplay --pps/--topspeed ignores the
    recorded times anyway. Returns the number of packets written."""
    count = 0
    with path.open("wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for count, data in enumerate(packets, 1):
            t = count * interval_us
            out.write(struct.pack("<IIII", t // 1_000_000, t % 1_000_000, len(data), len(data)))
            out.write(data)
    return count
