"""Secrets kept in files (webhook keys, the Kafka password): read one, refusing a file
that every user of the machine can read."""

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
