"""Live capture through libpcap's memory-mapped ring: no system call per packet.

libpcap (the library ``sensor.sources.prefilter`` reads files with) opens the interface
with a TPACKET_V3 block ring on Linux: the kernel fills blocks of packets in memory this
process maps, and hands a block over when it is full or ``BLOCK_TIMEOUT_MS`` after its
first packet. Reading a packet is then one call into libpcap that copies nothing but the
header, instead of a ``recvmsg`` system call with its ancillary data (the AF_PACKET
socket of ``sensor.sources.live.LiveCapture``, which the sensor falls back to when
libpcap cannot be loaded). The filter is attached in the kernel by ``pcap_setfilter``;
PACKET_FANOUT is joined on libpcap's socket with ``setsockopt``, as the socket path does.
On the loopback device libpcap skips the copy of each packet as sent, so one datagram is
one packet there too.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import select
import socket
import struct
from collections.abc import Container, Iterator
from typing import Final

from sensor.sources import libpcap
from sensor.sources.base import CaptureError, Frame, ReadStats

log = logging.getLogger(__name__)

RING_BYTES: Final = 32 * 1024 * 1024  # as the socket path's receive queue
# The kernel hands a partly filled block over this long after its first packet: the most
# a packet waits on a quiet wire before the sensor sees it. Busy, blocks fill first.
BLOCK_TIMEOUT_MS: Final = 10
QUIET_MS: Final = 200  # a read waits this long for the wire before saying it is quiet
_PCAP_TSTAMP_PRECISION_NANO: Final = 1
_PCAP_NETMASK_UNKNOWN: Final = 0xFFFFFFFF
_PCAP_ERROR_NO_SUCH_DEVICE: Final = -5
_PCAP_ERROR_PERM_DENIED: Final = -8
_PCAP_ERRBUF_SIZE: Final = 256
_SOL_PACKET: Final = 263
_PACKET_FANOUT: Final = 18
_PACKET_FANOUT_HASH: Final = 0  # by flow: the kernel's symmetric 5-tuple hash
_PACKET_FANOUT_FLAG_DEFRAG: Final = 0x8000  # reassemble IP fragments first, so they hash alike
_DLT_TO_LINKTYPE: Final = {12: 101, 14: 101}  # the platform DLTs of raw IP
_PKTHDR: Final = libpcap.PKTHDR  # with nanosecond precision: the timeval holds ns
_MAX_CAPLEN: Final = libpcap.MAX_CAPLEN
_BpfProgram = libpcap.BpfProgram
_view: Final = libpcap.view


class _PcapStat(ctypes.Structure):
    _fields_ = (
        ("ps_recv", ctypes.c_uint),
        ("ps_drop", ctypes.c_uint),
        ("ps_ifdrop", ctypes.c_uint),
    )


def _load() -> ctypes.CDLL | None:
    """The shared libpcap, with the signatures of what the ring calls; None when it is
    missing or too old for a ring with nanosecond times."""
    lib = libpcap.load()
    if lib is None:
        return None
    p, i, s = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
    for fn, args, res in (
        ("pcap_create", (s, s), p),
        ("pcap_set_snaplen", (p, i), i),
        ("pcap_set_promisc", (p, i), i),
        ("pcap_set_timeout", (p, i), i),
        ("pcap_set_buffer_size", (p, i), i),
        ("pcap_set_tstamp_precision", (p, i), i),
        ("pcap_activate", (p,), i),
        ("pcap_setnonblock", (p, i, s), i),
        ("pcap_compile", (p, ctypes.POINTER(_BpfProgram), s, i, ctypes.c_uint32), i),
        ("pcap_setfilter", (p, ctypes.POINTER(_BpfProgram)), i),
        ("pcap_freecode", (ctypes.POINTER(_BpfProgram),), None),
        ("pcap_datalink", (p,), i),
        ("pcap_fileno", (p,), i),
        ("pcap_get_selectable_fd", (p,), i),
        ("pcap_stats", (p, ctypes.POINTER(_PcapStat)), i),
        ("pcap_geterr", (p,), s),
        ("pcap_statustostr", (i,), s),
        ("pcap_close", (p,), None),
    ):
        try:
            f = getattr(lib, fn)
        except AttributeError:  # a libpcap too old for a ring with nanosecond times
            return None
        f.argtypes, f.restype = args, res
    return lib


_LIB: Final = _load()


def available() -> bool:
    """Whether libpcap could be loaded with what the ring needs."""
    return _LIB is not None


class RingCapture:
    """Frames from one interface through libpcap's ring (needs CAP_NET_RAW to open).

    The same reading interface as ``LiveCapture``: iterate for frames (``None`` when the
    wire is quiet for a moment), ``stop()`` to read out what the kernel holds and end,
    ``read_kernel_stats()`` for the kernel's packet and drop counts. ``fanout`` joins a
    PACKET_FANOUT group in flow-hash mode (see ``LiveCapture``).
    """

    def __init__(
        self,
        interface: str,
        snaplen: int,
        bpf: str | None,
        fanout: int | None,
        readable: Container[int] | None = None,
    ) -> None:
        """``readable``: the link types the decoder reads (None: any). An interface of
        another link type is opened with a warning naming it, and its packets are
        counted (``stats.skipped``) instead of read."""
        if _LIB is None:
            raise CaptureError(f"{interface}: libpcap is not available")
        self.interface = interface
        self.snaplen = snaplen
        self.kernel_packets = 0
        self.kernel_drops = 0
        self.stats = ReadStats()
        self._stop = False
        errbuf = ctypes.create_string_buffer(_PCAP_ERRBUF_SIZE)
        handle = _LIB.pcap_create(interface.encode(), errbuf)
        if not handle:
            raise CaptureError(
                f"{interface}: cannot capture: {errbuf.value.decode(errors='replace')}"
            )
        self._pcap: int | None = handle
        _LIB.pcap_set_snaplen(handle, snaplen)
        _LIB.pcap_set_promisc(handle, 0)  # as the socket path: the interface is left as it is
        _LIB.pcap_set_timeout(handle, BLOCK_TIMEOUT_MS)
        _LIB.pcap_set_buffer_size(handle, RING_BYTES)
        _LIB.pcap_set_tstamp_precision(handle, _PCAP_TSTAMP_PRECISION_NANO)
        rc = _LIB.pcap_activate(handle)
        if rc < 0:
            self._fail(self._activate_error(rc))
        if _LIB.pcap_setnonblock(handle, 1, errbuf) != 0:  # waits are ours: poll() below
            self._fail(f"cannot capture: {errbuf.value.decode(errors='replace')}")
        dlt = _LIB.pcap_datalink(handle)
        self.linktype = _DLT_TO_LINKTYPE.get(dlt, dlt)
        self.readable = readable is None or self.linktype in readable
        if not self.readable:
            log.warning(
                "%s: link type %d is not one kaspwatch decodes: its packets are counted, "
                "not read", interface, self.linktype,
            )  # fmt: skip
        if bpf:
            self._attach(bpf)
        if fanout is not None:
            self._join_fanout(fanout)
        self._fd = _LIB.pcap_get_selectable_fd(handle)

    def _activate_error(self, rc: int) -> str:
        assert _LIB is not None
        if rc == _PCAP_ERROR_PERM_DENIED:
            return "permission denied opening a capture socket (needs root or CAP_NET_RAW)"
        if rc == _PCAP_ERROR_NO_SUCH_DEVICE:
            return "cannot capture: No such device"
        detail = self._error() or (_LIB.pcap_statustostr(rc) or b"").decode(errors="replace")
        return f"cannot capture: {detail}"

    def _error(self) -> str:
        assert _LIB is not None and self._pcap is not None
        return (_LIB.pcap_geterr(self._pcap) or b"").decode(errors="replace")

    def _fail(self, what: str) -> None:
        self.close()
        raise CaptureError(f"{self.interface}: {what}")

    def _attach(self, bpf: str) -> None:
        assert _LIB is not None and self._pcap is not None
        prog = _BpfProgram()
        if _LIB.pcap_compile(self._pcap, ctypes.byref(prog), bpf.encode(), 1,
                             _PCAP_NETMASK_UNKNOWN) != 0:  # fmt: skip
            self._fail(f"cannot attach capture filter {bpf!r}: {self._error()}")
        try:
            if _LIB.pcap_setfilter(self._pcap, ctypes.byref(prog)) != 0:
                self._fail(f"cannot attach capture filter {bpf!r}: {self._error()}")
        finally:
            _LIB.pcap_freecode(ctypes.byref(prog))

    def _join_fanout(self, group: int) -> None:
        """setsockopt on a duplicate of libpcap's descriptor: the same socket."""
        assert _LIB is not None and self._pcap is not None
        if not 0 <= group <= 0xFFFF:
            self._fail(f"fanout group {group} is not in 0-65535")
        mode = _PACKET_FANOUT_HASH | _PACKET_FANOUT_FLAG_DEFRAG
        sock = socket.fromfd(_LIB.pcap_fileno(self._pcap), socket.AF_PACKET, socket.SOCK_RAW)
        try:
            sock.setsockopt(_SOL_PACKET, _PACKET_FANOUT, struct.pack("I", group | mode << 16))
        except OSError as exc:  # EINVAL: the group exists with another mode or interface
            self._fail(f"cannot join fanout group {group}: {exc.strerror}")
        finally:
            sock.close()

    def read_kernel_stats(self) -> tuple[int, int]:
        """(packets, drops) since the capture opened (libpcap keeps the running totals)."""
        if _LIB is None or self._pcap is None:
            return self.kernel_packets, self.kernel_drops
        st = _PcapStat()
        if _LIB.pcap_stats(self._pcap, ctypes.byref(st)) == 0:
            self.kernel_packets, self.kernel_drops = st.ps_recv, st.ps_drop
        return self.kernel_packets, self.kernel_drops

    def stop(self) -> None:
        self._stop = True

    def close(self) -> None:
        if self._pcap is not None and _LIB is not None:
            _LIB.pcap_close(self._pcap)
        self._pcap = None

    def __iter__(self) -> Iterator[Frame | None]:
        """Frames as the kernel hands them over, stamped with the kernel's receive time;
        ``None`` once the ring is read out, and then each ``QUIET_MS`` the wire stays
        quiet. After ``stop()`` the block being filled is waited for (it is handed over
        within ``BLOCK_TIMEOUT_MS``) and read out before the iterator ends."""
        assert _LIB is not None and self._pcap is not None
        handle = ctypes.c_void_p(self._pcap)
        # without argtypes: ctypes passes these ready-made arguments as they are
        next_ex = type(_LIB.pcap_next_ex)(("pcap_next_ex", _LIB))
        hdr_p, data_p = ctypes.c_void_p(), ctypes.c_void_p()
        hdr_ref, data_ref = ctypes.byref(hdr_p), ctypes.byref(data_p)
        hdr_at, data_at = -1, -1
        hdr_view = data_view = memoryview(b"")
        unpack_hdr = _PKTHDR.unpack_from
        linktype = self.linktype
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        caught_up = flushed = False
        while True:
            rc = next_ex(handle, hdr_ref, data_ref)
            if rc == 1:
                if hdr_p.value != hdr_at:
                    hdr_at = hdr_p.value or 0
                    hdr_view = _view(hdr_at, _PKTHDR.size)
                sec, frac, caplen, _len = unpack_hdr(hdr_view)
                if data_p.value != data_at:
                    data_at = data_p.value or 0
                    data_view = _view(data_at, _MAX_CAPLEN)
                caught_up = False
                if not self.readable:
                    self.stats.skipped[linktype] = self.stats.skipped.get(linktype, 0) + 1
                    continue
                self.stats.packets += 1
                yield (sec * 1_000_000_000 + frac, linktype, data_view[:caplen].tobytes())
            elif rc == 0:  # the ring is read out, for now
                if self._stop:
                    if flushed:
                        return
                    flushed = True  # once more, after the block being filled is handed over
                    poller.poll(2 * BLOCK_TIMEOUT_MS)
                elif not caught_up:
                    caught_up = True
                    yield None
                elif not poller.poll(QUIET_MS):
                    yield None
            elif rc == -2:  # pcap_breakloop
                return
            else:
                raise CaptureError(f"{self.interface}: capture failed: {self._error()}")
