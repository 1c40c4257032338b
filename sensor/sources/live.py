"""Live capture: the default kernel filter, ``open_live`` (libpcap's ring, see
``sensor.sources.ring``, or an AF_PACKET socket without libpcap) and several interfaces
read as one stream.

Frames carry the interface's link type: Ethernet (and loopback), 802.11 with radiotap (a
wifi monitor interface) or plain 802.11, raw IP (tun, WireGuard, PPP, sit). An interface
of any other link type is opened with a warning naming it, and its packets are counted
(``stats.skipped``) instead of read.
"""

from __future__ import annotations

import logging
import select
import socket
import struct
import time
from collections.abc import Container, Iterable, Iterator
from typing import Final

from sensor.sources import ring
from sensor.sources.base import LINKTYPE_ETHERNET, CaptureError, Frame, ReadStats
from sensor.sources.prefilter import prefilter_expression

log = logging.getLogger(__name__)

# What the kernel keeps for the live sensor: the file prefilter's expression (see
# sensor/sources/prefilter.py), so a live capture and a scan of the same traffic decode
# the same packets and find the same names. On the benchmark mix 15 % of the packets pass
# (the hand-written filter this replaced kept every TCP segment with payload: 66 %); what
# is dropped is server-to-client bulk data (from a port below 1024, not 53, to an
# ephemeral one), pure ACKs, short-header QUIC and ICMP. Split ClientHellos still pass
# whole: the client-to-server direction is never dropped for its payload. One clause more
# than files: NDP neighbour solicitations and advertisements, which bind IPv6 addresses to
# MACs for the identity watch (the hand-written filter passed them too). It loads a byte
# of the ICMPv6 header, so it comes last (an out-of-range load rejects the packet).
_NDP: Final = "(icmp6 and (ip6[40] = 135 or ip6[40] = 136))"


def default_filter(cidrs: Iterable[str] = ()) -> str:
    """The kernel filter of ``sense --interface`` without ``--bpf``; ``cidrs`` are the
    packs' watched networks (any packet to them passes, as for files)."""
    return f"{prefilter_expression(cidrs)} or {_NDP}"


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
        bpf: str | None = None,
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
        if bpf:
            self._attach(bpf)
        if fanout is not None:
            self._join_fanout(fanout)
        self._grow_buffer()
        self._sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        self._sock.setblocking(False)  # waits are poll()s in __iter__
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
        """Frames as they arrive; ``None`` once the queue is read out, and then each
        ``ring.QUIET_MS`` the wire stays quiet. After ``stop()``, what the kernel already
        holds is read out before the iterator ends. A frame's time is when the kernel
        received it, not when Python got round to it."""
        poller = select.poll()
        poller.register(self._sock, select.POLLIN)
        caught_up = False
        while True:
            try:
                frame = self._recv()
            except BlockingIOError:
                if self._stop:
                    return
                if not caught_up:
                    caught_up = True
                    yield None
                elif not poller.poll(ring.QUIET_MS):
                    yield None
                continue
            caught_up = False
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


Capture = LiveCapture | ring.RingCapture


def open_live(
    interface: str,
    bpf: str | None,
    fanout: int | None,
    readable: Container[int] | None = None,
    snaplen: int = 65535,
) -> Capture:
    """The interface through libpcap's memory-mapped ring, or through an AF_PACKET socket
    (a system call per packet: ~3x the CPU per packet read) when libpcap is missing.
    ``readable``: the link types the decoder reads; the ring counts others, unread."""
    if ring.available():
        return ring.RingCapture(interface, snaplen, bpf, fanout, readable)
    return LiveCapture(interface, snaplen, bpf, fanout)


HANDOFF: Final = 256  # frames a reader thread hands over at once (one queue operation)


class MergedLive:
    """Live interfaces as one stream. One interface is read where the frames are asked
    for (no thread in between); several have a reader thread each, which hands frames
    to one bounded queue in lists of up to ``HANDOFF`` (a queue operation per list, not
    per packet)."""

    def __init__(self, captures: list[Capture], depth: int = 65536) -> None:
        import queue
        import threading

        self.captures = captures
        self._queue: queue.Queue[list[Frame]] = queue.Queue(max(1, depth // HANDOFF))
        threaded = len(captures) > 1
        self._threads = [
            threading.Thread(
                target=self._pump, args=(c,), daemon=True, name=f"capture-{c.interface}"
            )
            for c in (captures if threaded else [])
        ]
        self.dropped = 0
        self.counts = "packets"
        self.live = True
        self.stats = ReadStats()

    def _pump(self, cap: Capture) -> None:
        import queue

        out: list[Frame] = []
        for frame in cap:
            if frame is not None:
                out.append(frame)
                if len(out) < HANDOFF:
                    continue
            if not out:
                continue
            try:
                self._queue.put_nowait(out)
            except queue.Full:
                self.dropped += len(out)
            out = []
        if out:
            self._queue.put(out)

    def stop(self) -> None:
        for c in self.captures:
            c.stop()

    def kernel_drops(self) -> int:
        return sum(c.read_kernel_stats()[1] for c in self.captures) + self.dropped

    def __iter__(self) -> Iterator[Frame | None]:
        """Frames, and ``None`` whenever the reader has caught up with the wire, so the
        sensor's batch goes out at once instead of waiting to fill (at 1,000 packets/s a
        512-frame batch would hold the first packet for half a second)."""
        if not self._threads:
            yield from self.captures[0]
            return
        yield from self._merged()

    def _merged(self) -> Iterator[Frame | None]:
        import queue

        for t in self._threads:
            t.start()
        caught_up = False
        while any(t.is_alive() for t in self._threads) or not self._queue.empty():
            try:
                frames = self._queue.get(block=caught_up, timeout=0.2)
            except queue.Empty:
                caught_up = True
                yield None
                continue
            caught_up = False
            yield from frames
