"""What a long-running command does to its own process: stop on a signal, drop root."""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import signal
import threading
from collections.abc import Callable

from kaspwatch.event import parse_ts
from kaspwatch.secretfile import private_dir
from sensor.sources.base import CaptureError

log = logging.getLogger("kaspwatch")


class Stopper:
    """SIGINT/SIGTERM set ``stop`` (the async loop) and ``halt`` (a capture thread); a
    second one sets ``again`` too (give up a drain). SIGHUP calls ``on_hup`` (a rules
    reload) when given. ``install`` in the running loop."""

    def __init__(self, on_hup: Callable[[], None] | None = None) -> None:
        self.halt = threading.Event()
        self.stop = asyncio.Event()
        self.again = asyncio.Event()
        self.on_hup = on_hup
        self.signal: int | None = None  # the signal that stopped us, if one did

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.trigger, sig)
        if self.on_hup is not None:
            loop.add_signal_handler(signal.SIGHUP, self.on_hup)

    def trigger(self, signum: int = signal.SIGTERM) -> None:
        if self.signal is None:
            self.signal = signum
        if self.stop.is_set():
            self.again.set()
            log.warning("second signal: stopping without waiting for the consumers")
        self.halt.set()
        self.stop.set()


def _user(user: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(user)
    except KeyError:
        raise CaptureError(f"--user {user}: no such user") from None


def hand_over(directory: str, user: str) -> None:
    """Make ``directory`` (0700) and give it and what it holds to ``user``, while still root:
    after the drop the user could not create it under a root-owned state directory."""
    if os.getuid() != 0:
        return  # drop_privileges says why --user needs root
    entry = _user(user)
    path = private_dir(directory)
    for p in (path, *path.iterdir()):
        os.lchown(p, entry.pw_uid, entry.pw_gid)


PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38


def _prctl(option: int, arg: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, arg, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise CaptureError(f"--user: prctl({option}, {arg}) failed: {os.strerror(err)}")


def _drop_bounding_set() -> None:
    """No capability can ever come back (a setuid-root binary, file capabilities)."""
    try:
        last = int(open("/proc/sys/kernel/cap_last_cap").read())  # noqa: SIM115
    except (OSError, ValueError):
        last = 40
    for cap in range(last + 1):
        _prctl(PR_CAPBSET_DROP, cap)


def drop_privileges(user: str) -> None:
    """Become ``user`` for good: the open capture sockets keep working, nothing else of
    root's remains (supplementary groups cleared, gid before uid, no way back)."""
    import concurrent.futures.thread  # noqa: F401 - asyncio's executor, imported lazily

    import kaspwatch.bus.kafka  # noqa: F401 - the Kafka client, imported on first use

    # Warm what Python loads lazily on first use, while the interpreter's files can still
    # be read (a Python under /root cannot be read by the user we become).
    parse_ts("2000-01-01T00:00:00.000000Z")  # _strptime
    "bücher.example".encode("idna")  # encodings.idna, stringprep

    entry = _user(user)
    if os.getuid() != 0:
        raise CaptureError(f"--user {user}: only root can switch user; run as root or drop --user")
    _drop_bounding_set()  # needs CAP_SETPCAP: while still root
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    if os.getuid() != entry.pw_uid or os.geteuid() != entry.pw_uid:
        raise CaptureError(f"--user {user}: could not drop root")
    _prctl(PR_SET_NO_NEW_PRIVS, 1)  # execve can never grant privileges again
    log.info("running as %s (uid %d) from now on", user, entry.pw_uid)
