"""Peer sensors' logs as sources: Suricata EVE and Zeek, from files, stdin, a growing file
(``tail -F``) or a Kafka topic.

A ``PeerSource`` is a ``Source`` that yields ``PeerRecord`` (names already decoded by the
peer) instead of frames; ``Sensor.process_record`` takes them from there. A line that
cannot be read is counted and named (file:line) in a warning, up to ``MAX_WARNINGS`` a
source, and never stops the source.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO, Final

from kaspwatch.bus.security import KafkaSecurity
from sensor.peers.eve import PeerLineError, eve_records
from sensor.peers.follow import Follower, Line, PipeFollower
from sensor.peers.kafka import KafkaLines
from sensor.peers.zeek import ZeekLog, log_name
from sensor.sources.base import CaptureError, PeerRecord, ReadStats

log = logging.getLogger("kaspwatch")
MAX_WARNINGS: Final = 10
FORMATS: Final = ("eve", "zeek")


class PeerSource:
    """One peer log (file, ``-``, followed file or Kafka topic) as a ``Source``."""

    counts = "records"

    def __init__(
        self,
        path: str,
        fmt: str,
        lines: Iterable[Line | None],
        live: bool = False,
        stopper: Callable[[], None] | None = None,
    ) -> None:
        self.path = path
        self.fmt = fmt
        self.live = live
        self.stats = ReadStats()
        self.lines = 0
        self.bad = 0
        self.first_bad = ""
        self._lines = lines
        self._stopper = stopper

    def kernel_drops(self) -> int:
        return 0

    def stop(self) -> None:
        if self._stopper is not None:
            self._stopper()

    def __iter__(self) -> Iterator[PeerRecord | None]:
        zeek: dict[str, ZeekLog] = {}
        for item in self._lines:
            if item is None:
                yield None
                continue
            where, lineno, raw = item
            self.lines += 1
            try:
                text = raw.decode("utf-8", "replace")
                if self.fmt == "eve":
                    if not text.strip():
                        continue
                    try:
                        doc = json.loads(text)
                    except json.JSONDecodeError as exc:
                        raise PeerLineError(f"not JSON ({exc.msg})") from None
                    records = eve_records(doc)
                else:
                    reader = zeek.get(where)
                    if reader is None:
                        reader = zeek[where] = ZeekLog(where)
                    records = reader.records(text)
            except PeerLineError as exc:
                self._bad(where, lineno, str(exc))
                continue
            self.stats.packets += len(records)
            yield from records
        # like a cut-off capture: the end of the run says what was skipped, and where
        self.stats.truncated = self.bad > 0
        self.stats.note = self.summary()

    def _bad(self, where: str, lineno: int, why: str) -> None:
        self.bad += 1
        if self.bad == 1:
            self.first_bad = f"{where}:{lineno}"
        if self.bad <= MAX_WARNINGS:
            log.warning("%s:%d: %s; line skipped", where, lineno, why)
        elif self.bad == MAX_WARNINGS + 1:
            log.warning("%s: more bad lines; only counting them from here", where)

    def summary(self) -> str:
        """One line for the end of the run: records, and bad lines if any."""
        text = f"{self.path}: {self.lines} lines, {self.stats.packets} records"
        if self.bad:
            text += f", {self.bad} bad lines skipped (first at {self.first_bad})"
        return text


class MergedPeers:
    """Several followed sources as one: the publish loop reads its sources one after the
    other, and a followed one never ends. Round robin, taking what each has ready (up to
    ``BURST`` records), and one ``sleep(poll_s)`` when none had anything."""

    counts = "records"
    live = True
    BURST: Final = 512

    def __init__(
        self,
        sources: list[PeerSource],
        poll_s: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.sources = sources
        self.poll_s = poll_s
        self.sleep = sleep
        self.stats = ReadStats()
        self.path = ", ".join(s.path for s in sources)

    def kernel_drops(self) -> int:
        return 0

    @property
    def bad(self) -> int:
        return sum(s.bad for s in self.sources)

    def stop(self) -> None:
        for source in self.sources:
            source.stop()

    def __iter__(self) -> Iterator[PeerRecord | None]:
        running = [(s, iter(s)) for s in self.sources]
        while running:
            idle = True
            for entry in list(running):
                for _ in range(self.BURST):
                    try:
                        item = next(entry[1])
                    except StopIteration:
                        running.remove(entry)
                        break
                    if item is None:
                        break
                    idle = False
                    yield item
            yield None
            if idle and running:
                self.sleep(self.poll_s)
        notes = [s.stats.note for s in self.sources if s.stats.truncated]
        self.stats.truncated = bool(notes)
        self.stats.note = "; ".join(notes)


def _open(path: str) -> BinaryIO:
    """A file (gzip'd or not, by its first bytes) or stdin; CaptureError naming it."""
    if path == "-":
        stream: BinaryIO = sys.stdin.buffer
    else:
        try:
            stream = open(path, "rb")  # noqa: SIM115 - closed by _file_lines
        except FileNotFoundError:
            raise CaptureError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise CaptureError(f"{path}: is a directory (only --zeek takes one)") from None
        except OSError as exc:
            raise CaptureError(f"{path}: cannot open: {exc.strerror}") from None
    peek = stream.peek(2)[:2] if hasattr(stream, "peek") else b""
    if peek == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=stream)  # type: ignore[return-value]
    return stream


def _file_lines(path: str, stream: BinaryIO) -> Iterator[Line | None]:
    name = "stdin" if path == "-" else path
    try:
        for lineno, raw in enumerate(stream, 1):
            yield name, lineno, raw
    except (OSError, EOFError) as exc:  # gzip cut short or corrupt
        log.warning("%s: cut off (%s); kept what was read", name, exc)
    finally:
        if path != "-":
            stream.close()


def zeek_files(path: str) -> list[str]:
    """A Zeek log directory -> its logs this reads (dns first, so DNS attribution is in
    place before conn's flows), or the path itself."""
    if not os.path.isdir(path):
        return [path]
    found = [
        os.path.join(path, f)
        for f in sorted(os.listdir(path))
        if log_name(f) is not None and f.endswith((".log", ".log.gz", ".json", ".json.gz"))
    ]
    if not found:
        raise CaptureError(f"{path}: no Zeek logs (dns.log, ssl.log, conn.log...) in it")
    order = {"dns": 0, "conn": 2}
    return sorted(found, key=lambda f: order.get(log_name(f) or "", 1))


def open_peer(
    path: str,
    fmt: str,
    follow: bool = False,
    group: str | None = None,
    security: KafkaSecurity | None = None,
    poll_s: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
) -> list[PeerSource]:
    """The sources for one ``--eve``/``--zeek`` argument (a Zeek directory gives one per
    log). A missing file is a CaptureError naming it, raised here, before anything runs."""
    if path.startswith("kafka://"):
        topic = KafkaLines(path, follow, group, security)
        return [PeerSource(path, fmt, topic, live=follow, stopper=topic.stop)]
    if follow and path == "-":
        pipe = PipeFollower(sys.stdin.fileno(), poll_s)
        return [PeerSource(path, fmt, pipe, live=True, stopper=pipe.stop)]
    if follow:
        if not os.path.isfile(path):
            raise CaptureError(
                f"{path}: no such file (--follow waits across rotation, not at start)"
            )
        tail = Follower(path, poll_s, sleep)  # merged with others: sleep=no-op, see open_peers
        return [PeerSource(path, fmt, tail, live=True, stopper=tail.stop)]
    paths = zeek_files(path) if fmt == "zeek" else [path]
    return [PeerSource(p, fmt, _file_lines(p, _open(p))) for p in paths]


def open_peers(
    specs: list[tuple[str, str]],
    follow: bool = False,
    group: str | None = None,
    security: KafkaSecurity | None = None,
    poll_s: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
) -> list[PeerSource | MergedPeers]:
    """Every ``(format, path)`` opened up front. Followed, they are merged into one source
    that sleeps only when all are idle (read one after the other, the first would be read
    for ever and the rest never)."""
    if not follow:
        return [s for fmt, p in specs for s in open_peer(p, fmt, group=group, security=security)]

    def no_wait(_s: float) -> None:
        return None

    followed = [
        s for fmt, p in specs for s in open_peer(p, fmt, True, group, security, poll_s, no_wait)
    ]
    return [MergedPeers(followed, poll_s, sleep)]
