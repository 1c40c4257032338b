"""``kaspwatch scan``: offline analysis of captures for incident responders."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import TextIO

from kaspwatch.cli.capture import add_peer_options
from kaspwatch.cli.options import add_sensor_options, build_sensor
from kaspwatch.event import Event
from kaspwatch.table import print_table
from sensor.decode.packet import LINKTYPES
from sensor.peers import open_peer
from sensor.pipeline import Sensor
from sensor.sources import open_capture
from sensor.sources.base import CaptureError, FileSource, skipped_note

log = logging.getLogger(__name__)

TABLE_COLUMNS = ("ts", "kind", "name", "src", "dst", "indicator", "category", "severity")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "pcap", nargs="*", metavar="PCAP", help="pcap/pcapng file(s), gzip ok, - for stdin"
    )
    add_peer_options(p)
    p.add_argument(
        "--observations", action="store_true", help="also print names that matched nothing"
    )
    p.add_argument("--format", choices=("ndjson", "table"), default="ndjson")
    p.add_argument(
        "--no-prefilter",
        action="store_true",
        help="run every packet through Python (the reference path) instead of letting "
        "libpcap drop, in C, packets that cannot carry a name (sensor/sources/prefilter.py)",
    )
    add_sensor_options(p)


def run(args: argparse.Namespace) -> int:
    if not (args.pcap or args.eve or args.zeek):
        print("kaspwatch scan: error: give capture files, --eve or --zeek", file=sys.stderr)
        return 2
    sensor, _ = build_sensor(args, observations=args.observations)
    peers = [("eve", p) for p in args.eve or []] + [("zeek", p) for p in args.zeek or []]
    warnings, errors = scan(
        args.pcap, sensor, args.format, prefilter=not args.no_prefilter, peers=peers
    )
    for warning in warnings:
        log.warning("%s", warning)
    for error in errors:
        print(f"kaspwatch: error: {error}", file=sys.stderr)
    return 2 if errors else 0


class Progress:
    """Packets, packets/s and percent of the file on stderr, on a terminal only."""

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self._last = 0.0

    def update(self, cap: FileSource, packets: int, started: float, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not final and now - self._last < 0.5):
            return
        self._last = now
        rate = packets / max(now - started, 1e-6)
        pct = f"{100 * cap.position / cap.size:5.1f}%" if cap.size else "  -  "
        end = "\n" if final else ""
        self.stream.write(
            f"\r{cap.path}: {packets} {cap.counts}, {rate:,.0f} packets/s, {pct}{end}"
        )
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


def _wifi_note(path: str, before: dict[str, int], after: dict[str, int]) -> str:
    """The 802.11 data frames of one file the decoder could not read, if any."""
    skipped = {k: n - before.get(k, 0) for k, n in after.items() if n > before.get(k, 0)}
    if not skipped:
        return ""
    why = {"protected": "encrypted (no keys)", "a-msdu": "A-MSDU aggregates"}
    parts = ", ".join(f"{n} {why.get(k, k)}" for k, n in sorted(skipped.items()))
    return f"{path}: 802.11 data frames not read: {parts}"


def scan(
    paths: list[str],
    sensor: Sensor,
    fmt: str,
    out: TextIO | None = None,
    prefilter: bool = True,
    peers: list[tuple[str, str]] | None = None,
) -> tuple[list[str], list[str]]:
    """Scan every capture in turn; return (warnings, errors).

    With ``prefilter`` (the default) files are read through libpcap with a BPF filter
    (``sensor.sources.prefilter``) so only packets that can carry a name or start a watched flow
    reach Python. A file that cannot be read
    (or breaks off corrupt) is an error naming it; the scan goes on with the next file
    and keeps every event already printed. ``peers``: (``eve`` | ``zeek``, path or
    ``kafka://HOST:PORT/TOPIC``) read after the captures, through the same matcher; their
    bad lines are warnings (file:line), a missing one an error.
    """
    out = out or sys.stdout
    progress = Progress(sys.stderr, sys.stderr.isatty())
    warnings: list[str] = []
    errors: list[str] = []
    rows: list[tuple[str, ...]] = []

    def emit(ev: Event) -> None:
        if fmt == "table":
            rows.append(format_row(ev))
        else:
            out.write(ev.to_json().decode() + "\n")

    for path in paths:
        try:
            cidrs = sensor.rules.matcher.cidrs()
            with open_capture(path, prefilter, cidrs, readable=LINKTYPES) as cap:
                wifi_before = dict(sensor.decoder.wifi_skipped)
                started = time.monotonic()
                n = 0
                for frame in cap:
                    n += 1
                    for ev in sensor.process_frame(*frame):
                        emit(ev)
                    if not n & 0x3FFF:
                        progress.update(cap, n, started)
                progress.update(cap, n, started, final=True)
                # libpcap drops the rest in C without counting them (savefiles have no
                # pcap_stats); bench/scan_bench.py reports the share skipped
                log.debug("%s: %d %s", path, n, cap.counts)
                read = cap.packets_read()
                skipped = skipped_note(path, cap.stats, read)
                if skipped:  # nothing readable is a bad file, some unreadable a warning
                    (warnings if read else errors).append(skipped)
                if cap.stats.truncated:
                    warnings.append(cap.stats.note)
                elif n == 0 and cap.counts == "packets" and not skipped:
                    # past a prefilter, 0 is no news
                    warnings.append(f"{path}: capture holds no packets")
                if note := _wifi_note(path, wifi_before, sensor.decoder.wifi_skipped):
                    warnings.append(note)
        except CaptureError as exc:
            errors.append(str(exc))
    for fmt_name, spec in peers or []:
        try:
            for source in open_peer(spec, fmt_name):
                for record in source:
                    if record is not None:
                        for ev in sensor.process_record(record):
                            emit(ev)
                if source.bad:
                    warnings.append(source.summary())
                else:
                    log.debug("%s", source.summary())
        except CaptureError as exc:
            errors.append(str(exc))
    if fmt == "table":
        print_table(rows, out, TABLE_COLUMNS)
    out.flush()
    return warnings, errors
