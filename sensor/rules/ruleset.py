"""The sensor's rules: the shipped pack, site packs layered over it, and the allowlist.

``RuleSource`` knows the files; ``load()`` builds an immutable ``Rules``; ``Reloader``
rebuilds on demand (SIGHUP) or when a file changes, and swaps only a fully valid set:
a bad file keeps the old rules running, logs the error and counts the failure.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from sensor.rules.allowlist import Allowlist, load_allowlist
from sensor.rules.indicators import PackError, shipped_pack_paths
from sensor.rules.match import Matcher
from sensor.rules.packcache import cached_pack

log = logging.getLogger("kaspwatch.rules")


@dataclass(frozen=True)
class Rules:
    matcher: Matcher
    allowlist: Allowlist
    loaded_at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class RuleSource:
    site_packs: tuple[str, ...] = ()
    allowlist: str | None = None
    shipped: bool = True

    @property
    def files(self) -> list[str]:
        packs = [str(p) for p in shipped_pack_paths()] if self.shipped else []
        return packs + list(self.site_packs) + ([self.allowlist] if self.allowlist else [])

    def load(self) -> Rules:
        """Parse and validate every file; PackError names the first bad file and line."""
        packs = [cached_pack(p) for p in shipped_pack_paths()] if self.shipped else []
        packs += [cached_pack(p) for p in self.site_packs]
        if not packs:
            raise PackError("no indicator pack: give a site pack or keep the shipped one")
        allow = load_allowlist(self.allowlist) if self.allowlist else Allowlist()
        return Rules(Matcher(packs), allow)


def _mtimes(files: list[str]) -> dict[str, float]:
    out = {}
    for f in files:
        try:
            out[f] = os.stat(f).st_mtime
        except OSError:
            out[f] = -1.0
    return out


class Reloader:
    """Holds the current rules; ``maybe_reload`` is cheap enough to call between batches."""

    def __init__(self, source: RuleSource, rules: Rules, interval: float = 2.0) -> None:
        self.source = source
        self.rules = rules
        self.interval = interval
        self.requested = False
        self.failures = 0
        self.last_success = rules.loaded_at
        self.last_error = ""
        self._checked = time.monotonic()
        self._mtimes = _mtimes(source.files)

    def request(self) -> None:
        """Ask for a reload at the next check (the SIGHUP handler calls this)."""
        self.requested = True

    def maybe_reload(self) -> bool:
        """Reload if asked to or a file changed; True when new rules were swapped in."""
        now = time.monotonic()
        if not self.requested and now - self._checked < self.interval:
            return False
        self._checked = now
        mtimes = _mtimes(self.source.files)
        if not self.requested and mtimes == self._mtimes:
            return False
        self.requested = False
        self._mtimes = mtimes
        return self.reload()

    def reload(self) -> bool:
        try:
            rules = self.source.load()
        except PackError as exc:
            self.failures += 1
            self.last_error = str(exc)
            log.error("indicator reload failed, keeping the running rules: %s", exc)
            return False
        except Exception as exc:  # a bug in validation must not stop a running sensor
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("indicator reload failed unexpectedly, keeping the running rules")
            return False
        self.rules = rules
        self.last_success = rules.loaded_at
        log.info(
            "indicator rules reloaded: %s, %d indicators, %d allowlist entries",
            rules.matcher.version,
            len(rules.matcher.indicators),
            len(rules.allowlist.entries),
        )
        return True


def source_from(
    pack_files: list[str] | None, allowlist: str | None, shipped: bool = True
) -> RuleSource:
    return RuleSource(tuple(str(Path(p)) for p in pack_files or []), allowlist, shipped)
