"""Coverage-guided fuzzing of the decoders and capture readers with atheris (libFuzzer).

    .venv/bin/python fuzz/run.py --seconds 600                 # every target, 600 s each
    .venv/bin/python fuzz/run.py --seconds 60 --target dns     # one target
    .venv/bin/python fuzz/run.py --seconds 5 --corpus tests/corpus --workdir /tmp/kw-fuzz

Each target runs in a worker process of its own (libFuzzer owns the process), seeded from
samples/ and the capture corpus (``--corpus``, default ``$KASPWATCH_CORPUS`` or
``tests/corpus``; missing is fine, samples/ still seeds). New coverage-increasing inputs
are kept under ``--workdir/<target>/corpus`` and reused by the next run; a crash leaves its
input in ``--workdir/<target>/crash-*`` and makes the run exit 1. The summary prints, per
target, the inputs executed, the coverage reached and the crashes found.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TARGET_NAMES = ("dns", "tls", "quic", "http", "pcap", "packet", "identity", "native")
DEFAULT_CORPUS = Path(os.environ.get("KASPWATCH_CORPUS", REPO / "tests" / "corpus"))


@dataclass
class Result:
    target: str
    inputs: int
    coverage: int
    corpus: int
    crashed: bool
    seconds: float
    log: str


def _worker(target: str, seconds: int, workdir: Path, max_len: int) -> None:
    """Runs inside the child: instrument the project's code (and dnspython, which the DNS
    decoder drives), then hand the process to libFuzzer."""
    import atheris

    with atheris.instrument_imports(include=["sensor", "dns", "fuzz"]):
        from fuzz.targets import TARGETS

    harness = TARGETS[target]
    tdir = workdir / target
    argv = [
        sys.argv[0],
        str(tdir / "corpus"),
        str(tdir / "seeds"),
        f"-max_total_time={seconds}",
        f"-max_len={max_len}",
        "-timeout=20",
        "-rss_limit_mb=4096",
        "-print_final_stats=1",
        f"-artifact_prefix={tdir}/",
    ]
    atheris.Setup(argv, harness)
    atheris.Fuzz()


def _prepare(target: str, workdir: Path, seed_dirs: list[Path]) -> None:
    from fuzz.targets import seeds

    tdir = workdir / target
    (tdir / "corpus").mkdir(parents=True, exist_ok=True)
    sdir = tdir / "seeds"
    sdir.mkdir(exist_ok=True)
    for old in sdir.iterdir():
        old.unlink()
    for i, seed in enumerate(seeds(target, seed_dirs)):
        (sdir / f"seed-{i:04d}").write_bytes(seed)


def _stat(log: str, name: str) -> int:
    found = re.findall(rf"stat::{name}:\s+(\d+)", log)
    return int(found[-1]) if found else 0


def run_target(
    target: str, seconds: int, workdir: Path, seed_dirs: list[Path], max_len: int
) -> Result:
    _prepare(target, workdir, seed_dirs)
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else workdir
    capture = shm / f"kaspwatch-fuzz-{target}-{os.getpid()}.pcap"
    start = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            __file__,
            "--worker",
            target,
            "--seconds",
            str(seconds),
            "--workdir",
            str(workdir),
            "--max-len",
            str(max_len),
        ],
        capture_output=True,
        text=True,
        timeout=seconds * 3 + 120,
        check=False,
        env={**os.environ, "KASPWATCH_FUZZ_CAPTURE": str(capture)},
    )
    capture.unlink(missing_ok=True)
    elapsed = time.monotonic() - start
    log = proc.stdout + proc.stderr
    (workdir / target / "last.log").write_text(log)
    cov = re.findall(r"cov: (\d+)", log)
    return Result(
        target=target,
        inputs=_stat(log, "number_of_executed_units"),
        coverage=int(cov[-1]) if cov else 0,
        corpus=len(list((workdir / target / "corpus").iterdir())),
        crashed=proc.returncode != 0,
        seconds=elapsed,
        log=log,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=int, default=60, help="fuzzing time per target")
    ap.add_argument(
        "--target", choices=TARGET_NAMES, action="append", help="repeatable; default all"
    )
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="captures to seed from")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/kaspwatch-fuzz"))
    ap.add_argument("--max-len", type=int, default=8192, help="largest input libFuzzer makes")
    ap.add_argument("--worker", choices=TARGET_NAMES, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        _worker(args.worker, args.seconds, args.workdir, args.max_len)
        return 0
    seed_dirs = [REPO / "samples", args.corpus]
    if not args.corpus.exists():
        print(f"note: capture corpus {args.corpus} not found; seeding from samples/ only")
    results = []
    for target in args.target or TARGET_NAMES:
        res = run_target(target, args.seconds, args.workdir, seed_dirs, args.max_len)
        results.append(res)
        state = "CRASH" if res.crashed else "ok"
        print(
            f"{target:<7} {state:<5} inputs={res.inputs:>10,} cov={res.coverage:>6} "
            f"corpus={res.corpus:>5} time={res.seconds:6.1f}s",
            flush=True,
        )
        if res.crashed:
            tail = "\n".join(res.log.splitlines()[-40:])
            print(f"--- {target} crash (log {args.workdir / target / 'last.log'}):\n{tail}")
    total = sum(r.inputs for r in results)
    crashes = sum(r.crashed for r in results)
    print(f"total inputs={total:,} crashes={crashes} targets={len(results)}")
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
