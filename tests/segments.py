"""Re-cut real captured TCP payloads into other segmentations (tiny MSS, out of order,
retransmitted), with scapy. The bytes of the payload stay exactly what the tool sent."""

from __future__ import annotations

from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Padding, Raw

from sensor.sources.pcapfile import CaptureFile


def first_frame(path: str, predicate: object) -> bytes:
    with CaptureFile(path) as cap:
        for _ts, _lt, data in cap:
            if predicate(data):  # type: ignore[operator]
                return data
    raise AssertionError(f"no matching frame in {path}")


def resegment(frame: bytes, payload: bytes, size: int) -> list[tuple[int, bytes]]:
    """Frames carrying ``payload`` in ``size``-byte segments: (offset, frame) pairs."""
    pkt = Ether(frame)
    base = pkt[TCP].seq
    out = []
    for off in range(0, len(payload), size):
        p = pkt.copy()
        p[TCP].remove_payload()
        p[TCP].seq = (base + off) % (1 << 32)
        del p[TCP].chksum
        if IP in p:
            del p[IP].len
            del p[IP].chksum
        if IPv6 in p:
            del p[IPv6].plen
        out.append((off, bytes(p / Raw(payload[off : off + size]))))
    return out


def tcp_payload(frame: bytes) -> bytes:
    """The TCP payload as the IP length bounds it (scapy would count Ethernet padding)."""
    pkt = Ether(frame)
    if TCP not in pkt:
        return b""
    if Padding in pkt:
        pkt[Padding].underlayer.remove_payload()
    return bytes(pkt[TCP].payload)
