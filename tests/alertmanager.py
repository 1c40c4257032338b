"""A real Prometheus Alertmanager on loopback for tests (Debian ``prometheus-alertmanager``).

``running_alertmanager(tmp)`` starts one with a null receiver, no clustering (no gossip)
and storage in ``tmp``, waits for ``/-/ready`` and yields its base URL. A missing binary
fails the test with a message saying how to install it; it never skips.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.testenv import free_port

BINARY = "prometheus-alertmanager"
CONFIG = 'route: {receiver: "null"}\nreceivers: [{name: "null"}]\n'
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get_json(url: str, timeout: float = 5) -> Any:
    with _DIRECT.open(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def am_alerts(base: str, active: bool = True, **labels: str) -> list[dict[str, Any]]:
    """``GET /api/v2/alerts`` filtered by exact label values."""
    query = [("active", str(active).lower())]
    query += [("filter", f'{k}="{v}"') for k, v in labels.items()]
    got: list[dict[str, Any]] = get_json(f"{base}/api/v2/alerts?{urllib.parse.urlencode(query)}")
    return got


def _wait_ready(base: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"alertmanager exited {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with _DIRECT.open(f"{base}/-/ready", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    pytest.fail(f"alertmanager not ready after {timeout}s:\n{log.read_text()[-2000:]}")


@contextmanager
def running_alertmanager(
    tmp: Path, ready_timeout: float = 20, config: str = CONFIG
) -> Iterator[str]:
    exe = shutil.which(BINARY) or (
        f"/usr/bin/{BINARY}" if Path(f"/usr/bin/{BINARY}").exists() else None
    )
    if exe is None:
        pytest.fail(f"missing tools ['{BINARY}']: run bash .ci/system-packages.sh")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "alertmanager.yml").write_text(config)
    base = f"http://127.0.0.1:{free_port()}"
    log = tmp / "alertmanager.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                exe,
                f"--config.file={tmp / 'alertmanager.yml'}",
                f"--storage.path={tmp / 'data'}",
                f"--web.listen-address={base.removeprefix('http://')}",
                "--cluster.listen-address=",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_ready(base, proc, log, ready_timeout)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
