"""The validated-pack cache (sensor/rules/packcache.py): same Pack as a parse, keyed by the
file's bytes, never trusted from a directory or file others can write, off when asked."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from sensor.rules import packcache
from sensor.rules.indicators import PackError, load_pack, shipped_pack_path


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("KASPWATCH_CACHE_DIR", str(d))
    return d


@pytest.fixture
def pack(tmp_path: Path) -> Path:
    p = tmp_path / "site.yaml"
    shutil.copy(shipped_pack_path(), p)
    return p


def no_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(path: object) -> None:
        raise AssertionError(f"parsed {path} although a cache entry was there")

    monkeypatch.setattr(packcache, "load_pack", refuse)


def test_second_load_comes_from_the_cache_and_equals_a_parse(
    cache: Path, pack: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = packcache.cached_pack(pack)
    assert first == load_pack(pack)
    assert len(list(cache.glob("pack-*.pickle"))) == 1
    assert cache.stat().st_mode & 0o777 == 0o700
    no_parse(monkeypatch)
    assert packcache.cached_pack(pack) == first


def test_an_edited_pack_is_parsed_again(cache: Path, pack: Path) -> None:
    before = packcache.cached_pack(pack)
    pack.write_text(pack.read_text().replace("severity: high", "severity: low", 1))
    after = packcache.cached_pack(pack)
    assert after == load_pack(pack) and after != before
    assert len(list(cache.glob("pack-*.pickle"))) == 2


def test_a_bad_pack_fails_every_time_and_is_not_stored(cache: Path, pack: Path) -> None:
    pack.write_text("schema: 1\nindicators: []\n")
    for _ in range(2):
        with pytest.raises(PackError, match=r"site\.yaml:1"):
            packcache.cached_pack(pack)
    assert not list(cache.glob("pack-*.pickle"))


def test_entries_others_can_write_are_ignored(
    cache: Path, pack: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    packcache.cached_pack(pack)
    (entry,) = cache.glob("pack-*.pickle")
    entry.write_bytes(b"not a pickle")  # what a tampered entry would be
    os.chmod(entry, 0o666)
    assert packcache.cached_pack(pack) == load_pack(pack)  # ignored, parsed, rewritten
    assert entry.stat().st_mode & 0o777 == 0o600
    os.chmod(cache, 0o777)
    no_parse(monkeypatch)
    with pytest.raises(AssertionError, match="parsed"):
        packcache.cached_pack(pack)  # a world-writable directory is not read at all


def test_empty_cache_dir_turns_the_cache_off(
    tmp_path: Path, pack: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KASPWATCH_CACHE_DIR", "")
    monkeypatch.chdir(tmp_path)
    assert packcache.cache_dir() is None
    assert packcache.cached_pack(pack) == load_pack(pack)
    assert not list(tmp_path.rglob("pack-*.pickle"))


def test_the_cache_keeps_only_the_newest_entries(cache: Path, pack: Path, tmp_path: Path) -> None:
    """Each pack path and content makes an entry: old ones are removed, so a machine that
    runs many scans (or the test suite) does not fill its cache directory."""
    packcache.cached_pack(pack)  # makes the directory
    for i in range(packcache.MAX_ENTRIES + 5):
        stale = cache / f"pack-{i:064x}.pickle"
        stale.write_bytes(b"old")
        os.utime(stale, ns=(1_000_000_000 * i, 1_000_000_000 * i))
    other = tmp_path / "other.yaml"
    shutil.copy(shipped_pack_path(), other)
    packcache.cached_pack(other)  # a new entry: the write prunes
    left = sorted(cache.glob("pack-*.pickle"))
    assert len(left) == packcache.MAX_ENTRIES
    assert not (cache / f"pack-{0:064x}.pickle").exists()  # the oldest went first
    assert packcache.cached_pack(other) == load_pack(other)  # the new one is kept
