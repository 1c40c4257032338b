"""A real PostgreSQL server for the tests: ``initdb`` into a temporary directory, ``pg_ctl
start`` on 127.0.0.1 and a free port, as the unprivileged ``postgres`` OS user when the
tests run as root (PostgreSQL refuses to run as root). Trust authentication, loopback only,
fsync off: a throwaway server. Missing server binaries fail the tests with the fix; they
never skip. ``KASPWATCH_POSTGRES_URL`` names an existing server's database instead.

Use the session fixture ``postgres_url`` (the URL of a created database, ``kaspwatch``)
and ``create_database(url, name)`` for a fresh database per test.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from tests.testenv import free_port

SERVER_GLOB = "/usr/lib/postgresql/*/bin"


def server_bin() -> Path:
    """The newest installed server's bin directory (initdb, pg_ctl, pg_isready)."""
    found = sorted(
        (p for p in Path("/").glob(SERVER_GLOB.lstrip("/")) if (p / "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not found:
        pytest.fail(
            f"PostgreSQL server binaries not found in {SERVER_GLOB} "
            "(Debian package postgresql): run bash .ci/system-packages.sh"
        )
    return found[-1]


def _as_postgres() -> tuple[list[str], int, int]:
    """Command prefix, uid and gid to run the server as (postgres when we are root)."""
    if os.geteuid() != 0:
        return [], os.getuid(), os.getgid()
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail(
            "no 'postgres' OS user (the Debian package creates it): run bash .ci/system-packages.sh"
        )
    return ["runuser", "-u", "postgres", "--"], pw.pw_uid, pw.pw_gid


def create_database(url: str, name: str) -> str:
    """Create database ``name`` on the server of ``url``; return its URL."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    existing = os.environ.get("KASPWATCH_POSTGRES_URL")
    if existing:
        yield existing
        return
    bindir = server_bin()
    prefix, uid, gid = _as_postgres()
    # not under pytest's tmp dir: that one is private to root, and the server runs as postgres
    base = Path(tempfile.mkdtemp(prefix="kaspwatch-pg-"))
    os.chown(base, uid, gid)
    data, sock, logfile = base / "data", base / "sock", base / "server.log"
    port = free_port()

    def run(*cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*prefix, *cmd], capture_output=True, text=True, timeout=timeout, check=False
        )

    try:
        run("mkdir", "-p", str(sock))
        init = run(
            str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
            "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        if init.returncode:
            pytest.fail(f"initdb failed: {init.stderr.strip()}")
        opts = (
            f"-h 127.0.0.1 -p {port} -k {sock} -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c max_connections=50"
        )
        start = run(
            str(bindir / "pg_ctl"), "-D", str(data), "-l", str(logfile), "-o", opts, "start",
        )  # fmt: skip
        if start.returncode:
            log = logfile.read_text() if logfile.exists() else ""
            pytest.fail(f"pg_ctl start failed: {start.stderr.strip()} {log[-2000:]}")
        deadline = time.monotonic() + 30
        while True:
            ready = run(str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), timeout=10)
            if ready.returncode == 0:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"PostgreSQL on 127.0.0.1:{port} not ready: {ready.stdout.strip()}")
            time.sleep(0.1)
        url = create_database(f"postgresql://postgres@127.0.0.1:{port}/postgres", "kaspwatch")
        yield url
    finally:
        if (data / "postmaster.pid").exists():
            run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)
