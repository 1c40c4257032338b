"""Flow sharding for ``kaspwatch scan --workers N``: worker ``k`` of ``N`` reads every file
and keeps the packets of its share of the flows, so each flow's state (TCP reassembly,
QUIC, HTTP answers, fragments) lives in one worker and the union of the workers' events
is one worker's events.

**Where the hash is taken: the outer IP address pair, always.** Not the 5-tuple: IP
fragments after the first carry no ports, and a tunnel's outer ports need not be the same
both ways (a VXLAN endpoint picks its source port from the inner flow), while the address
pair of the packet on the wire is the same in both directions for every packet of every
flow it carries. The price: one busy host pair is one worker's.

The hash is ``((sum of the pair's 32-bit words) * 0x9E3779B1 mod 2**32) >> 16``, then
``mod N``: symmetric (a sum), mixed (a Fibonacci multiply), and written both in Python
(``owns``) and as a BPF expression (``bpf``) over the same bytes, so libpcap drops the
other workers' packets in C (``sensor.sources.prefilter``) and Python keeps the rest.

What every worker gets (``bpf``'s broadcast clauses) and ``owns`` then decides on:

* frames that are not plain IPv4/IPv6 on the link (VLAN, MPLS, ARP...): decided on the
  decoded packet's address pair, or by worker 0 when nothing decodes;
* IP fragments: every worker reassembles, the outer pair decides;
* DNS answers (UDP from 53, 5353, 5355; TCP from 53): a worker that does not own one still
  reads it quietly (``Sensor.process_frame``), because an answer naming a Kaspersky address
  attributes later flows to that address from any host (``sensor.flows``). Answers on
  other ports, or inside a tunnel, attribute only within their own worker: the one place
  N workers can differ from one (an address resolved through such an answer and then
  used by a host in another worker's share).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from sensor.decode.packet import Segment

GOLDEN: Final = 0x9E3779B1
MASK: Final = 0xFFFFFFFF
ETHERNET: Final = 1
RAW: Final = frozenset({12, 14, 101})  # LINKTYPE_RAW and the platform DLTs libpcap maps it to
IPV4_ONLY: Final = 228
IPV6_ONLY: Final = 229
# DLTs whose ``ip``/``ip6`` in libpcap mean what ``outer_pair`` reads: the BPF clause is
# added for these only (for any other the workers decide in Python alone)
BPF_DLTS: Final = frozenset({ETHERNET, *RAW, IPV4_ONLY, IPV6_ONLY})
DNS_ANSWERS: Final = "udp src port 53 or udp src port 5353 or udp src port 5355 or tcp src port 53"
FRAGMENTS: Final = "(ip and ip[6:2] & 0x3fff != 0) or (ip6 and ip6[6] = 44)"


def pair_hash(src: bytes, dst: bytes) -> int:
    """The symmetric hash of an address pair (4 or 16 bytes each), as the BPF computes it."""
    total = 0
    for addr in (src, dst):
        for i in range(0, len(addr), 4):
            total += int.from_bytes(addr[i : i + 4], "big")
    return ((total & MASK) * GOLDEN & MASK) >> 16


def outer_pair(linktype: int, data: bytes) -> tuple[bytes, bytes] | None:
    """The addresses of a frame that is plain IPv4/IPv6 on the link, read where libpcap's
    ``ip[...]``/``ip6[...]`` read them; None for anything else (or too short)."""
    if linktype == ETHERNET:
        kind, off = data[12:14], 14
        version = 4 if kind == b"\x08\x00" else 6 if kind == b"\x86\xdd" else 0
    elif linktype in RAW:
        off = 0
        version = data[0] >> 4 if data else 0
    elif linktype == IPV4_ONLY:
        off, version = 0, 4
    elif linktype == IPV6_ONLY:
        off, version = 0, 6
    else:
        return None
    if version == 4 and len(data) >= off + 20:
        return data[off + 12 : off + 16], data[off + 16 : off + 20]
    if version == 6 and len(data) >= off + 40:
        return data[off + 8 : off + 24], data[off + 24 : off + 40]
    return None


@dataclass(frozen=True, slots=True)
class Shard:
    """Worker ``index`` of ``count``."""

    index: int
    count: int

    def owns(self, linktype: int, data: bytes, seg: Segment | None) -> bool:
        """Whether this worker reports on the frame (the same answer in every worker)."""
        pair = outer_pair(linktype, data)
        if pair is None and seg is not None:
            pair = (seg.src, seg.dst)
        if pair is None:
            return self.index == 0
        return pair_hash(*pair) % self.count == self.index

    def bpf(self, dlt: int) -> str | None:
        """The clause libpcap adds to the prefilter for a file of link type ``dlt``: this
        worker's plain IP packets, and everything every worker gets (see above)."""
        if dlt not in BPF_DLTS or self.count == 1:
            return None
        v4 = "ip[12:4] + ip[16:4]"
        v6 = " + ".join(f"ip6[{o}:4]" for o in range(8, 40, 4))
        n, k = self.count, self.index
        mine = (
            f"(ip and ((((({v4}) * {GOLDEN}) >> 16) % {n}) = {k}))"
            f" or (ip6 and ((((({v6}) * {GOLDEN}) >> 16) % {n}) = {k}))"
        )
        return f"not (ip or ip6) or {FRAGMENTS} or {DNS_ANSWERS} or {mine}"
