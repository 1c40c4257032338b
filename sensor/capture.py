"""Capture sources: pcap / pcapng files (plain or gzip) and live AF_PACKET sockets.

Every source yields ``Frame`` tuples ``(ts_ns, linktype, data)``. File readers are
hand-written (no per-packet objects) and say which file and byte offset is bad.
"""

from __future__ import annotations

import gzip
import os
import socket
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

Frame = tuple[int, int, bytes]

LINKTYPE_ETHERNET: Final = 1

_PCAP_MAGICS: Final = {
    b"\xd4\xc3\xb2\xa1": ("<", 1000),  # little-endian, microseconds
    b"\xa1\xb2\xc3\xd4": (">", 1000),
    b"\x4d\x3c\xb2\xa1": ("<", 1),  # nanoseconds
    b"\xa1\xb2\x3c\x4d": (">", 1),
}
_PCAPNG_SHB: Final = b"\x0a\x0d\x0d\x0a"
_MAX_RECORD: Final = 256 * 1024  # larger than any snaplen a real capture uses


class CaptureError(Exception):
    """A capture cannot be read. The message names the file (and offset)."""


@dataclass
class ReadStats:
    packets: int = 0
    truncated: bool = False
    note: str = ""


class CaptureFile:
    """A pcap or pcapng file. Iterate for frames; ``position``/``size`` drive progress."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.stats = ReadStats()
        self._fh: BinaryIO
        self._raw: BinaryIO | None = None
        if path == "-":
            import sys

            self._fh = sys.stdin.buffer
            self.size = 0
        else:
            p = Path(path)
            try:
                self._raw = p.open("rb")
            except FileNotFoundError:
                raise CaptureError(f"{path}: no such file") from None
            except IsADirectoryError:
                raise CaptureError(f"{path}: is a directory, not a capture") from None
            except OSError as exc:
                raise CaptureError(f"{path}: cannot open: {exc.strerror}") from None
            self.size = os.fstat(self._raw.fileno()).st_size
            self._fh = self._raw
        head = self._peek(4)
        self.compressed = head[:2] == b"\x1f\x8b"
        if self.compressed:
            self._fh = gzip.GzipFile(fileobj=self._fh)  # type: ignore[assignment]
            head = self._peek(4)
        if not head:
            raise CaptureError(f"{path}: empty file, not a capture")
        if head in _PCAP_MAGICS:
            self.format = "pcap"
        elif head == _PCAPNG_SHB:
            self.format = "pcapng"
        else:
            raise CaptureError(f"{path}: not a pcap or pcapng capture (starts with {head.hex()})")

    def _peek(self, n: int) -> bytes:
        try:
            return self._fh.peek(n)[:n]  # type: ignore[attr-defined,no-any-return]
        except (OSError, EOFError, zlib.error) as exc:
            raise CaptureError(f"{self.path}: cannot read: {exc}") from None

    @property
    def position(self) -> int:
        """Bytes of the underlying file consumed so far (compressed bytes for gzip)."""
        try:
            return self._raw.tell() if self._raw else 0
        except (OSError, ValueError):
            return 0

    def close(self) -> None:
        if self._raw:
            self._raw.close()

    def __enter__(self) -> CaptureFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Frame]:
        try:
            if self.format == "pcap":
                yield from self._read_pcap()
            else:
                yield from self._read_pcapng()
        except EOFError:  # a gzip stream cut short: like a cut plain file, keep what was read
            self._truncated("compressed stream", self.position)
        except (OSError, zlib.error) as exc:  # BadGzipFile is an OSError
            raise CaptureError(
                f"{self.path}: read failed after {self.stats.packets} packets "
                f"(byte {self.position} of the file): {exc}"
            ) from None

    def _truncated(self, what: str, offset: int) -> None:
        self.stats.truncated = True
        self.stats.note = (
            f"{self.path}: truncated {what} at byte {offset}; kept {self.stats.packets} packets"
        )

    def _read_pcap(self) -> Iterator[Frame]:
        fh = self._fh
        hdr = fh.read(24)
        if len(hdr) < 24:
            raise CaptureError(f"{self.path}: pcap header cut short ({len(hdr)} of 24 bytes)")
        endian, mult = _PCAP_MAGICS[hdr[:4]]
        linktype = struct.unpack(endian + "I", hdr[20:24])[0] & 0x0FFFFFFF
        rec = struct.Struct(endian + "IIII")
        offset = 24
        stats = self.stats
        read = fh.read
        while True:
            rh = read(16)
            if len(rh) < 16:
                if rh:
                    self._truncated("record header", offset)
                return
            sec, frac, incl, _orig = rec.unpack(rh)
            if incl > _MAX_RECORD:
                raise CaptureError(
                    f"{self.path}: corrupt record at byte {offset}: length {incl} "
                    f"(after {stats.packets} packets)"
                )
            data = read(incl)
            if len(data) < incl:
                self._truncated("packet", offset)
                return
            offset += 16 + incl
            stats.packets += 1
            yield (sec * 1_000_000_000 + frac * mult, linktype, data)

    def _read_pcapng(self) -> Iterator[Frame]:
        fh = self._fh
        read = fh.read
        endian = "<"
        ifaces: list[tuple[int, int, int]] = []  # (linktype, ts_num, ts_den) per interface
        offset = 0
        stats = self.stats
        while True:
            bh = read(8)
            if len(bh) < 8:
                if bh:
                    self._truncated("block header", offset)
                return
            btype = struct.unpack(endian + "I", bh[:4])[0]
            if bh[:4] == _PCAPNG_SHB:
                bom = read(4)
                if bom == b"\x4d\x3c\x2b\x1a":
                    endian = "<"
                elif bom == b"\x1a\x2b\x3c\x4d":
                    endian = ">"
                else:
                    raise CaptureError(
                        f"{self.path}: bad pcapng byte-order magic at byte {offset} "
                        f"(after {stats.packets} packets)"
                    )
                blen = struct.unpack(endian + "I", bh[4:8])[0]
                if blen < 28 or blen % 4 or blen > _MAX_RECORD + 64:
                    raise CaptureError(
                        f"{self.path}: corrupt pcapng section header at byte {offset}: "
                        f"length {blen} (after {stats.packets} packets)"
                    )
                body = bom + read(blen - 12)
                ifaces = []
            else:
                blen = struct.unpack(endian + "I", bh[4:8])[0]
                if blen < 12 or blen % 4 or blen > _MAX_RECORD + 64:
                    raise CaptureError(
                        f"{self.path}: corrupt pcapng block at byte {offset}: length {blen} "
                        f"(after {stats.packets} packets)"
                    )
                body = read(blen - 8)
            if len(body) < blen - 8:
                self._truncated("block", offset)
                return
            offset += blen
            if btype == 1 and len(body) < 12:
                raise CaptureError(
                    f"{self.path}: corrupt pcapng interface block at byte {offset - blen}: "
                    f"length {blen} (after {stats.packets} packets)"
                )
            if btype == 1:  # Interface Description Block
                linktype = struct.unpack(endian + "H", body[:2])[0]
                ifaces.append((linktype, *_pcapng_tsresol(body[8:-4], endian)))
            elif btype == 6:  # Enhanced Packet Block
                if len(body) < 24:
                    raise CaptureError(
                        f"{self.path}: corrupt pcapng packet block at byte {offset - blen}: "
                        f"length {blen} (after {stats.packets} packets)"
                    )
                if_id, ts_hi, ts_lo, caplen = struct.unpack(endian + "IIII", body[:16])
                if if_id >= len(ifaces):
                    raise CaptureError(
                        f"{self.path}: packet at byte {offset - blen} names interface {if_id}, "
                        f"which was never described (after {stats.packets} packets)"
                    )
                linktype, num, den = ifaces[if_id]
                ts = ((ts_hi << 32) | ts_lo) * num // den
                stats.packets += 1
                yield (ts, linktype, body[20 : 20 + caplen])
            elif btype == 3 and ifaces:  # Simple Packet Block: no timestamp
                stats.packets += 1
                yield (0, ifaces[0][0], body[4:-4])


def _pcapng_tsresol(options: bytes, endian: str) -> tuple[int, int]:
    """(numerator, denominator) turning a pcapng timestamp into nanoseconds."""
    i = 0
    while i + 4 <= len(options):
        code, length = struct.unpack(endian + "HH", options[i : i + 4])
        if code == 0:
            break
        if code == 9 and length >= 1 and i + 4 < len(options):  # the value may be cut off
            v = options[i + 4]
            if v & 0x80:
                return 1_000_000_000, 1 << (v & 0x7F)
            return 1_000_000_000, 10**v
        i += 4 + length + (-length % 4)
    return 1000, 1  # default: microseconds


# What the kernel keeps for the live sensor. Everything that can carry a name or start a
# flow, and nothing else: DNS on its ports over UDP and TCP, QUIC long-header packets
# (Initials), TCP SYN/FIN/RST (flow starts and ends), and TCP segments that carry payload
# (a ClientHello or a request head can start on any port and continue in the next
# segment, so continuation segments must pass too). Pure ACKs, short-header QUIC and other
# UDP are dropped in the kernel. libpcap's tcp[]/udp[] offsets are IPv4-only, so IPv6 has
# its own clauses (fixed offsets: IPv6 extension headers defeat them and fall through).
BPF_FILTER: Final = " or ".join(
    (
        "udp port 53 or udp port 5353 or udp port 5355 or tcp port 53",
        "(ip and udp and udp[8] & 0x80 = 0x80)",
        "(ip6 and ip6[6] = 17 and ip6[48] & 0x80 = 0x80)",
        "(ip and tcp[tcpflags] & (tcp-syn|tcp-fin|tcp-rst) != 0)",
        "(ip6 and ip6[6] = 6 and ip6[53] & 0x07 != 0)",
        "(ip and tcp and (ip[2:2] - ((ip[0] & 0xf) << 2) - ((tcp[12] & 0xf0) >> 2)) != 0)",
        "(ip6 and ip6[6] = 6 and (ip6[4:2] - ((ip6[52] & 0xf0) >> 2)) != 0)",
        "(vlan and (udp or tcp))",
    )
)


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
            self.stats.packets += 1
            yield frame
        self._sock.setblocking(False)
        while True:
            try:
                frame = self._recv()
            except (BlockingIOError, OSError):
                return
            self.stats.packets += 1
            yield frame

    def _recv(self) -> Frame:
        data, ancillary, _flags, _addr = self._sock.recvmsg(self.snaplen, _TIMESPEC_SPACE)
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS:
                sec, nsec = _TIMESPEC.unpack_from(value)
                return (sec * 1_000_000_000 + nsec, LINKTYPE_ETHERNET, data)
        return (time.time_ns(), LINKTYPE_ETHERNET, data)


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
