"""A cache of validated packs, keyed by content: the shipped pack takes ≈ 30 ms to parse
(YAML) and validate, ≈ 3 ms to unpickle, and ``kaspwatch scan`` of a small capture is
mostly start-up.

Safe by construction rather than by trust in the file:

* the key is the SHA-256 of the pack's bytes, its path (errors and events name it), the
  Python version and the source of the code that builds a ``Pack``: an edited pack, a new
  kaspwatch or a new Python never sees an old entry;
* only a pack that loaded without error is stored; a bad pack is parsed every time, so
  its error (file:line) is always the parser's own;
* entries are read only from a directory owned by this user and writable by no one else,
  from files of the same owner and mode (0600): the same trust as Python's own
  ``__pycache__``, which is code. Anything else is ignored and parsed afresh.

``KASPWATCH_CACHE_DIR`` sets the directory (empty: no cache); default
``$XDG_CACHE_HOME/kaspwatch`` or ``~/.cache/kaspwatch``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import pickle
import stat
import sys
import tempfile
from pathlib import Path

from sensor.rules import indicators
from sensor.rules.indicators import Pack, load_pack

log = logging.getLogger("kaspwatch.rules")

# entries kept: each pack file, path and kaspwatch version makes its own, and a test suite
# or a responder's many site packs would otherwise fill the directory without end
MAX_ENTRIES = 16


def cache_dir() -> Path | None:
    """Where entries live; None when caching is off (``KASPWATCH_CACHE_DIR=``)."""
    given = os.environ.get("KASPWATCH_CACHE_DIR")
    if given is not None:
        return Path(given) if given else None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kaspwatch"


@functools.cache
def _salt() -> bytes:
    """What a cached ``Pack`` depends on besides the file: Python and the building code."""
    h = hashlib.sha256(sys.version.encode())
    for module in (indicators, sys.modules[__name__]):
        if module.__file__:
            h.update(Path(module.__file__).read_bytes())
    return h.digest()


def _private(st: os.stat_result, directory: bool) -> bool:
    kind = stat.S_ISDIR if directory else stat.S_ISREG
    return kind(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o022


def cached_pack(path: str | Path) -> Pack:
    """``load_pack(path)``, from the cache when an entry for these exact bytes is there."""
    where = Path(path)
    directory = cache_dir()
    try:
        data = where.read_bytes()
    except OSError:
        return load_pack(where)  # its own error, naming the file
    if directory is None:
        return load_pack(where)
    key = hashlib.sha256(_salt() + str(where).encode() + b"\0" + data).hexdigest()
    entry = directory / f"pack-{key}.pickle"
    try:
        if _private(os.stat(directory), True):
            with open(entry, "rb") as fh:
                if _private(os.fstat(fh.fileno()), False):
                    pack = pickle.load(fh)  # noqa: S301 - a private file keyed by content
                    if isinstance(pack, Pack):
                        return pack
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, TypeError) as exc:
        if not isinstance(exc, FileNotFoundError):
            log.debug("pack cache %s: %s", entry, exc)
    pack = load_pack(where)
    _store(directory, entry, pack)
    return pack


def _store(directory: Path, entry: Path, pack: Pack) -> None:
    """Write atomically (temporary file, rename); a cache that cannot be written is no error."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not _private(os.stat(directory), True):
            return
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".pack-")  # mode 0600
        try:
            with os.fdopen(fd, "wb") as fh:
                pickle.dump(pack, fh, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, entry)
        except BaseException:
            os.unlink(tmp)
            raise
        _prune(directory)
    except OSError as exc:
        log.debug("pack cache %s: not written: %s", entry, exc)


def _prune(directory: Path) -> None:
    """Keep the ``MAX_ENTRIES`` most recently written entries; remove the rest."""
    entries = []
    for path in directory.glob("pack-*.pickle"):
        with contextlib.suppress(OSError):  # another process pruned it first
            entries.append((path.stat().st_mtime_ns, path))
    entries.sort(reverse=True)
    for _, path in entries[MAX_ENTRIES:]:
        with contextlib.suppress(OSError):
            path.unlink()
