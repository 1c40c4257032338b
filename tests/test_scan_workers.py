"""``kaspwatch scan --workers N`` reports what one worker reports, order aside: one file
sharded by flow (sensor/shard.py), several files cut into runs with a warm-up
(kaspwatch/cli/scanworkers.py), with and without the libpcap prefilter."""

from __future__ import annotations

import contextlib
import io
import ipaddress
import json
import struct
import subprocess
import sys
from collections.abc import Callable
from itertools import combinations, pairwise
from pathlib import Path

import pytest

from bench.gen_mixed import Endpoint, dns_response, tcp_frame, udp_frame
from bench.hitload import write_pcap
from kaspwatch.cli.scan import scan
from kaspwatch.cli.scanworkers import file_runs, scan_sharded
from sensor.pipeline import Sensor
from sensor.rules.ruleset import Rules, source_from
from sensor.shard import Shard, outer_pair, pair_hash
from sensor.sources import open_capture
from sensor.sources.base import CaptureError
from sensor.sources.prefilter import PrefilteredFile

ROOT = Path(__file__).resolve().parent.parent
CORPUS = sorted(
    [
        *(ROOT / "tests" / "corpus").glob("*.pcap*"),
        *(ROOT / "tests" / "captures").glob("*.pcap"),
        ROOT / "samples" / "sample.pcap",
    ]
)
KASP_ADDR = "203.0.113.77"  # a documentation address: only the DNS answer ties it to Kaspersky


@pytest.fixture(scope="module")
def rules() -> Rules:
    return source_from([], None).load()


Result = tuple[list[str], list[str], list[str]]  # sorted NDJSON lines, warnings, errors


def one_worker(rules: Rules, paths: list[Path], prefilter: bool = True) -> Result:
    out = io.StringIO()
    sensor = Sensor(rules, "t", observations=True)
    warnings, errors = scan([str(p) for p in paths], sensor, "ndjson", out, prefilter)
    return sorted(out.getvalue().splitlines()), warnings, errors


def n_workers(
    rules: Rules, paths: list[Path], n: int, prefilter: bool = True, split: str = "auto"
) -> Result:
    out = io.StringIO()
    sensor = Sensor(rules, "t", observations=True)
    warnings, errors = scan_sharded(
        scan, [str(p) for p in paths], sensor, "ndjson", n, out, prefilter, split=split
    )
    return sorted(out.getvalue().splitlines()), warnings, errors


@pytest.mark.parametrize("prefilter", [True, False])
def test_the_corpus_sharded_by_flow_gives_one_workers_events(rules: Rules, prefilter: bool) -> None:
    """Every worker reads every capture (``split="flows"``) and keeps its share."""
    expected = one_worker(rules, CORPUS, prefilter)
    assert len(expected[0]) > 100  # the corpus has names to find: the comparison means something
    assert n_workers(rules, CORPUS, 3, prefilter, split="flows") == expected
    sample = [ROOT / "samples" / "sample.pcap"]
    assert n_workers(rules, sample, 2, prefilter) == one_worker(rules, sample, prefilter)


def test_the_corpus_as_one_multi_file_set(rules: Rules, tmp_path: Path) -> None:
    """Runs of files with a warm-up; a missing file and a corrupt one (in the corpus) give
    one worker's errors, once each, wherever the cuts fall."""
    paths = [*CORPUS[:10], tmp_path / "missing.pcap", *CORPUS[10:]]
    expected = one_worker(rules, paths)
    assert len(expected[2]) == 2  # the missing file, the corrupt one
    for n in (2, 3, 5):
        assert n_workers(rules, paths, n) == expected, n
    assert n_workers(rules, CORPUS[:2], 3) == one_worker(rules, CORPUS[:2])  # fewer files


def split_pcap(path: Path, parts: int) -> list[Path]:
    """A classic pcap cut into ``parts`` files of consecutive packets (rotation)."""
    data = path.read_bytes()
    head, pos, records = data[:24], 24, []
    while pos < len(data):
        caplen = struct.unpack_from("<I", data, pos + 8)[0]
        records.append(data[pos : pos + 16 + caplen])
        pos += 16 + caplen
    size = -(-len(records) // parts)
    out = []
    for i in range(parts):
        p = path.with_name(f"{path.stem}-{i}.pcap")
        p.write_bytes(head + b"".join(records[i * size : (i + 1) * size]))
        out.append(p)
    return out


def test_a_generated_mix_whole_and_rotated(rules: Rules, tmp_path: Path) -> None:
    path = tmp_path / "mix.pcap"
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gen_mixed.py"), str(path), "--packets", "30000"],
        check=True,
        capture_output=True,
    )
    expected = one_worker(rules, [path])
    kinds = {json.loads(line)["kind"] for line in expected[0]}
    assert {"dns_answer", "tls_sni", "http_host", "quic_sni", "file_magic"} <= kinds
    assert n_workers(rules, [path], 2) == expected
    rotated = split_pcap(path, 4)
    assert one_worker(rules, rotated) == expected  # cut between packets: nothing lost
    assert n_workers(rules, rotated, 2) == expected
    assert n_workers(rules, rotated, 4) == expected


def attribution_frames(answer_to: str, flow_from: str) -> list[bytes]:
    """A DNS answer pointing a Kaspersky name at KASP_ADDR, to ``answer_to``; then a SYN
    from ``flow_from`` to that address: an ``ip_flow`` hit only through the answer."""
    resolver, addr = ipaddress.ip_address("198.51.100.53").packed, ipaddress.ip_address(KASP_ADDR)
    client, other = ipaddress.ip_address(answer_to).packed, ipaddress.ip_address(flow_from).packed
    name = "dnl-01.geo.kaspersky.com"
    answer = dns_response(7, name, 1, [], addr.packed)
    syn = Endpoint(False, other, addr.packed, 40001, 443, False)
    return [
        udp_frame(Endpoint(False, resolver, client, 53, 53000, True), answer),
        tcp_frame(syn, 1, 0, 0x02),
    ]


def test_a_dns_answer_attributes_flows_in_another_workers_share(
    rules: Rules, tmp_path: Path
) -> None:
    def shard(x: str, y: str) -> int:
        return pair_hash(ipaddress.ip_address(x).packed, ipaddress.ip_address(y).packed) % 2

    a = "10.1.0.2"
    # a host whose flow to the address falls to the other worker than the answer
    b = next(
        h for i in range(3, 40) if shard(h := f"10.1.0.{i}", KASP_ADDR) != shard(a, "198.51.100.53")
    )
    frames = attribution_frames(a, b)
    whole, first, second = tmp_path / "w.pcap", tmp_path / "1.pcap", tmp_path / "2.pcap"
    write_pcap(whole, iter(frames))
    write_pcap(first, iter(frames[:1]))
    write_pcap(second, iter(frames[1:]), interval_us=1000)
    expected = one_worker(rules, [whole])
    flows = [json.loads(e) for e in expected[0] if json.loads(e)["kind"] == "ip_flow"]
    assert [(f["src_ip"], f["dst_ip"], f.get("attributed_by")) for f in flows] == [
        (b, KASP_ADDR, "dns")
    ]
    assert n_workers(rules, [whole], 2) == expected
    assert n_workers(rules, [first, second], 2) == one_worker(rules, [first, second])
    assert len(one_worker(rules, [first, second])[0]) == len(expected[0])


def test_libpcaps_shard_filter_agrees_with_python(rules: Rules) -> None:
    """Every frame the prefilter passes reaches, through worker k's BPF clause, every worker
    whose ``owns`` says it is its own; the plain-IP frames no other worker."""
    cidrs = rules.matcher.cidrs()

    def read(path: Path, narrow: Callable[[int], str | None] | None) -> list[tuple[int, bytes]]:
        frames = []
        # a corrupt record ends the file alike with and without the clause
        with (
            open_capture(str(path), True, cidrs, None, narrow=narrow) as cap,
            contextlib.suppress(CaptureError),
        ):
            for f in cap:
                frames.append((f[0], f[2]))
        return frames

    checked = 0
    for path in CORPUS:
        frames = read(path, None)
        linktype = frames and read_linktype(path)
        if not linktype:
            continue
        got = [set(read(path, Shard(k, 3).bpf)) for k in range(3)]
        checked += len(frames)
        for ts, data in frames:
            pair = outer_pair(linktype, data)
            if pair is None:
                continue  # decided on the decoded packet: every worker gets it
            owner = pair_hash(*pair) % 3
            assert (ts, data) in got[owner], path.name
    assert checked > 1000


def read_linktype(path: Path) -> int | None:
    """The link type libpcap reads ``path`` with, or None when it has no prefilter."""
    with open_capture(str(path), True) as cap:
        return cap.linktype if isinstance(cap, PrefilteredFile) else None


def test_file_runs_are_contiguous_warmed_by_the_file_before_and_balanced(
    tmp_path: Path,
) -> None:
    sizes = [10, 10, 10, 10, 40, 10, 10]
    paths = []
    for i, size in enumerate(sizes):
        p = tmp_path / f"{i}.pcap"
        p.write_bytes(b"x" * size)
        paths.append(str(p))

    def worst(runs: list[tuple[str | None, list[str]]]) -> int:
        def size(p: str | None) -> int:
            return 0 if p is None else sizes[paths.index(p)]

        return max(size(warm) + sum(map(size, run)) for warm, run in runs)

    for workers in (1, 2, 3, 7):
        runs = file_runs(paths, workers)
        assert len(runs) <= workers
        assert [p for _, run in runs for p in run] == paths  # contiguous, in order, all
        assert [w for w, _ in runs] == [None] + [run[-1] for _, run in runs[:-1]]
        # no cut into at most ``workers`` runs does better (all of them, tried)
        best = min(
            worst([(paths[a - 1] if a else None, paths[a:b]) for a, b in pairwise(bounds)])
            for k in range(workers)
            for cut in combinations(range(1, len(paths)), k)
            for bounds in [(0, *cut, len(paths))]
        )
        assert worst(runs) == best, workers


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["SAMPLE", "--workers", "-1"], "--workers N"),
        (["SAMPLE", "-", "--workers", "2"], "stdin"),
        (["SAMPLE", "--workers", "2", "--eve", "SAMPLE"], "--eve"),
    ],
)
def test_bad_worker_options_are_one_line(argv: list[str], says: str) -> None:
    sample = str(ROOT / "samples" / "sample.pcap")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kaspwatch",
            "scan",
            *(sample if a == "SAMPLE" else a for a in argv),
        ],
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2
    assert says in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.splitlines()) == 1


def test_cli_workers_zero_is_one_per_core_and_table_works() -> None:
    sample = str(ROOT / "samples" / "sample.pcap")
    outs = [
        subprocess.run(
            [sys.executable, "-m", "kaspwatch", "scan", "--format", "table", *w, sample],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for w in ([], ["--workers", "0"], ["--workers", "3"])
    ]
    head = [o.splitlines()[0] for o in outs]
    assert head[0].startswith("TS") and head.count(head[0]) == 3
    assert [sorted(o.splitlines()[1:]) for o in outs[1:]] == [sorted(outs[0].splitlines()[1:])] * 2
