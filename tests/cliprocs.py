"""The real ``kaspwatch`` CLI as child processes of a test: a clean environment, each
process's output in files, and every process stopped (SIGTERM, then SIGKILL) at the end.

Import the fixture into a test module with ``procs = cliprocs.procs``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


def cli_env(tmp: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "KASPWATCH_STATE_DIR": str(tmp)}
    for var in ("KASPWATCH_CONFIG", "KASPWATCH_BUS", "KASPWATCH_SENSOR"):
        env.pop(var, None)  # only what the test passes on the command line
    return env


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    out: Path
    err: Path

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")[-3000:]

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def stopped(self) -> bool:
        """Stopped by a signal (SIGSTOP: state T in /proc/PID/stat)."""
        try:
            stat = Path(f"/proc/{self.popen.pid}/stat").read_text()
        except OSError:
            return False
        return stat.rpartition(")")[2].split()[0] == "T"


class Procs:
    """Every process a test starts; all stopped (SIGTERM, then SIGKILL) at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: list[Proc] = []

    def start(
        self,
        name: str,
        args: list[str],
        stdin: int | None = None,
        env: dict[str, str] | None = None,
    ) -> Proc:
        """``env``: variables added to the clean environment (a test's fault hook)."""
        n = len(self.started)
        out, err = self.tmp / f"{n}-{name}.out", self.tmp / f"{n}-{name}.err"
        full = {**cli_env(self.tmp), **(env or {})}
        with out.open("wb") as o, err.open("wb") as e:
            popen = subprocess.Popen(args, stdin=stdin, stdout=o, stderr=e, env=full)
        proc = Proc(name, popen, out, err)
        self.started.append(proc)
        return proc

    @staticmethod
    def terminate(proc: Proc, timeout: float = 20) -> int:
        if proc.popen.poll() is None:
            proc.popen.send_signal(signal.SIGTERM)
            proc.popen.send_signal(signal.SIGCONT)  # a stopped process acts on it now
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait(10)
        return proc.popen.returncode

    def stop_all(self) -> None:
        for proc in self.started:
            self.terminate(proc, timeout=10)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    ps = Procs(tmp_path)
    try:
        yield ps
    finally:
        ps.stop_all()


async def wait_for(
    check: Callable[[], bool], timeout: float, what: str, proc: Proc | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and proc.popen.poll() is not None:
            pytest.fail(
                f"{proc.name} exited {proc.popen.returncode} before {what}:\n{proc.stderr()}"
            )
        await asyncio.sleep(0.05)
    pytest.fail(
        f"timed out after {timeout} s waiting for {what}"
        + (f"\n{proc.name} stderr:\n{proc.stderr()}" if proc is not None else "")
    )
