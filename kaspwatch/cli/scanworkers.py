"""``kaspwatch scan --workers N``: N forked processes; the events are one worker's events
(order aside: the output merges the workers' by time). Two ways to split the work:

**Several files, at least N** (a rotated archive): each worker takes a contiguous run of
the files, in the order given, runs balanced by size, and first reads the file before its
run without reporting anything (``warm-up``): flows and DNS answers that cross a rotation
boundary then leave the same state as in one worker, and every file is read by one worker
only (twice for the N - 1 files before a cut), so the work scales with the cores. What
one worker would carry across more than one whole file (a DNS attribution older than the
previous file, up to its TTL; a TCP stream idle over a whole file) is the only difference.

**One file, or fewer files than workers**: every worker reads every file and keeps its
share of the flows (``sensor.shard``: a symmetric hash of the outer address pair, applied
by libpcap's filter so the other shares stay in C); DNS answers go to every worker for
attribution. One sensor state per flow, so the same events; but reading is repeated in
every worker (≈ 0.35 CPU s per worker for the 1 M-packet mix), which bounds the speed-up.
A Python reader handing frames out would be a serial stage of about the same cost.
"""

from __future__ import annotations

import heapq
import json
import logging
import multiprocessing
import os
import resource
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from sensor.shard import Shard

if TYPE_CHECKING:
    from collections.abc import Callable

    from sensor.pipeline import Sensor

    # kaspwatch.cli.scan.scan, handed in (that module imports this one)
    ScanFiles = Callable[..., tuple[list[str], list[str]]]

log = logging.getLogger(__name__)

# what a forked worker needs (set by the parent just before the fork, inherited as is)
_JOB: dict[str, Any] = {}


def _worker(index: int) -> tuple[list[str], list[str], float]:
    """(warnings, errors, CPU seconds this worker used)."""
    warnings, errors = _scan_share(index)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return warnings, errors, usage.ru_utime + usage.ru_stime


def _scan_share(index: int) -> tuple[list[str], list[str]]:
    sensor: Sensor = _JOB["sensor"]
    scan: ScanFiles = _JOB["scan"]
    prefilter: bool = _JOB["prefilter"]
    runs: list[tuple[str | None, list[str]]] | None = _JOB["runs"]
    # a file's notes ("read without the prefilter: gzip") once, from the worker reporting it
    sources = logging.getLogger("sensor.sources")
    if runs is None:
        sensor.shard = Shard(index, _JOB["workers"])
        paths = _JOB["paths"]
        if index:
            sources.setLevel(logging.WARNING)
    else:
        warm, paths = runs[index]
        if warm is not None:  # the state one worker would bring into this run's first file
            level = sources.level
            sources.setLevel(logging.WARNING)
            with open(os.devnull, "w") as nowhere:
                scan([warm], sensor, "ndjson", nowhere, prefilter, progress_on_tty=False)
            sources.setLevel(level)
    out_path = Path(_JOB["dir"]) / f"worker-{index}.ndjson"
    with out_path.open("w", encoding="utf-8") as out:
        return scan(paths, sensor, "ndjson", out, prefilter, progress_on_tty=False)


def file_runs(paths: list[str], workers: int) -> list[tuple[str | None, list[str]]]:
    """``paths`` cut into at most ``workers`` contiguous runs, each with the file before it
    (None for the first run), so that the largest run, its warm-up counted, is as small as
    it can be (sizes in bytes stand for work)."""
    sizes = [max(os.path.getsize(p), 1) if os.path.isfile(p) else 1 for p in paths]
    lo, hi = max(sizes), 2 * sum(sizes)  # a limit every cut meets: hi
    while lo < hi:  # the least limit the greedy cut meets with at most ``workers`` runs
        mid = (lo + hi) // 2
        cuts = _cut(sizes, mid)
        if cuts is not None and len(cuts) <= workers:
            hi = mid
        else:
            lo = mid + 1
    cuts = _cut(sizes, lo) or [(0, len(paths))]
    return [(paths[a - 1] if a else None, paths[a:b]) for a, b in cuts]


def _cut(sizes: list[int], limit: int) -> list[tuple[int, int]] | None:
    """Runs (start, end) filled in order up to ``limit`` each, a run's warm-up (the file
    before it) counted; None when one file and its warm-up exceed it."""
    runs: list[tuple[int, int]] = []
    start, cost = 0, 0
    for i, size in enumerate(sizes):
        if i > start and cost + size > limit:
            runs.append((start, i))
            start, cost = i, sizes[i - 1]
        cost += size
        if cost > limit:
            return None
    runs.append((start, len(sizes)))
    return runs


def _ts(line: str) -> str:
    return str(json.loads(line)["ts"])


def _row(ev: dict[str, Any]) -> tuple[str, ...]:
    """``kaspwatch.cli.scan.format_row`` of an event read back from NDJSON."""
    ind = ev.get("indicator") or {}
    query = ev.get("query")
    name = ev["name"] if not query else f"{ev['name']} (asked {query})"
    return (
        ev["ts"],
        ev["kind"],
        name,
        f"{ev['src_ip']}:{ev['src_port']}",
        f"{ev['dst_ip']}:{ev['dst_port']}",
        ind.get("id", "-"),
        ind.get("category", "-"),
        ind.get("severity", "-"),
    )


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def scan_sharded(
    scan: ScanFiles,
    paths: list[str],
    sensor: Sensor,
    fmt: str,
    workers: int,
    out: TextIO | None = None,
    prefilter: bool = True,
    columns: tuple[str, ...] = (),
    split: str = "auto",
) -> tuple[list[str], list[str]]:
    """``scan`` of ``paths`` by ``workers`` forked processes; (warnings, errors), each
    once (every worker meets a missing or truncated file). ``columns``: of the table.
    ``split``: ``files`` (runs of files), ``flows`` (every worker reads every file), or
    ``auto``: files when there are at least as many as workers."""
    out = out or sys.stdout
    with tempfile.TemporaryDirectory(prefix="kaspwatch-scan-") as tmp:
        by_files = split == "files" or (split == "auto" and len(paths) >= workers)
        runs = file_runs(paths, workers) if by_files else None
        workers = len(runs) if runs is not None else workers
        _JOB.update(
            sensor=sensor,
            workers=workers,
            paths=paths,
            dir=tmp,
            prefilter=prefilter,
            runs=runs,
            scan=scan,
        )
        try:
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                results = pool.map(_worker, range(workers))
        finally:
            _JOB.clear()
        files = [(Path(tmp) / f"worker-{i}.ndjson").open(encoding="utf-8") for i in range(workers)]
        try:
            merged = heapq.merge(*files, key=_ts)
            if fmt == "table":
                from kaspwatch.table import print_table

                print_table([_row(json.loads(line)) for line in merged], out, columns)
            else:
                out.writelines(merged)
        finally:
            for fh in files:
                fh.close()
    out.flush()
    # the critical path on idle cores is the parent's share plus the busiest worker's:
    # bench/scan_bench.py reads these lines (-v) to judge the speed-up on a loaded machine
    for index, (_, _, cpu) in enumerate(results):
        log.debug("scan worker %d of %d: CPU %.3f s", index, workers, cpu)
    warnings = _unique([w for ws, _, _ in results for w in ws])
    errors = _unique([e for _, es, _ in results for e in es])
    return warnings, errors
