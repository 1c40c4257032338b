"""``kaspwatch scan``: offline analysis of captures for incident responders."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from typing import TextIO

from kaspwatch.event import Event
from sensor.capture import CaptureError, CaptureFile
from sensor.pipeline import Sensor
from sensor.prefilter import PrefilteredFile, open_capture

Reader = CaptureFile | PrefilteredFile
log = logging.getLogger(__name__)

TABLE_COLUMNS = ("ts", "kind", "name", "src", "dst", "indicator", "category", "severity")


class Progress:
    """Packets, packets/s and percent of the file on stderr, on a terminal only."""

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self._last = 0.0

    def update(self, cap: Reader, packets: int, started: float, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not final and now - self._last < 0.5):
            return
        self._last = now
        rate = packets / max(now - started, 1e-6)
        pct = f"{100 * cap.position / cap.size:5.1f}%" if cap.size else "  -  "
        end = "\n" if final else ""
        what = "packets past the prefilter" if isinstance(cap, PrefilteredFile) else "packets"
        self.stream.write(f"\r{cap.path}: {packets} {what}, {rate:,.0f} packets/s, {pct}{end}")
        self.stream.flush()


def format_row(ev: Event) -> tuple[str, ...]:
    ind = ev.indicator
    name = ev.name if not ev.query else f"{ev.name} (asked {ev.query})"
    return (
        ev.ts,
        ev.kind,
        name,
        f"{ev.src_ip}:{ev.src_port}",
        f"{ev.dst_ip}:{ev.dst_port}",
        ind.id if ind else "-",
        ind.category if ind else "-",
        ind.severity if ind else "-",
    )


def print_table(rows: Sequence[tuple[str, ...]], out: TextIO, columns: tuple[str, ...]) -> None:
    widths = [
        max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)
    ]
    out.write(
        "  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip() + "\n"
    )
    for r in rows:
        out.write("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() + "\n")


def scan(
    paths: list[str],
    sensor: Sensor,
    fmt: str,
    out: TextIO | None = None,
    prefilter: bool = True,
) -> tuple[list[str], list[str]]:
    """Scan every capture in turn; return (warnings, errors).

    With ``prefilter`` (the default) files are read through libpcap with a BPF filter
    (``sensor.prefilter``) so only packets that can carry a name or start a watched flow
    reach Python. A file that cannot be read
    (or breaks off corrupt) is an error naming it; the scan goes on with the next file
    and keeps every event already printed.
    """
    out = out or sys.stdout
    progress = Progress(sys.stderr, sys.stderr.isatty())
    warnings: list[str] = []
    errors: list[str] = []
    rows: list[tuple[str, ...]] = []
    for path in paths:
        try:
            with open_capture(path, prefilter, sensor.rules.matcher.cidrs()) as cap:
                started = time.monotonic()
                n = 0
                for frame in cap:
                    n += 1
                    for ev in sensor.process_frame(*frame):
                        if fmt == "table":
                            rows.append(format_row(ev))
                        else:
                            out.write(ev.to_json().decode() + "\n")
                    if not n & 0x3FFF:
                        progress.update(cap, n, started)
                progress.update(cap, n, started, final=True)
                if isinstance(cap, PrefilteredFile):
                    # libpcap drops the rest in C without counting them (savefiles have
                    # no pcap_stats); bench/scan_bench.py reports the share skipped
                    log.debug("%s: %d packets passed the prefilter", path, n)
                if cap.stats.truncated:
                    warnings.append(cap.stats.note)
                elif n == 0 and not isinstance(cap, PrefilteredFile):
                    warnings.append(f"{path}: capture holds no packets")
        except CaptureError as exc:
            errors.append(str(exc))
    if fmt == "table":
        print_table(rows, out, TABLE_COLUMNS)
    out.flush()
    return warnings, errors
