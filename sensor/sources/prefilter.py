"""Capture files read through libpcap with a BPF prefilter: packets that cannot carry a
name or start a watched flow are dropped in C and never cost Python anything.

libpcap (``libpcap.so.0.8``, tcpdump's library) is loaded with ``ctypes``; it applies the
filter to savefiles itself (``pcap_setfilter`` + ``pcap_next_ex``), so only the packets
that pass come back as ``Frame`` tuples. ``open_capture`` falls back to the pure-Python
reader (``sensor.sources.pcapfile.CaptureFile``, the reference) when libpcap is missing, the input
is stdin or gzip, the link type is one the filter is not written for, or libpcap refuses
the file; the pure reader then gives its own, more precise, errors. libpcap reads a pcapng
file only while every interface has the first one's link type and snapshot length
(dumpcap capturing on several interfaces writes files where they differ): where libpcap
stops on such a file, the pure reader reads the rest (``PrefilteredFile.__iter__``), so
the fast path never refuses what the pure reader reads.

What passes (``prefilter_expression``), and why it loses nothing the sensor reports:

- anything that is not plain IPv4/IPv6 on the link (VLAN/QinQ, MPLS, PPPoE...): wholesale,
  the filter's fixed offsets do not reach inside;
- IPv4 fragments, IPv4 IP-in-IP/6in4/GRE, IPv6 with any next header but TCP, UDP and
  ICMPv6 (extension headers, fragments and tunnels defeat fixed offsets): wholesale;
- every UDP datagram except short-header QUIC on port 443 (the bulk of QUIC: the first
  byte has the fixed bit 0x40 and not the long-header bit 0x80); DNS on any port, QUIC
  Initials, VXLAN/Geneve/GTP/Teredo all pass;
- TCP SYN/FIN/RST (flow starts for IP attribution, stream ends);
- TCP segments with payload, except those from a well-known port (< 1024, not 53) to an
  ephemeral one: server-to-client data, which carries no ClientHello, request or query.
  Continuations of a split ClientHello pass (no test of the first payload byte). Server
  data from port 80 whose first byte is ``H``, ``K`` or ``D`` passes: an HTTP answer's
  status line, and a body segment starting with an update file's magic (``KLZF``,
  ``KLD2``, ``DIFF``), read by the content signals (``sensor.content.visible`` applies
  the same rule, so both readers agree); other bulk from port 80 (99 % of it) stays in C;
- anything to the pack's CIDRs (``ip_flow`` hits on any packet that starts a flow).

libpcap's ``tcp[]``/``udp[]`` offsets work over IPv4 only, so IPv6 has its own ``ip6[]``
clauses (for packets without extension headers; those pass wholesale above).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from collections.abc import Callable, Container, Iterable, Iterator
from typing import Final

from sensor.sources import libpcap
from sensor.sources.base import CaptureError, FileReader, Frame, ReadStats
from sensor.sources.pcapfile import CaptureFile

log = logging.getLogger(__name__)

# DLT values libpcap reports that the filter below is written for: BSD loopback, Ethernet, raw IP
# (12/14 are the platform DLTs of LINKTYPE_RAW 101), IPv4, IPv6, Linux cooked v1 and v2, and
# the link types libpcap's ip/ip6/tcp/udp primitives find IP in by themselves: PPP (9),
# PPP in HDLC framing (50), Cisco HDLC (104), 802.11 (105: data frames, LLC/SNAP, QoS and
# 4-address headers) and radiotap (127: its length and the data-padding flag), OpenBSD
# loopback (108). Anything libpcap does not take for IP passes whole ("not (ip or ip6)").
SUPPORTED_DLTS: Final = frozenset(
    {0, 1, 9, 12, 14, 50, 101, 104, 105, 108, 113, 127, 228, 229, 276}
)
_PCAP_TSTAMP_PRECISION_NANO: Final = 1
_PCAP_NETMASK_UNKNOWN: Final = 0xFFFFFFFF
_PCAP_ERRBUF_SIZE: Final = 256


def _answer_start(byte: str) -> str:
    """``byte`` (a filter load) can start what the content signals read of an HTTP answer:
    ``H`` (the status line), ``K`` (``KLZF``, ``KLD2``) or ``D`` (``DIFF``)."""
    return f"({byte} = 0x48 or {byte} = 0x4b or {byte} = 0x44)"


# server data (a well-known port, not 53, to an ephemeral one) is dropped, except from
# port 80 when it can start an HTTP answer's head or an update file's body: the content
# signals read those (sensor/content.py's ``visible`` is the same rule)
_IPV4_TCP: Final = (
    "(ip and tcp and (tcp[13] & 7 != 0"
    " or ((ip[2:2] - ((ip[0] & 0xf) << 2) - ((tcp[12] & 0xf0) >> 2)) != 0"
    " and not (tcp[0:2] < 1024 and tcp[0:2] != 53 and tcp[2:2] >= 1024"
    f" and not (tcp[0:2] = 80 and {_answer_start('tcp[(tcp[12] & 0xf0) >> 2]')})))))"
)
_IPV6_TCP: Final = (
    "(ip6 and ip6[6] = 6 and (ip6[53] & 7 != 0"
    " or ((ip6[4:2] - ((ip6[52] & 0xf0) >> 2)) != 0"
    " and not (ip6[40:2] < 1024 and ip6[40:2] != 53 and ip6[42:2] >= 1024"
    f" and not (ip6[40:2] = 80 and {_answer_start('ip6[40 + ((ip6[52] & 0xf0) >> 2)]')})))))"
)
_IPV4_UDP: Final = "(ip and udp and not (udp port 443 and udp[8] & 0xc0 = 0x40))"
_IPV6_UDP: Final = (
    "(ip6 and ip6[6] = 17 and not ((ip6[40:2] = 443 or ip6[42:2] = 443) and ip6[48] & 0xc0 = 0x40))"
)
_WHOLESALE: Final = (
    "not (ip or ip6)",
    "(ip and (ip[6:2] & 0x3fff != 0 or ip[9] = 4 or ip[9] = 41 or ip[9] = 47))",
    "(ip6 and ip6[6] != 6 and ip6[6] != 17 and ip6[6] != 58)",
)


def prefilter_expression(cidrs: Iterable[str] = ()) -> str:
    """The BPF expression for files; ``cidrs`` are the packs' watched networks.

    The CIDR clauses come first: an out-of-range load (``udp[8]`` of an empty datagram)
    ends a BPF program with "reject", so the clauses that load payload bytes come last.
    """
    nets = [f"dst net {c}" for c in sorted(set(cidrs))]
    return " or ".join((*nets, *_WHOLESALE, _IPV4_TCP, _IPV6_TCP, _IPV4_UDP, _IPV6_UDP))


_BpfProgram = libpcap.BpfProgram
_PktHdr = libpcap.PktHdr


def _load() -> ctypes.CDLL | None:
    """The shared libpcap, with the signatures of what reading files calls."""
    lib = libpcap.load()
    if lib is None:
        return None
    lib.pcap_fopen_offline_with_tstamp_precision.restype = ctypes.c_void_p
    lib.pcap_fopen_offline_with_tstamp_precision.argtypes = (
        ctypes.c_void_p,
        ctypes.c_uint,
        ctypes.c_char_p,
    )
    lib.pcap_compile.argtypes = (
        ctypes.c_void_p,
        ctypes.POINTER(_BpfProgram),
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_uint32,
    )
    lib.pcap_setfilter.argtypes = (ctypes.c_void_p, ctypes.POINTER(_BpfProgram))
    lib.pcap_freecode.argtypes = (ctypes.POINTER(_BpfProgram),)
    lib.pcap_datalink.argtypes = (ctypes.c_void_p,)
    lib.pcap_geterr.argtypes = (ctypes.c_void_p,)
    lib.pcap_geterr.restype = ctypes.c_char_p
    lib.pcap_close.argtypes = (ctypes.c_void_p,)
    lib.pcap_file.argtypes = (ctypes.c_void_p,)
    lib.pcap_file.restype = ctypes.c_void_p
    lib.pcap_open_dead.argtypes = (ctypes.c_int, ctypes.c_int)
    lib.pcap_open_dead.restype = ctypes.c_void_p
    lib.pcap_offline_filter.argtypes = (
        ctypes.POINTER(_BpfProgram),
        ctypes.POINTER(_PktHdr),
        ctypes.c_char_p,
    )
    lib.pcap_offline_filter.restype = ctypes.c_int
    return lib


_LIB: Final = _load()
_LIBC: Final = ctypes.CDLL(None, use_errno=True)
_LIBC.ftell.argtypes = (ctypes.c_void_p,)
_LIBC.ftell.restype = ctypes.c_long
_LIBC.fopen.argtypes = (ctypes.c_char_p, ctypes.c_char_p)
_LIBC.fopen.restype = ctypes.c_void_p
_LIBC.setvbuf.argtypes = (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_size_t)
_LIBC.fclose.argtypes = (ctypes.c_void_p,)
_IOFBF: Final = 0
# stdio reads a file a block (4 KiB) at a time, 237,000 read calls for a 1 GB capture; it
# takes a larger buffer only with the memory for it (glibc ignores a size alone)
_READ_BUFFER: Final = 1 << 20


_PKTHDR: Final = libpcap.PKTHDR
_MAX_CAPLEN: Final = libpcap.MAX_CAPLEN
_view: Final = libpcap.view


def available() -> bool:
    """Whether libpcap could be loaded."""
    return _LIB is not None


class PrefilteredFile(FileReader):
    """A pcap/pcapng file read by libpcap with ``expression`` applied in C.

    The same reading interface as ``CaptureFile`` (iterate for frames; ``stats``,
    ``position``, ``size``, ``path``); ``stats.packets`` counts the packets that passed.
    Raises ``CaptureError`` when libpcap cannot open the file, the link type is not one
    the filter is written for, or the filter does not compile.
    """

    counts = "packets past the prefilter"  # libpcap skips the rest uncounted

    def __init__(
        self,
        path: str,
        expression: str,
        readable: Container[int] | None = None,
        narrow: Callable[[int], str | None] | None = None,
    ) -> None:
        """``readable``: the link types the decoder reads, for the pure reader that takes
        over when libpcap stops on an interface of another link type. ``narrow(link type)``:
        a BPF clause the filter is ANDed with (``scan --workers``, ``sensor/shard.py``)."""
        if _LIB is None:
            raise CaptureError(f"{path}: libpcap is not available")
        self.path = path
        self.expression = expression
        self._unnarrowed = expression  # for other interfaces' link types (``_rest``)
        self.readable = readable
        self._walked = 0  # packets of readable link types the pure reader read (``_rest``)
        self.stats = ReadStats()
        self.format = "libpcap"
        self.size = os.path.getsize(path)
        errbuf = ctypes.create_string_buffer(_PCAP_ERRBUF_SIZE)
        fp = _LIBC.fopen(os.fsencode(path), b"rb")
        if not fp:
            raise CaptureError(f"{path}: cannot open: {os.strerror(ctypes.get_errno())}")
        self._read_buffer = ctypes.create_string_buffer(_READ_BUFFER)  # lives as the FILE
        _LIBC.setvbuf(fp, self._read_buffer, _IOFBF, _READ_BUFFER)
        handle = _LIB.pcap_fopen_offline_with_tstamp_precision(
            fp, _PCAP_TSTAMP_PRECISION_NANO, errbuf
        )
        if not handle:  # libpcap closes the FILE only once it has made a handle of it
            _LIBC.fclose(fp)
            raise CaptureError(f"{path}: libpcap: {errbuf.value.decode(errors='replace')}")
        self._pcap: int | None = handle
        self.linktype = _LIB.pcap_datalink(handle)
        if self.linktype not in SUPPORTED_DLTS:
            self.close()
            raise CaptureError(f"{path}: link type {self.linktype} has no prefilter")
        clause = narrow(self.linktype) if narrow is not None else None
        if clause:  # ``scan --workers``: this worker's share of the flows (sensor/shard.py)
            expression = self.expression = f"({expression}) and ({clause})"
        prog = _BpfProgram()
        if _LIB.pcap_compile(handle, ctypes.byref(prog), expression.encode(), 1,
                             _PCAP_NETMASK_UNKNOWN) != 0:  # fmt: skip
            err = self._error()
            self.close()
            raise CaptureError(f"{path}: prefilter does not compile: {err}")
        try:
            if _LIB.pcap_setfilter(handle, ctypes.byref(prog)) != 0:
                err = self._error()
                self.close()
                raise CaptureError(f"{path}: prefilter not accepted: {err}")
        finally:
            _LIB.pcap_freecode(ctypes.byref(prog))

    def packets_read(self) -> int:
        """Past the prefilter, or (once the pure reader took over) every packet of a
        readable link type in the file: libpcap counts none it drops."""
        return max(self.stats.packets, self._walked)

    def _error(self) -> str:
        assert _LIB is not None and self._pcap is not None
        return (_LIB.pcap_geterr(self._pcap) or b"").decode(errors="replace")

    @property
    def position(self) -> int:
        if _LIB is None or self._pcap is None:
            return 0
        return max(0, int(_LIBC.ftell(_LIB.pcap_file(self._pcap))))

    def close(self) -> None:
        if self._pcap is not None and _LIB is not None:
            _LIB.pcap_close(self._pcap)
        self._pcap = None

    def __enter__(self) -> PrefilteredFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Frame]:
        """Frames that pass the filter. Per packet: one call into libpcap, the header
        read with ``struct`` and the bytes copied out, through views of libpcap's header
        and buffer that are rebuilt only when libpcap hands out another address."""
        assert _LIB is not None and self._pcap is not None
        handle = ctypes.c_void_p(self._pcap)
        # pcap_next_ex without argtypes: ctypes then passes these ready-made arguments as
        # they are instead of converting each on every call
        next_ex = type(_LIB.pcap_next_ex)(("pcap_next_ex", _LIB))
        hdr_p, data_p = ctypes.c_void_p(), ctypes.c_void_p()
        hdr_ref, data_ref = ctypes.byref(hdr_p), ctypes.byref(data_p)
        hdr_at, data_at = -1, -1
        hdr_view = data_view = memoryview(b"")
        unpack_hdr = _PKTHDR.unpack_from
        linktype = self.linktype
        passed = 0
        rc = 1
        try:
            while (rc := next_ex(handle, hdr_ref, data_ref)) == 1:
                if hdr_p.value != hdr_at:
                    hdr_at = hdr_p.value or 0
                    hdr_view = _view(hdr_at, _PKTHDR.size)
                sec, frac, caplen, _len = unpack_hdr(hdr_view)
                if data_p.value != data_at:
                    data_at = data_p.value or 0
                    data_view = _view(data_at, _MAX_CAPLEN)
                passed += 1
                yield (sec * 1_000_000_000 + frac, linktype, data_view[:caplen].tobytes())
        finally:
            self.stats.packets = passed
        if rc == -1:
            yield from self._rest(self._error())

    def _rest(self, err: str) -> Iterator[Frame]:
        """libpcap stopped on a block it will not read: in a file without fault, an
        interface whose link type or snapshot length differs from the first's. Its message
        names no position, so the pure reader reads the file again from the start, yielding
        the packets of the blocks past where libpcap stopped, each through the filter
        compiled for its interface's link type (a broken file thus gets the pure reader's
        own message: the byte, and the packets of the whole file kept; a cut-off file
        keeps what was read)."""
        at = self.position
        self.close()
        log.info(
            "%s: libpcap stopped at byte %d (%s); the rest is read by the pure reader, "
            "filtered per interface", self.path, at, err,
        )  # fmt: skip
        walk = CaptureFile(self.path, readable=self.readable, skip_before=at)
        # the shard clause is written for the first interface's link type: the others get
        # the plain filter (the sensor's own shard test still keeps only this worker's flows)
        filters = LinkFilters(self._unnarrowed)
        passes = filters.passes
        try:
            for frame in walk:
                if passes(frame[1], frame[2]):
                    self.stats.packets += 1
                    yield frame
        except CaptureError as exc:
            raise CaptureError(f"{exc} (libpcap: {err})") from None
        finally:
            walk.close()
            filters.close()
            self.stats.skipped = walk.stats.skipped
            self._walked = walk.stats.packets  # the blocks libpcap read too
        self.stats.truncated = walk.stats.truncated
        self.stats.note = walk.stats.note


# pcap link types whose libpcap DLT differs (pcap_open_dead takes a DLT)
_DLT_OF_LINKTYPE: Final = {101: 12}


class LinkFilters:
    """``expression`` compiled once per link type and applied to frames read in Python
    (``pcap_offline_filter``: libpcap's own filter machine, as ``pcap_next_ex`` runs it).
    A link type the filter is not written for, or that does not compile, passes whole."""

    def __init__(self, expression: str) -> None:
        self._expression = expression.encode()
        self._programs: dict[int, _BpfProgram | None] = {}
        self._hdr = _PktHdr()
        self._hdr_ref = ctypes.byref(self._hdr)

    def _compile(self, linktype: int) -> _BpfProgram | None:
        prog = None
        if _LIB is not None and linktype in SUPPORTED_DLTS:
            handle = _LIB.pcap_open_dead(_DLT_OF_LINKTYPE.get(linktype, linktype), _MAX_CAPLEN)
            if handle:
                prog = _BpfProgram()
                if _LIB.pcap_compile(handle, ctypes.byref(prog), self._expression, 1,
                                     _PCAP_NETMASK_UNKNOWN) != 0:  # fmt: skip
                    prog = None
                _LIB.pcap_close(handle)
        self._programs[linktype] = prog
        return prog

    def passes(self, linktype: int, data: bytes) -> bool:
        try:
            prog = self._programs[linktype]
        except KeyError:
            prog = self._compile(linktype)
        if prog is None or _LIB is None:
            return True
        hdr = self._hdr
        hdr.caplen = hdr.len = len(data)
        return bool(_LIB.pcap_offline_filter(prog, self._hdr_ref, data))

    def close(self) -> None:
        for prog in self._programs.values():
            if prog is not None and _LIB is not None:
                _LIB.pcap_freecode(ctypes.byref(prog))
        self._programs.clear()
