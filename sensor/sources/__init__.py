"""Capture sources: files (pure reader or libpcap prefilter) and live AF_PACKET sockets,
all seen through ``sensor.sources.base.Source``."""

from __future__ import annotations

import logging
import threading
from collections.abc import Container, Iterable, Iterator

from sensor.sources.base import CaptureError, Frame, ReadStats, Stopped, skipped_note
from sensor.sources.pcapfile import CaptureFile
from sensor.sources.prefilter import PrefilteredFile, available, prefilter_expression

log = logging.getLogger(__name__)


def open_capture(
    path: str,
    prefilter: bool = True,
    cidrs: Iterable[str] = (),
    stop: threading.Event | None = None,
    readable: Container[int] | None = None,
) -> CaptureFile | PrefilteredFile:
    """The fastest reader for ``path``: libpcap with the prefilter when it can, else the
    pure-Python reader. Errors about the file come from the pure reader (it opens it
    first, so a missing or foreign file is named the same way on both paths). ``stop``
    ends a read from stdin that waits for more input. ``readable``: the link types the
    decoder reads; packets of others are skipped and counted (``stats.skipped``,
    ``skipped_note``)."""
    cap = CaptureFile(path, stop, readable)
    if not prefilter:
        return cap
    why = _no_prefilter(path, cap)
    if why is None:
        try:
            fast = PrefilteredFile(path, prefilter_expression(cidrs), readable)
        except CaptureError as exc:
            why = str(exc).removeprefix(f"{path}: ")
        else:
            cap.close()
            return fast
    log.info("%s: read without the prefilter (%s)", path, why)
    return cap


def _no_prefilter(path: str, cap: CaptureFile) -> str | None:
    if not available():
        return "libpcap not found; install libpcap0.8"
    if path == "-":
        return "stdin"
    if cap.compressed:
        return "gzip"
    return None


class CaptureFiles:
    """Several capture files read one after the other as one ``Source``, each opened only
    when its turn comes (``sense``/``run --pcap``). A file that cannot be opened, or breaks
    off corrupt part-way, costs only itself: what was read of it is kept, its reason goes
    to ``errors`` (one line naming it) and the next file is read. ``stop`` ends the read
    where it is, a blocked stdin read included; ``finished`` says whether every file was
    read to its end, ``where`` which file the read stopped in and how many packets of it
    were read by then. A file holding packets only of link types the decoder does not
    read (``readable``) is an error; some such packets, a warning naming the link types."""

    live = False

    def __init__(
        self,
        paths: list[str],
        prefilter: bool = True,
        cidrs: Iterable[str] = (),
        readable: Container[int] | None = None,
    ) -> None:
        self.paths = paths
        self.prefilter = prefilter
        self.cidrs = list(cidrs)
        self.readable = readable
        self.stats = ReadStats()
        self.errors: list[str] = []
        self.finished = False
        self.opened = 0  # files that could be opened
        self.current: str | None = None
        self._reader: CaptureFile | PrefilteredFile | None = None
        self._read = 0  # files begun
        self._stop = threading.Event()
        self.counts = "packets"  # past the prefilter once libpcap has read a file

    def kernel_drops(self) -> int:
        return 0

    def stop(self) -> None:
        self._stop.set()  # the event every reader of ours was opened with

    def where(self) -> str:
        """The file the read is in and how many packets of it were read, and the files
        not begun."""
        reader = self._reader
        left = len(self.paths) - self._read
        rest = f"{left} file{'s' * (left != 1)} not read"
        if self.current is None:
            return f"before the first file; {rest}"
        name = "stdin" if self.current == "-" else self.current
        read = f"{reader.stats.packets} {reader.counts}" if reader is not None else "0 packets"
        return f"reading {name}, after {read}" + (f"; {rest}" if left else "")

    def __iter__(self) -> Iterator[Frame | None]:
        for path in self.paths:
            if self._stop.is_set():
                return
            self.current = path
            self._read += 1
            self._reader = None
            try:
                reader = open_capture(path, self.prefilter, self.cidrs, self._stop, self.readable)
            except Stopped:
                return
            except CaptureError as exc:
                self.errors.append(str(exc))
                continue
            self._reader = reader
            self.opened += 1
            if reader.counts != "packets":
                self.counts = reader.counts
            log.info("reading %s", path)
            try:
                yield from reader
            except CaptureError as exc:
                self.errors.append(str(exc))  # what was read of it stays read
            finally:
                reader.close()
                self.stats.packets += reader.stats.packets
            if reader.stats.truncated:
                log.warning("%s", reader.stats.note)  # file, byte and packets kept, as scan
            if note := skipped_note(path, reader.stats, reader.packets_read()):
                if reader.packets_read():
                    log.warning("%s", note)
                else:
                    self.errors.append(note)  # nothing readable: a bad file, as scan says
            if reader.stopped:
                return
        self.finished = True
