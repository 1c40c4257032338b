"""Capture files read in pure Python: pcap and pcapng, plain or gzip, or stdin (``-``).

The reference reader: hand-written (no per-packet objects), and it says which file and
byte offset is bad. Each pcapng interface keeps its own link type and timestamp unit.
Given the link types the decoder reads (``readable``), packets of any other are skipped
and counted per link type in ``stats.skipped`` (the caller names them).
"""

from __future__ import annotations

import gzip
import io
import os
import select
import struct
import threading
import zlib
from collections.abc import Container, Iterator
from pathlib import Path
from typing import BinaryIO, Final

from sensor.sources.base import CaptureError, FileReader, Frame, ReadStats, Stopped

_PCAP_MAGICS: Final = {
    b"\xd4\xc3\xb2\xa1": ("<", 1000),  # little-endian, microseconds
    b"\xa1\xb2\xc3\xd4": (">", 1000),
    b"\x4d\x3c\xb2\xa1": ("<", 1),  # nanoseconds
    b"\xa1\xb2\x3c\x4d": (">", 1),
}
_PCAPNG_SHB: Final = b"\x0a\x0d\x0d\x0a"
_MAX_RECORD: Final = 256 * 1024  # larger than any snaplen a real capture uses


class CaptureFile(FileReader):
    """A pcap or pcapng file. Iterate for frames; ``position``/``size`` drive progress."""

    def __init__(
        self,
        path: str,
        stop: threading.Event | None = None,
        readable: Container[int] | None = None,
        skip_before: int = 0,
    ) -> None:
        """``stop``: stdin is read so that setting it ends a read waiting for input.
        ``readable``: the link types to yield (None: all). ``skip_before``: packets whose
        record ends at or before this byte of the file are read past, not yielded (the
        rest of a file another reader began; ``stats.packets`` counts them, as a
        truncation note's "kept" does)."""
        self.path = path
        self.stats = ReadStats()
        self.readable = readable
        self.skip_before = skip_before
        self._fh: BinaryIO
        self._raw: BinaryIO | None = None
        if path == "-":
            import sys

            self._fh = sys.stdin.buffer
            if stop is not None:
                self._fh = io.BufferedReader(_StoppableInput(sys.stdin.fileno(), stop), 1 << 16)
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
        except Stopped:
            self.stopped = True
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
        skip = self.skip_before
        unread = self.readable is not None and linktype not in self.readable
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
            if offset <= skip:
                stats.packets += 1
                continue
            if unread:
                stats.skipped[linktype] = stats.skipped.get(linktype, 0) + 1
                continue
            stats.packets += 1
            yield (sec * 1_000_000_000 + frac * mult, linktype, data)

    def _read_pcapng(self) -> Iterator[Frame]:
        fh = self._fh
        read = fh.read
        endian = "<"
        ifaces: list[tuple[int, int, int]] = []  # (linktype, ts_num, ts_den) per interface
        offset = 0
        stats = self.stats
        readable = self.readable
        skip = self.skip_before
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
                if offset <= skip:
                    stats.packets += 1
                    continue
                if readable is not None and linktype not in readable:
                    stats.skipped[linktype] = stats.skipped.get(linktype, 0) + 1
                    continue
                ts = ((ts_hi << 32) | ts_lo) * num // den
                stats.packets += 1
                yield (ts, linktype, body[20 : 20 + caplen])
            elif btype == 3 and ifaces:  # Simple Packet Block: no timestamp
                linktype = ifaces[0][0]
                if offset <= skip:
                    stats.packets += 1
                    continue
                if readable is not None and linktype not in readable:
                    stats.skipped[linktype] = stats.skipped.get(linktype, 0) + 1
                    continue
                stats.packets += 1
                yield (0, linktype, body[4:-4])


class _StoppableInput(io.RawIOBase):
    """A pipe read that waits at most 0.2 s at a time, so a quiet stdin can be stopped."""

    def __init__(self, fd: int, stop: threading.Event) -> None:
        self._fd = fd
        self._stop = stop

    def readable(self) -> bool:
        return True

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._stop.is_set():
            ready, _, _ = select.select([self._fd], [], [], 0.2)
            if ready:
                return os.readv(self._fd, [buf])
        raise Stopped


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
