"""Secrets kept in files (webhook keys, the Kafka password): read one, refusing a file
that every user of the machine can read. And files that hold what kaspwatch learned (the
store, the alert state): created for their owner only."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def read_secret_file(path: str | Path, what: str) -> bytes:
    """The secret in ``path``, trailing newline stripped. ``ValueError`` (naming ``what``
    and the path, never the content) for a world-readable or empty file; ``OSError`` when
    it cannot be read."""
    mode = os.stat(path).st_mode
    if mode & stat.S_IROTH:
        raise ValueError(
            f"{what} {path} is world-readable (mode {stat.S_IMODE(mode):04o}): "
            f"run chmod o-rwx {path}"
        )
    secret = Path(path).read_bytes().rstrip(b"\r\n")
    if not secret:
        raise ValueError(f"{what} {path} is empty")
    return secret


def private_dir(path: str | Path) -> Path:
    """``path`` made (parents too) as a directory only its owner can enter: 0700. An
    existing one of ours is tightened to 0700; one of another user is left as it is."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True, mode=0o700)
    if p.stat().st_uid == os.geteuid():
        p.chmod(0o700)
    return p


def private_file(path: str | Path) -> None:
    """Create ``path`` 0600 before a library opens it (SQLite gives its -wal and -shm files
    the mode of the database); an existing file of ours is tightened to 0600."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        if os.fstat(fd).st_uid == os.geteuid():
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
