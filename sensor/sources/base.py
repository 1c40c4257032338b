"""What every capture source is: frames in, counters out.

A source yields ``Frame`` tuples ``(ts_ns, linktype, data)`` (a peer sensor's log:
``PeerRecord``), and ``None`` when a live
reader has caught up with the wire (so the sensor sends a partial batch at once). The
sensor, the publish loop and the commands see every source through ``Source``: the pure
pcap/pcapng reader (``pcapfile``), the libpcap prefilter (``prefilter``) and AF_PACKET
live capture (``live``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

Frame = tuple[int, int, bytes]


@dataclass(frozen=True, slots=True)
class PeerRecord:
    """A name (or a flow start) another sensor already decoded, from one line of its log:
    what ``Sensor.process_record`` matches instead of a frame. ``kind`` is an event kind;
    ``ip_flow`` is a flow start (``name`` empty), matched against the prefixes and the
    DNS attribution like a SYN. ``chain``/``answers``/``ttl``/``path``/``extra`` mean what
    they mean on ``sensor.decode.Sighting``; ``source`` names the log ("suricata-eve")."""

    ts_ns: int
    kind: str
    name: str
    src: str
    sport: int
    dst: str
    dport: int
    transport: str  # "tcp" or "udp"
    source: str
    chain: tuple[str, ...] = ()
    answers: tuple[str, ...] = ()
    ttl: int = 0
    path: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    user_agent: str | None = None  # an HTTP request's: matched by the content signals


LINKTYPE_ETHERNET: Final = 1


class CaptureError(Exception):
    """A capture cannot be read. The message names the file (and offset)."""


class Stopped(Exception):
    """A read that waited for more input (stdin) was asked to stop."""


@dataclass
class ReadStats:
    packets: int = 0
    truncated: bool = False
    note: str = ""
    # packets of link types the decoder does not read, by link type: skipped, not yielded
    skipped: dict[int, int] = field(default_factory=dict)


# names of link types a capture may hold that the decoder does not read (for messages)
LINKTYPE_NAMES: Final = {
    6: "Token Ring",
    10: "FDDI",
    119: "802.11 with Prism header",
    163: "802.11 with AVS header",
    192: "PPI",
    195: "802.15.4",
    220: "USB",
    249: "USB (Linux, mmapped)",
}


def skipped_note(path: str, stats: ReadStats, read: int) -> str:
    """One line naming the link types of a file that were skipped and how many packets
    each; ``read`` is the packets of other link types read (``FileReader.packets_read``):
    0 makes it a bad file. Empty when nothing was skipped."""
    if not stats.skipped:
        return ""
    kinds = ", ".join(
        f"{n} of link type {t}" + (f" ({LINKTYPE_NAMES[t]})" if t in LINKTYPE_NAMES else "")
        for t, n in sorted(stats.skipped.items())
    )
    if not read:
        return f"{path}: nothing readable: every packet ({kinds}) is of a link type kaspwatch does not decode"
    return f"{path}: skipped packets of link types kaspwatch does not decode: {kinds}"


class Source(Protocol):
    """``counts`` says what the sensor's packet count counts for this source ("packets",
    or "packets past the prefilter" when libpcap skips the rest uncounted); ``stats`` has
    a file's cut-off note; ``kernel_drops`` is the packets the kernel lost (0 for files);
    ``stop`` asks a blocking reader to end (a no-op for files)."""

    counts: str
    stats: ReadStats
    live: bool  # a live reader drains what the kernel holds after ``stop``; a file just ends

    def __iter__(self) -> Iterator[Frame | PeerRecord | None]: ...

    def kernel_drops(self) -> int: ...

    def stop(self) -> None: ...


class FileSource(Source, Protocol):
    """A capture file: progress is ``position`` of ``size`` bytes (``size`` 0: unknown)."""

    path: str
    size: int

    @property
    def position(self) -> int: ...

    def close(self) -> None: ...

    def __enter__(self) -> FileSource: ...

    def __exit__(self, *exc: object) -> None: ...


class FileReader:
    """The parts of ``Source`` every capture file has alike."""

    counts = "packets"
    live = False
    stopped = False  # the read ended on ``stop``, not at the end of the file
    stats: ReadStats

    def packets_read(self) -> int:
        """Packets of link types the decoder reads that were read, before any filter;
        0 after a whole file means it held none (``skipped_note``)."""
        return self.stats.packets

    def kernel_drops(self) -> int:
        return 0

    def stop(self) -> None:
        return None
