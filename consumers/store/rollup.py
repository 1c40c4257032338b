"""From events to rows: the ``hits`` row of an event, and the aggregate deltas of a batch.

Pure Python, no database: the store runs these inside its write transaction on the hits
that the database reports as newly inserted, so a replayed hit never counts twice.
Sets (sensors, names, categories) are bounded: once full, the ones seen first stay.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from itertools import groupby
from operator import itemgetter
from typing import Any, Final, NamedTuple

from consumers.store.names import reverse_name
from kaspwatch.event import Event

MAX_SENSORS: Final = 16
MAX_NAMES: Final = 32
MAX_CATEGORIES: Final = 32

_EPOCH: Final = datetime(1970, 1, 1)
_encode = json.JSONEncoder(separators=(",", ":")).encode
_decode = json.JSONDecoder().decode
_encode_sorted = json.JSONEncoder(separators=(",", ":"), sort_keys=True).encode
_US: Final = timedelta(microseconds=1)


def ts_to_us(ts: str) -> int:
    """``2026-11-27T18:44:03.397779Z`` → microseconds since the epoch."""
    return (datetime.fromisoformat(ts.removesuffix("Z")) - _EPOCH) // _US


def us_to_ts(us: int) -> str:
    """Microseconds since the epoch → RFC 3339 UTC with microseconds, as events carry."""
    day, rest = divmod(us, 86_400_000_000)
    secs, frac = divmod(rest, 1_000_000)
    hours, secs = divmod(secs, 3600)
    return f"{_day(day)}T{hours:02d}:{secs // 60:02d}:{secs % 60:02d}.{frac:06d}Z"


@lru_cache(maxsize=4096)
def _day(day: int) -> str:
    return (_EPOCH + timedelta(days=day)).date().isoformat()


class HitRow(NamedTuple):
    """One ``hits`` row; the field order is ``schema.HIT_COLUMNS``."""

    event_id: str
    ts_us: int
    host: str
    sensor: str
    kind: str
    name: str
    query: str | None
    answers: str | None  # JSON array
    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int
    transport: str
    indicator_id: str
    pattern: str
    match_kind: str
    category: str
    severity: str
    confidence: str
    allowlisted: str | None  # the allowlist entry that covered the hit
    extra: str | None  # JSON object: every other field of the event (ech, resolver_bypass…)


def hit_row(ev: Event) -> HitRow:
    ind = ev.indicator
    if ind is None:
        raise ValueError(f"event {ev.event_id} is an observation, not a hit")
    extra = {k: v for k, v in ev.extra.items() if k != "allowlisted"}
    allow = ev.extra.get("allowlisted")
    return HitRow(
        ev.event_id,
        ts_to_us(ev.ts),
        ev.host,
        ev.sensor,
        ev.kind,
        ev.name,
        ev.query,
        _encode(list(ev.answers)) if ev.answers else None,
        ev.src_ip,
        ev.src_port,
        ev.dst_ip,
        ev.dst_port,
        ev.transport,
        ind.id,
        ind.pattern,
        ind.match,
        ind.category,
        ind.severity,
        ind.confidence,
        str(allow) if allow else None,
        _encode_sorted(extra) if extra else None,
    )


def dumps_set(values: Iterable[str]) -> str:
    ordered = sorted(values)
    joined = "".join(ordered)
    # printable ASCII without quotes or backslashes is what JSON writes as it is: skip
    # the encoder (the same text, a fifth of the time)
    if joined.isascii() and joined.isprintable() and '"' not in joined and "\\" not in joined:
        return '["' + '","'.join(ordered) + '"]' if ordered else "[]"
    return _encode(ordered)


def loads_set(text: str) -> list[str]:
    """A stored set. Fast path for what ``dumps_set`` writes without escapes."""
    if "\\" not in text and '", "' not in text and text.startswith('["') and text.endswith('"]'):
        return text[2:-2].split('","')
    value: Any = _decode(text)
    return value if isinstance(value, list) else []


def bounded_union(old: list[str], new: Iterable[str], bound: int) -> list[str]:
    """``old`` plus what of ``new`` is missing, in sorted order, while there is room."""
    if not old:
        return sorted(new)[:bound]
    have = set(old)
    out = list(old)
    for value in sorted(set(new) - have):
        if len(out) >= bound:
            break
        out.append(value)
    return sorted(out)


@dataclass(slots=True)
class Agg:
    """First/last seen, counts and bounded sets of one aggregate row."""

    first_us: int
    last_us: int
    count: int = 0
    allowlisted: int = 0
    sensors: set[str] = field(default_factory=set)
    names: set[str] = field(default_factory=set)  # categories, for the per-host row
    label: str = ""  # the category of the latest hit (an indicator's category can change)
    ident: str = ""  # the indicator of the latest hit

    def merge(self, other: Agg) -> None:
        if other.last_us >= self.last_us:
            self.label, self.ident = other.label, other.ident
        self.first_us = min(self.first_us, other.first_us)
        self.last_us = max(self.last_us, other.last_us)
        self.count += other.count
        self.allowlisted += other.allowlisted
        self.sensors |= other.sensors
        self.names |= other.names


@dataclass
class Deltas:
    """What a batch of new hits adds to each aggregate table, by key."""

    host_indicator: dict[tuple[str, str], Agg] = field(default_factory=dict)
    host_category: dict[tuple[str, str], Agg] = field(default_factory=dict)
    hosts: dict[str, Agg] = field(default_factory=dict)
    host_names: dict[tuple[str, str], Agg] = field(default_factory=dict)  # (host, rname)
    pdns: dict[tuple[str, str], Agg] = field(default_factory=dict)  # (rname, answer)


_HOST_TS = itemgetter(2, 1)
_TS = itemgetter(1)
_HOST = itemgetter(2)
_SENSOR = itemgetter(3)
_NAME = itemgetter(5)
_NAME_ANSWERS = itemgetter(5, 7)
_INDICATOR = itemgetter(13)
_CATEGORY = itemgetter(16)
_ALLOWLISTED = itemgetter(19)


def _agg_of(rows: list[HitRow], values: Callable[[HitRow], str]) -> Agg:
    """The aggregate of rows in time order (the last one is the latest)."""
    latest = rows[-1]
    if len(rows) == 1:
        return Agg(
            latest.ts_us,
            latest.ts_us,
            1,
            0 if latest.allowlisted is None else 1,
            {latest.sensor},
            {values(latest)},
            latest.category,
            latest.indicator_id,
        )
    return Agg(
        rows[0].ts_us,
        latest.ts_us,
        len(rows),
        len(rows) - list(map(_ALLOWLISTED, rows)).count(None),
        set(map(_SENSOR, rows)),
        set(map(values, rows)),
        latest.category,
        latest.indicator_id,
    )


def deltas(rows: Iterable[HitRow]) -> Deltas:
    """Group a batch's new hits by every aggregate key (sorting and grouping run in C)."""
    d = Deltas()
    ordered = sorted(rows, key=_HOST_TS)
    for host, group in groupby(ordered, _HOST):
        hits = list(group)
        d.hosts[host] = _agg_of(hits, _CATEGORY)
        # sorted() is stable: every sub-group below stays in time order
        for ind, g in groupby(sorted(hits, key=_INDICATOR), _INDICATOR):
            d.host_indicator[(host, ind)] = _agg_of(list(g), _NAME)
        for cat, g in groupby(sorted(hits, key=_CATEGORY), _CATEGORY):
            d.host_category[(host, cat)] = _agg_of(list(g), _NAME)
        for name, g in groupby(sorted(hits, key=_NAME), _NAME):
            d.host_names[(host, reverse_name(name))] = _agg_of(list(g), _NAME)
    answered = sorted(
        (r for r in ordered if r.kind == "dns_answer" and r.answers), key=_NAME_ANSWERS
    )
    for (name, answers), g in groupby(answered, _NAME_ANSWERS):
        agg = _agg_of(sorted(g, key=_TS), _NAME)
        rname = reverse_name(name)
        for answer in loads_set(answers):
            key = (rname, str(answer))
            if key in d.pdns:
                d.pdns[key].merge(agg)
            else:
                d.pdns[key] = _copy(agg)
    return d


def _copy(agg: Agg) -> Agg:
    return Agg(
        agg.first_us,
        agg.last_us,
        agg.count,
        agg.allowlisted,
        set(agg.sensors),
        set(agg.names),
        agg.label,
        agg.ident,
    )


def _merge_set(old_json: str, new: set[str], bound: int) -> str:
    old = loads_set(old_json)
    if new.issubset(old) or len(old) >= bound:
        return old_json  # nothing to add (the common case): keep the stored text
    return dumps_set(bounded_union(old, new, bound))


def merge_row(
    old: tuple[int, int, int, int, str, str] | None, new: Agg, max_names: int
) -> tuple[int, int, int, int, str, str]:
    """(first, last, count, allowlisted, sensors JSON, names JSON) after adding ``new``."""
    if old is None:
        return (
            new.first_us,
            new.last_us,
            new.count,
            new.allowlisted,
            dumps_set(bounded_union([], new.sensors, MAX_SENSORS)),
            dumps_set(bounded_union([], new.names, max_names)),
        )
    first, last, count, allowlisted, sensors_json, names_json = old
    return (
        min(first, new.first_us),
        max(last, new.last_us),
        count + new.count,
        allowlisted + new.allowlisted,
        _merge_set(sensors_json, new.sensors, MAX_SENSORS),
        _merge_set(names_json, new.names, max_names),
    )
