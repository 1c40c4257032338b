"""No silent failures, no noisy ones: a user error is one line naming the option or file and
exit 2; a typo never creates a folder or an empty store; a sink that fails logs one WARNING
per failure (the traceback only with -v) and one INFO when it recovers; a client that could
not connect is closed ("Unclosed AIOKafka..." never shows)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import consumers.loop
from consumers.alerts.delivery import AlertDelivery
from consumers.alerts.engine import AlertEngine
from consumers.alerts.sinks.webhook import WebhookSink
from consumers.alerts.state import AlertState
from consumers.loop import consume
from consumers.store import StoreError, open_backend
from kaspwatch.bus import BusError, Record, parse_bus_url
from kaspwatch.bus.memory import MemoryBus
from kaspwatch.cli.options import db_url
from tests.factories import hit
from tests.httpserve import webhook
from tests.testenv import KASPWATCH, SAMPLE, free_port


def kw(tmp: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KASPWATCH_STATE_DIR": str(tmp / "state")}
    for name in ("KASPWATCH_BUS", "KASPWATCH_DB", "KASPWATCH_CONFIG"):
        env.pop(name, None)
    return subprocess.run(
        [*KASPWATCH, *args], capture_output=True, text=True, timeout=timeout, cwd=tmp, env=env
    )


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("kaspwatch: error: "), proc.stderr
    return lines[0]


# ---------------------------------------------------------------- one line, exit 2


def test_world_readable_webhook_secret_is_one_line(tmp_path: Path) -> None:
    secret = tmp_path / "hook.secret"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    proc = kw(
        tmp_path,
        *("alerts", "--bus", "memory://", "--webhook", "http://127.0.0.1:9/hook"),
        *("--webhook-secret-file", str(secret)),
    )
    line = one_error_line(proc)
    assert str(secret) in line and "0644" in line and "chmod" in line
    assert "s3cret" not in proc.stderr


@pytest.mark.parametrize("command", ["sense", "alerts", "store", "metrics"])
def test_kafka_url_with_a_port_that_is_not_a_number_is_one_line(
    tmp_path: Path, command: str
) -> None:
    args = ["--pcap", str(SAMPLE)] if command == "sense" else []
    proc = kw(tmp_path, command, *args, "--bus", "kafka://127.0.0.1:notaport")
    line = one_error_line(proc)
    assert "--bus" in line and "kafka://127.0.0.1:notaport" in line and "'notaport'" in line
    assert "kafka://HOST:PORT" in line
    assert not (tmp_path / "state").exists()  # nothing spooled before the URL was checked


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("kafka://127.0.0.1:notaport", "port 'notaport'"),
        ("kafka://h:0", "port '0'"),
        ("kafka://h:65536", "port '65536'"),
        ("kafka://a:1,b:x", "port 'x'"),
        ("kafka://:9092", "needs HOST:PORT"),
        ("kafka://::1:9092", "IPv6 address in brackets"),
    ],
)
def test_malformed_kafka_urls_say_what_to_give(url: str, why: str) -> None:
    with pytest.raises(BusError) as err:
        parse_bus_url(url)
    assert url in str(err.value) and why in str(err.value)
    assert "kafka://HOST:PORT" in str(err.value)


def test_well_formed_kafka_urls_still_pass() -> None:
    assert parse_bus_url("kafka://[::1]:9092,h:1") == ("kafka", "[::1]:9092,h:1")
    assert parse_bus_url("kafka://kafka-1.site.example:9093/") == (
        "kafka",
        "kafka-1.site.example:9093",
    )


@pytest.mark.parametrize("command", ["alerts", "store", "metrics"])
def test_failed_connect_leaves_no_unclosed_client(tmp_path: Path, command: str) -> None:
    """Nothing listens on the port: one error line, and no 'Unclosed AIOKafka...' (the
    alerts command used to leave its never-started subscriber behind)."""
    args = ["--listen", f"127.0.0.1:{free_port()}"] if command == "metrics" else []
    proc = kw(tmp_path, command, "--bus", f"kafka://127.0.0.1:{free_port()}", *args)
    assert proc.returncode == 2, proc.stderr
    assert "Unclosed" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "cannot connect" in errors[0], proc.stderr


# ---------------------------------------------------------------- sink failure and recovery


@pytest.fixture
def flaky_receiver() -> Iterator[tuple[str, list[int]]]:
    """A webhook receiver answering 503 to the first POST and 200 after."""
    with webhook([503]) as (url, posts):
        yield url, posts.statuses


async def deliver_through_the_loop(
    url: str, monkeypatch: pytest.MonkeyPatch, tracebacks: bool = False
) -> None:
    monkeypatch.setattr(consumers.loop, "RETRY_PAUSE_S", 0.0)
    bus = MemoryBus()
    bus.append("hits", b"10.3.0.1", hit("10.3.0.1", 0).to_json())
    sub = bus.subscriber(["hits"], "alerts")
    await sub.start()
    sink = WebhookSink(url, None, attempts=1, backoff_s=0.0)
    delivery = AlertDelivery(AlertEngine(), [sink], AlertState(None), tracebacks=tracebacks)

    async def dead_letter(rec: Record, why: str) -> None:
        raise AssertionError(why)

    await consume(sub, [delivery], asyncio.Event(), dead_letter, lambda: True)


async def test_sink_failure_is_one_warning_and_recovery_one_info(
    flaky_receiver: tuple[str, list[int]],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, got = flaky_receiver
    caplog.set_level(logging.INFO, logger="kaspwatch")
    await deliver_through_the_loop(url, monkeypatch)
    assert got == [503, 200]
    ours = [r for r in caplog.records if r.name.startswith("kaspwatch")]
    loud = [r for r in ours if r.levelno >= logging.WARNING]
    assert [r.levelname for r in loud] == ["WARNING"], [r.getMessage() for r in loud]
    assert "sink webhook failed" in loud[0].getMessage() and "HTTP 503" in loud[0].getMessage()
    assert not any(r.exc_info for r in ours), "a traceback without -v"
    recovered = [r for r in ours if "recovered" in r.getMessage()]
    assert [r.levelname for r in recovered] == ["INFO"]
    assert "sink webhook recovered" in recovered[0].getMessage()


async def test_sink_failure_traceback_only_with_verbose(
    flaky_receiver: tuple[str, list[int]],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, _ = flaky_receiver
    caplog.set_level(logging.DEBUG, logger="kaspwatch")
    await deliver_through_the_loop(url, monkeypatch, tracebacks=True)  # what -v sets
    [warning] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert warning.exc_info  # -v: the traceback is there, on the same record


# ---------------------------------------------------------------- typos create nothing


@pytest.mark.parametrize(
    "command",
    [
        ["run", "--pcap", str(SAMPLE)],
        ["store", "--bus", "memory://"],
        ["query", "hosts"],
        ["api", "--listen", "127.0.0.1:PORT"],
    ],
    ids=["run", "store", "query", "api"],
)
def test_db_in_a_missing_folder_is_an_error_and_creates_nothing(
    tmp_path: Path, command: list[str]
) -> None:
    command = [c.replace("PORT", str(free_port())) for c in command]
    proc = kw(tmp_path, *command, "--db", "sqlite:///typo-dir/x.sqlite", timeout=30)
    line = one_error_line(proc)
    assert "folder typo-dir does not exist" in line
    assert not (tmp_path / "typo-dir").exists()


def test_sqlite_url_with_two_slashes_is_refused(tmp_path: Path) -> None:
    proc = kw(tmp_path, "run", "--pcap", str(SAMPLE), "--db", "sqlite://rel.sqlite")
    line = one_error_line(proc)
    assert "sqlite://rel.sqlite" in line and "sqlite:///rel.sqlite" in line
    assert list(tmp_path.glob("*.sqlite")) == []


@pytest.mark.parametrize("url", ["sqlite://rel.sqlite", "sqlite://", "sqlite:///", "sqlite:///d/"])
def test_malformed_sqlite_urls_are_refused(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the old code made a store in the working directory
    with pytest.raises(StoreError, match="expected sqlite:///PATH"):
        open_backend(url)


def test_explicit_state_in_a_missing_folder_is_an_error(tmp_path: Path) -> None:
    proc = kw(tmp_path, "alerts", "--bus", "memory://", "--state", "typo-dir/a.sqlite")
    line = one_error_line(proc)
    assert "--state" in line and "folder typo-dir does not exist" in line
    assert not (tmp_path / "typo-dir").exists()


def test_only_the_default_store_folder_is_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "new" / "state"
    monkeypatch.setenv("KASPWATCH_STATE_DIR", str(state))
    monkeypatch.delenv("KASPWATCH_DB", raising=False)
    url = db_url(argparse.Namespace(db=None), create_default=True)
    assert url == f"sqlite:///{state / 'store.sqlite'}" and state.is_dir()
    open_backend(url).close()  # the default opens
    explicit = f"sqlite:///{tmp_path / 'typo' / 'x.sqlite'}"
    assert db_url(argparse.Namespace(db=explicit), create_default=True) == explicit
    monkeypatch.setenv("KASPWATCH_DB", explicit)
    assert db_url(argparse.Namespace(db=None), create_default=True) == explicit
    assert not (tmp_path / "typo").exists()
    with pytest.raises(StoreError, match=r"folder .*typo does not exist"):
        open_backend(explicit)
    assert not (tmp_path / "typo").exists()
