"""Live capture: AF_PACKET sockets on one or more interfaces, an in-kernel BPF filter.

Frames carry the interface's link type, from its hardware type: Ethernet (and loopback),
802.11 with radiotap (a wifi monitor interface) or plain 802.11, and raw IP (tun,
WireGuard, PPP, sit). An interface of any other hardware type is opened with a warning
naming it, and its packets are counted (``stats.skipped``) instead of read.
"""

from __future__ import annotations

import logging
import socket
import struct
import time
from collections.abc import Iterator
from typing import Final

from sensor.sources.base import LINKTYPE_ETHERNET, CaptureError, Frame, ReadStats

log = logging.getLogger(__name__)

# What the kernel keeps for the live sensor. Everything that can carry a name or start a
# flow, and nothing else: DNS on its ports over UDP and TCP, QUIC long-header packets
# (Initials), TCP SYN/FIN/RST (flow starts and ends), and TCP segments that carry payload
# (a ClientHello or a request head can start on any port and continue in the next
# segment, so continuation segments must pass too). Pure ACKs, short-header QUIC and other
# UDP are dropped in the kernel. libpcap's tcp[]/udp[] offsets are IPv4-only, so IPv6 has
# its own clauses (fixed offsets: IPv6 extension headers defeat them and fall through).
_VLAN: Final = "(vlan and (udp or tcp))"
BPF_FILTER: Final = " or ".join(
    (
        "udp port 53 or udp port 5353 or udp port 5355 or tcp port 53",
        "udp port 67 or udp port 68 or arp",  # identity: DHCP and ARP name the machines
        "udp dst port 88",  # identity: a Kerberos AS-REQ names a machine account
        "udp port 546 or udp port 547",  # identity: DHCPv6 names the machines
        "(icmp6 and (ip6[40] = 135 or ip6[40] = 136))",  # identity: NDP binds IPv6 to MAC
        "udp src port 137",  # identity: NetBIOS registrations and answers name their sender
        "(ip and udp and udp[8] & 0x80 = 0x80)",
        "(ip6 and ip6[6] = 17 and ip6[48] & 0x80 = 0x80)",
        "(ip and tcp[tcpflags] & (tcp-syn|tcp-fin|tcp-rst) != 0)",
        "(ip6 and ip6[6] = 6 and ip6[53] & 0x07 != 0)",
        "(ip and tcp and (ip[2:2] - ((ip[0] & 0xf) << 2) - ((tcp[12] & 0xf0) >> 2)) != 0)",
        "(ip6 and ip6[6] = 6 and (ip6[4:2] - ((ip6[52] & 0xf0) >> 2)) != 0)",
        _VLAN,
    )
)
# sockaddr_ll.sll_hatype (ARPHRD_*) -> the pcap link type of what the socket hands over
LINKTYPE_OF_HATYPE: Final = {
    1: LINKTYPE_ETHERNET,  # ARPHRD_ETHER
    772: LINKTYPE_ETHERNET,  # ARPHRD_LOOPBACK: Linux gives loopback an Ethernet header
    801: 105,  # ARPHRD_IEEE80211: plain 802.11
    803: 127,  # ARPHRD_IEEE80211_RADIOTAP: a monitor-mode wifi interface
    512: 101,  # ARPHRD_PPP: the IP packet, no header
    519: 101,  # ARPHRD_RAWIP
    776: 101,  # ARPHRD_SIT
    65534: 101,  # ARPHRD_NONE: tun, WireGuard
}


def bpf_filter(linktype: int) -> str:
    """``BPF_FILTER`` as libpcap compiles it for ``linktype``: its ``vlan`` primitive
    exists for Ethernet and 802.11 only."""
    if linktype in (LINKTYPE_ETHERNET, 105, 127):
        return BPF_FILTER
    return BPF_FILTER.replace(f" or {_VLAN}", "")


RCVBUF_BYTES: Final = 32 * 1024 * 1024
_SO_RCVBUFFORCE: Final = 33
_SO_TIMESTAMPNS: Final = 35  # the kernel's receive time rides along with each packet
_TIMESPEC: Final = struct.Struct("qq")
_TIMESPEC_SPACE: Final = socket.CMSG_SPACE(_TIMESPEC.size)
_SOL_PACKET: Final = 263
_PACKET_STATISTICS: Final = 6
_PACKET_FANOUT: Final = 18
_PACKET_FANOUT_HASH: Final = 0  # by flow: the kernel's symmetric 5-tuple hash
_PACKET_FANOUT_FLAG_DEFRAG: Final = 0x8000  # reassemble IP fragments first, so they hash alike
_PACKET_OUTGOING: Final = 4  # sockaddr_ll.sll_pkttype of a packet this host sent
_ARPHRD_LOOPBACK: Final = 772  # sockaddr_ll.sll_hatype of the loopback device


class LiveCapture:
    """Frames from one interface through an AF_PACKET socket (needs CAP_NET_RAW).

    ``bpf`` is compiled by libpcap (through scapy) and attached in the kernel, so
    uninteresting packets never reach Python. ``drops`` reads the kernel's counters.

    ``fanout`` joins the socket to a PACKET_FANOUT group (id 0-65535) in flow-hash mode:
    several sensor processes on one interface with the same group each get a share of
    the flows, and both directions of a flow go to the same process (the hash is
    symmetric), so each owns its flows' whole state (TCP stream heads, QUIC Initials).
    DNS attribution is per process: a flow to an address whose DNS answer another member
    saw is not attributed. The group exists while a member lives.
    """

    def __init__(
        self,
        interface: str,
        snaplen: int = 65535,
        bpf: str | None = BPF_FILTER,
        fanout: int | None = None,
    ) -> None:
        self.interface = interface
        self.snaplen = snaplen
        self.kernel_packets = 0
        self.kernel_drops = 0
        eth_p_all = 0x0003
        try:
            self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(eth_p_all))
            self._sock.bind((interface, 0))
        except PermissionError:
            raise CaptureError(
                f"{interface}: permission denied opening a capture socket "
                "(needs root or CAP_NET_RAW)"
            ) from None
        except OSError as exc:
            raise CaptureError(f"{interface}: cannot capture: {exc.strerror}") from None
        self.hatype = int(self._sock.getsockname()[3])
        self.linktype = LINKTYPE_OF_HATYPE.get(self.hatype)
        if self.linktype is None:
            log.warning(
                "%s: hardware type %d is not one kaspwatch decodes: its packets are counted, "
                "not read", interface, self.hatype,
            )  # fmt: skip
        elif bpf == BPF_FILTER:
            bpf = bpf_filter(self.linktype)
        if bpf:
            self._attach(bpf)
        if fanout is not None:
            self._join_fanout(fanout)
        self._grow_buffer()
        self._sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        self._sock.settimeout(0.2)
        self.stats = ReadStats()
        self._stop = False

    def _attach(self, bpf: str) -> None:
        from scapy.arch.linux import attach_filter
        from scapy.error import Scapy_Exception

        try:
            attach_filter(self._sock, bpf, self.interface)
        except (Scapy_Exception, OSError) as exc:
            self._sock.close()
            raise CaptureError(
                f"{self.interface}: cannot attach capture filter {bpf!r}: {exc}"
            ) from None

    def _grow_buffer(self) -> None:
        """A 32 MiB receive queue rides out a busy machine's scheduling stalls (the default
        208 KiB holds ~100 ms at 2k packets/s). Beyond net.core.rmem_max only with
        CAP_NET_ADMIN; otherwise the kernel caps it, which is fine."""
        size = RCVBUF_BYTES
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, size)
        except OSError:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)

    def _join_fanout(self, group: int) -> None:
        if not 0 <= group <= 0xFFFF:
            self._sock.close()
            raise CaptureError(f"{self.interface}: fanout group {group} is not in 0-65535")
        mode = _PACKET_FANOUT_HASH | _PACKET_FANOUT_FLAG_DEFRAG
        try:
            arg = struct.pack("I", group | mode << 16)  # the flag sets bit 31: not a C int
            self._sock.setsockopt(_SOL_PACKET, _PACKET_FANOUT, arg)
        except OSError as exc:  # EINVAL: the group exists with another mode or interface
            self._sock.close()
            raise CaptureError(
                f"{self.interface}: cannot join fanout group {group}: {exc.strerror}"
            ) from None

    def read_kernel_stats(self) -> tuple[int, int]:
        """(packets, drops) since the last call, added to the running totals."""
        try:
            raw = self._sock.getsockopt(_SOL_PACKET, _PACKET_STATISTICS, 8)
        except OSError:
            return self.kernel_packets, self.kernel_drops
        packets, drops = struct.unpack("II", raw)
        self.kernel_packets += packets
        self.kernel_drops += drops
        return self.kernel_packets, self.kernel_drops

    def stop(self) -> None:
        self._stop = True

    def close(self) -> None:
        self._sock.close()

    def __iter__(self) -> Iterator[Frame | None]:
        """Frames as they arrive; ``None`` when the wire is quiet for a moment. After
        ``stop()``, what the kernel already holds is read out before the iterator ends.
        A frame's time is when the kernel received it, not when Python got round to it."""
        while not self._stop:
            try:
                frame = self._recv()
            except TimeoutError:
                yield None
                continue
            if self.linktype is None:
                self._skip()
                continue
            self.stats.packets += 1
            yield frame
        self._sock.setblocking(False)
        while True:
            try:
                frame = self._recv()
            except (BlockingIOError, OSError):
                return
            if self.linktype is None:
                self._skip()
                continue
            self.stats.packets += 1
            yield frame

    def _skip(self) -> None:
        """A packet of a hardware type not decoded, counted under that type."""
        self.stats.skipped[self.hatype] = self.stats.skipped.get(self.hatype, 0) + 1

    def _recv(self) -> Frame:
        """The next packet. On loopback the kernel hands a packet socket each packet twice,
        as sent (PACKET_OUTGOING) and as received: the sent copy is skipped, so one
        datagram is one packet. Elsewhere sent packets are this host's own traffic: kept."""
        while True:
            data, ancillary, _flags, addr = self._sock.recvmsg(self.snaplen, _TIMESPEC_SPACE)
            if addr[2] != _PACKET_OUTGOING or addr[3] != _ARPHRD_LOOPBACK:
                break
        linktype = self.linktype or 0
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS:
                sec, nsec = _TIMESPEC.unpack_from(value)
                return (sec * 1_000_000_000 + nsec, linktype, data)
        return (time.time_ns(), linktype, data)


class MergedLive:
    """Several live interfaces as one stream: a reader thread each, one bounded queue."""

    def __init__(self, captures: list[LiveCapture], depth: int = 65536) -> None:
        import queue
        import threading

        self.captures = captures
        self._queue: queue.Queue[Frame] = queue.Queue(depth)
        self._threads = [
            threading.Thread(
                target=self._pump, args=(c,), daemon=True, name=f"capture-{c.interface}"
            )
            for c in captures
        ]
        self.dropped = 0
        self.counts = "packets"
        self.live = True
        self.stats = ReadStats()

    def _pump(self, cap: LiveCapture) -> None:
        import queue

        for frame in cap:
            if frame is None:
                continue
            try:
                self._queue.put_nowait(frame)
            except queue.Full:
                self.dropped += 1

    def stop(self) -> None:
        for c in self.captures:
            c.stop()

    def kernel_drops(self) -> int:
        return sum(c.read_kernel_stats()[1] for c in self.captures) + self.dropped

    def __iter__(self) -> Iterator[Frame | None]:
        """Frames, and ``None`` whenever the reader has caught up with the wire, so the
        sensor's batch goes out at once instead of waiting to fill (at 1,000 packets/s a
        512-frame batch would hold the first packet for half a second)."""
        import queue

        for t in self._threads:
            t.start()
        caught_up = False
        while any(t.is_alive() for t in self._threads) or not self._queue.empty():
            try:
                frame = self._queue.get(block=caught_up, timeout=0.2)
            except queue.Empty:
                caught_up = True
                yield None
                continue
            caught_up = False
            yield frame
