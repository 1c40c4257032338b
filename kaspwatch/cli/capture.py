"""Where ``sense`` and ``run`` read packets from: capture files or live interfaces; or a
peer sensor's logs (``--eve``, ``--zeek``)."""

from __future__ import annotations

import argparse
import logging
import sys

from kaspwatch.cli.options import add_peer_options
from kaspwatch.cli.process import Stopper, drop_privileges
from sensor.decode.packet import LINKTYPES
from sensor.peers import open_peers
from sensor.pipeline import Sensor
from sensor.sources import CaptureFiles
from sensor.sources.base import CaptureError, Source
from sensor.sources.live import MergedLive, default_filter, open_live

log = logging.getLogger("kaspwatch")


def add_source_options(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()  # one of these or --eve/--zeek: open_sources
    src.add_argument(
        "--pcap", metavar="FILE", nargs="+", help="pcap/pcapng file(s), gzip ok, - for stdin"
    )
    src.add_argument("--interface", metavar="IF", nargs="+", help="live capture interface(s)")
    add_peer_options(p)
    p.add_argument(
        "--follow",
        action="store_true",
        help="--eve/--zeek FILE: keep reading as the file grows, across rotation (tail -F)",
    )
    p.add_argument(
        "--user",
        metavar="NAME",
        help="live capture: drop root for this user once the capture sockets are open",
    )
    p.add_argument(
        "--fanout",
        type=int,
        metavar="GROUP",
        help="live capture: join PACKET_FANOUT group GROUP (0-65535, flow hash) so several "
        "sensor processes on one interface share its flows, each flow to one process",
    )
    p.add_argument(
        "--bpf",
        metavar="EXPR",
        help="live capture: kernel filter (default: the file prefilter's, packets that can "
        "carry a name or start a flow; see sensor/sources/prefilter.py); --bpf '' keeps every "
        "packet",
    )


def _open_peers(args: argparse.Namespace) -> list[Source]:
    """--eve/--zeek: every file opened (a missing one named) before anything runs."""
    specs = [("eve", p) for p in args.eve or []] + [("zeek", p) for p in args.zeek or []]
    # a topic has no end: the sensor follows it (scan reads it to its end instead)
    follow = args.follow or any(p.startswith("kafka://") for _, p in specs)
    sources: list[Source] = list(
        open_peers(
            specs,
            follow=follow,
            group=f"kaspwatch-peers-{args.sensor}",
            security=getattr(args, "kafka", None),
        )
    )
    log.info("reading %s%s", ", ".join(p for _, p in specs), " (following)" if follow else "")
    return sources


def open_sources(args: argparse.Namespace, sensor: Sensor) -> list[Source]:
    """Live interfaces are opened here, so a bad one fails before anything runs. Files
    are opened one at a time as they are read (``CaptureFiles``): a bad one costs only
    itself, ``finish`` names it at the end. Files go through the libpcap prefilter (as
    with ``scan``), its watched networks taken from the rules loaded at start: a reload's
    new networks still match every flow start (SYNs and UDP always pass), only flows
    already under way are not widened."""
    if args.eve or args.zeek:
        if args.pcap or args.interface:
            raise CaptureError("give --pcap, --interface or --eve/--zeek, not several")
        return _open_peers(args)
    if not (args.pcap or args.interface):
        raise CaptureError("give --pcap FILE…, --interface IF… or --eve/--zeek FILE…")
    if args.pcap:
        cidrs = sensor.rules.matcher.cidrs()
        return [CaptureFiles(args.pcap, prefilter=True, cidrs=cidrs, readable=LINKTYPES)]
    bpf = default_filter(sensor.rules.matcher.cidrs()) if args.bpf is None else args.bpf
    if args.fanout is not None and len(args.interface) > 1:
        raise CaptureError("--fanout takes one --interface: run one fanout group per interface")
    live = MergedLive([open_live(i, bpf or None, args.fanout, LINKTYPES) for i in args.interface])
    if args.user:
        drop_privileges(args.user)
    log.info(
        "capturing on %s (%s%s)",
        ", ".join(args.interface),
        "filtered" if bpf else "unfiltered",
        "" if args.fanout is None else f", fanout group {args.fanout}",
    )
    return [live]


def counts_word(sources: list[Source]) -> str:
    """What the sensor's packet count counts: libpcap skips the rest of a file uncounted."""
    words = {s.counts for s in sources}
    if "records" in words:
        return "packets and peer records" if len(words) > 1 else "peer records"
    return "packets past the prefilter" if "packets past the prefilter" in words else "packets"


def nothing_read(sources: list[Source]) -> bool:
    """No capture file could even be opened: the error lines say all there is."""
    return any(isinstance(s, CaptureFiles) and not s.opened and s.finished for s in sources)


def finish(sources: list[Source], stopper: Stopper) -> int:
    """After the summary: each capture file that could not be read (or broke off), one
    line each, and where a signal cut the reading short. The exit status: 128 + the
    signal when files were left unread, 2 when a file was bad, else 0."""
    status = 0
    for src in sources:
        if not isinstance(src, CaptureFiles):
            continue  # a live capture ends on a signal: that is how it is stopped
        for error in src.errors:
            print(f"kaspwatch: error: {error}", file=sys.stderr)
            status = 2
        if not src.finished and stopper.signal is not None:
            print(f"kaspwatch: interrupted: {src.where()}", file=sys.stderr)
            return 128 + stopper.signal
    return status
