"""``tail -F`` for a peer sensor's log: lines as they are appended, across rotation.

The writer (Suricata, Zeek, logrotate) may rename the file and start a new one under the
same name (rotation), or cut it to nothing (``copytruncate``). At the end of what is
there, the name is looked at again: a different file under the name means the old one
is finished (it is read to its end, a last unfinished line included) and the new one is
read from its start; a file shorter than what was read means it was truncated (read from
its start again); a missing name is waited for. A line is handed on only once its
newline is written, so a half-written record is never read as a bad one.

The wait between looks is ``sleep(poll_s)``: tests pass a ``sleep`` that rotates the
file instead of waiting.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import BinaryIO

Line = tuple[str, int, bytes]  # (file, line number, the line)


class Follower:
    """Lines of ``path`` (``Line``), then ``None`` whenever it has caught up; ends on ``stop``."""

    def __init__(
        self, path: str, poll_s: float = 0.5, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.path = path
        self.poll_s = poll_s
        self.sleep = sleep
        self.rotations = 0
        self.truncations = 0
        self._stopped = False

    def stop(self) -> None:
        self._stopped = True

    def __iter__(self) -> Iterator[Line | None]:
        f: BinaryIO | None = None
        ident = (0, 0)
        lineno = 0
        buf = b""
        try:
            while True:
                if f is None:
                    try:
                        f = open(self.path, "rb")  # noqa: SIM115 - kept open across yields
                    except FileNotFoundError:
                        if self._stopped:
                            return
                        yield None
                        self.sleep(self.poll_s)
                        continue
                    opened = os.fstat(f.fileno())
                    ident, lineno, buf = (opened.st_dev, opened.st_ino), 0, b""
                for chunk in iter(f.readline, b""):
                    buf += chunk
                    if buf.endswith(b"\n"):
                        lineno += 1
                        yield self.path, lineno, buf
                        buf = b""
                st: os.stat_result | None
                try:
                    st = os.stat(self.path)
                except FileNotFoundError:
                    st = None
                if st is not None and (st.st_dev, st.st_ino) != ident:
                    for chunk in iter(f.readline, b""):  # what was written before the rename
                        buf += chunk
                    for part in buf.splitlines(keepends=True):
                        lineno += 1
                        yield self.path, lineno, part
                    f.close()
                    f = None
                    self.rotations += 1
                    continue
                if st is not None and st.st_size < f.tell():
                    f.seek(0)
                    lineno, buf = 0, b""
                    self.truncations += 1
                    continue
                if self._stopped:
                    return
                yield None
                self.sleep(self.poll_s)
        finally:
            if f is not None:
                f.close()


class PipeFollower:
    """``--follow -``: lines from a pipe (``tail -F eve.json | kaspwatch sense --eve -
    --follow``) as they come, ``None`` whenever nothing came for ``poll_s``, so the sensor
    publishes what it has instead of waiting for a full batch; ends at end of input or on
    ``stop``."""

    def __init__(self, fd: int, poll_s: float = 0.5, name: str = "stdin") -> None:
        self.fd = fd
        self.poll_s = poll_s
        self.name = name
        self._stopped = False

    def stop(self) -> None:
        self._stopped = True

    def __iter__(self) -> Iterator[Line | None]:
        import select

        buf = b""
        lineno = 0
        while not self._stopped:
            ready, _, _ = select.select([self.fd], [], [], self.poll_s)
            if not ready:
                yield None
                continue
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                break
            *lines, buf = (buf + chunk).split(b"\n")
            for line in lines:
                lineno += 1
                yield self.name, lineno, line + b"\n"
        if buf:
            yield self.name, lineno + 1, buf
