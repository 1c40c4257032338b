"""From events to rows: the ``hits`` row of an event, and the aggregate deltas of a batch.

Pure Python, no database: the store runs these inside its write transaction on the hits
that the database reports as newly inserted, so a replayed hit never counts twice.
Sets (sensors, categories) are bounded: once full, the ones seen first stay.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache, lru_cache
from operator import itemgetter
from typing import Any, Final, NamedTuple, TypeVar

from consumers.store.names import reverse_name
from consumers.verdict import VERDICTS, Verdict, merge
from kaspwatch.event import Event

MAX_SENSORS: Final = 16
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
    """Microseconds since the epoch → RFC 3339 UTC with microseconds, as events carry.

    Queries print two per row: the day and the time of day come from small caches (a few
    thousand days, at most 86,400 seconds), so only the microseconds are formatted."""
    secs, frac = divmod(us, 1_000_000)
    day, rest = divmod(secs, 86_400)
    return f"{_day(day)}T{_hms(rest)}.{frac:06d}Z"


@lru_cache(maxsize=4096)
def _day(day: int) -> str:
    return (_EPOCH + timedelta(days=day)).date().isoformat()


@cache  # at most 86,400 entries
def _hms(secs: int) -> str:
    hours, secs = divmod(secs, 3600)
    return f"{hours:02d}:{secs // 60:02d}:{secs % 60:02d}"


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
    extra = {k: v for k, v in ev.extra.items() if k != "allowlisted"} if ev.extra else None
    allow = ev.extra.get("allowlisted")
    # tuple.__new__: the fields in order, without NamedTuple's keyword-taking __new__
    return _new_row(
        HitRow,
        (
            ev.event_id,
            ts_to_us(ev.ts),
            ev.host,
            ev.sensor,
            ev.kind,
            ev.name,
            ev.query,
            _json_strings(ev.answers) if ev.answers else None,
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
        ),
    )


_new_row = tuple.__new__


def _json_strings(values: Sequence[str]) -> str:
    """A JSON array of strings, as ``json.dumps`` writes it (compact): printable ASCII
    without quotes or backslashes is written as it is (a fifth of the encoder's time)."""
    joined = "".join(values)
    if joined.isascii() and joined.isprintable() and '"' not in joined and "\\" not in joined:
        return '["' + '","'.join(values) + '"]' if values else "[]"
    return _encode(list(values))


def dumps_set(values: Iterable[str]) -> str:
    return _json_strings(sorted(values))


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


HostNameRow = tuple[str, str, str, str, str, int, int, int]

# the watched names are few and recur in every batch: reverse each once (bounded, since
# pattern indicators can match names without end)
reverse_cached: Final = lru_cache(maxsize=65_536)(reverse_name)


@dataclass
class Deltas:
    """What a batch of new hits adds to each aggregate table, by key: every key once."""

    hosts: dict[str, Agg] = field(default_factory=dict)
    host_category: dict[tuple[str, str], Agg] = field(default_factory=dict)
    # ready ``host_names`` rows in key order: (host, rname, name, category, indicator,
    # first_us, last_us, count)
    host_names: list[HostNameRow] = field(default_factory=list)
    pdns: dict[tuple[str, str], Agg] = field(default_factory=dict)  # (name, answer)
    # host -> what its new hits say of it (consumers.verdict.classify), in time order
    verdicts: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)


_K = TypeVar("_K")
_TS = row_time = itemgetter(1)
_HOST = itemgetter(2)
_SENSOR = itemgetter(3)
_NAME = itemgetter(5)
_INDICATOR = itemgetter(13)
_CATEGORY = itemgetter(16)


def _spans(
    keys: list[_K], ts: list[int], ts_rev: list[int]
) -> tuple[dict[_K, int], dict[_K, int], Counter[_K]]:
    """First time, latest time and count of each key, from columns in time order."""
    first = dict(zip(keys[::-1], ts_rev, strict=True))  # the earliest is written last
    return first, dict(zip(keys, ts, strict=True)), Counter(keys)


def deltas(rows: Iterable[HitRow], repeats: Iterable[HitRow] = ()) -> Deltas:
    """A batch's new hits, summed per host, per (host, category) and per (host, name)
    (as the rows to upsert), and per (name, answer) for DNS answers.

    Column-wise, so the per-hit work runs in C (``dict(zip(…))`` over the columns in time
    order keeps each key's latest value, ``Counter`` counts); Python loops only over the
    distinct keys and (key, value) pairs, the rare allowlisted hits and the DNS answers.

    ``repeats``: hits of packets counted already (another sensor's copy): they add their
    sensor to the per-host and per-(host, category) sensors, and nothing else."""
    ordered = sorted(rows, key=_TS)
    ts = list(map(_TS, ordered))
    ts_rev = ts[::-1]
    hosts = list(map(_HOST, ordered))
    cats = list(map(_CATEGORY, ordered))
    sensors = list(map(_SENSOR, ordered))
    d = Deltas()
    allowed = Counter((r[2], r[16]) for r in ordered if r[19] is not None)

    first, last, count = _spans(hosts, ts, ts_rev)
    for h, n in count.items():
        d.hosts[h] = Agg(first[h], last[h], n)
    for h, s in set(zip(hosts, sensors, strict=True)):
        d.hosts[h].sensors.add(s)
    for h, c in set(zip(hosts, cats, strict=True)):
        d.hosts[h].names.add(c)

    keys = list(zip(hosts, cats, strict=True))
    first2, last2, count2 = _spans(keys, ts, ts_rev)
    for k, n in count2.items():
        d.host_category[k] = Agg(first2[k], last2[k], n)
    for h, c, s in set(zip(hosts, cats, sensors, strict=True)):
        d.host_category[(h, c)].sensors.add(s)
    for (h, c), n in allowed.items():
        d.hosts[h].allowlisted += n
        d.host_category[(h, c)].allowlisted += n

    keys = list(zip(hosts, map(_NAME, ordered), strict=True))
    first = dict(zip(keys[::-1], ts_rev, strict=True))
    count = Counter(keys)
    # the latest (time, category, indicator) of each key: later items overwrite earlier
    latest = dict(zip(keys, zip(ts, cats, map(_INDICATOR, ordered), strict=True), strict=True))
    rname = reverse_cached
    d.host_names = sorted(
        (h, rname(name), name, cat, ind, first[k], last_us, count[k])
        for k, (last_us, cat, ind) in latest.items()
        for h, name in (k,)
    )

    pdns = d.pdns
    for r in ordered:
        if r[7] is not None and r[4] == "dns_answer":
            for answer in loads_set(r[7]):
                key = (r[5], str(answer))
                a = pdns.get(key)
                if a is None:
                    pdns[key] = Agg(r[1], r[1], 1)
                else:
                    a.last_us = r[1]
                    a.count += 1
    for r in repeats:
        h, c, s, t = r[2], r[16], r[3], r[1]
        d.hosts.setdefault(h, Agg(t, t)).sensors.add(s)
        d.host_category.setdefault((h, c), Agg(t, t)).sensors.add(s)
    return d


Counts = tuple[int, int, int, int]  # first_us, last_us, count, allowlisted


def merge_counts(old: Counts | None, new: Agg) -> Counts:
    """(first, last, count, allowlisted) after adding ``new`` to a stored row (or none)."""
    if old is None:
        return (new.first_us, new.last_us, new.count, new.allowlisted)
    first, last, count, allowlisted = old
    return (
        min(first, new.first_us),
        max(last, new.last_us),
        count + new.count,
        allowlisted + new.allowlisted,
    )


def merge_set(old_json: str | None, new: set[str], bound: int) -> str:
    """A stored bounded set (JSON, or none yet) with ``new`` added."""
    if old_json is None:
        return dumps_set(bounded_union([], new, bound))
    old = loads_set(old_json)
    if new.issubset(old) or len(old) >= bound:
        return old_json  # nothing to add (the common case): keep the stored text
    return dumps_set(bounded_union(old, new, bound))


def merge_verdict(stored: Sequence[Any], found: list[tuple[str, str, str]]) -> tuple[str, str, str]:
    """(verdict, confidence, evidence JSON) of a host row after a batch: the stored ones
    ('' for none yet, or a store from before verdicts) with the batch's added."""
    text, conf, evidence = (*stored, None, None, None)[:3]
    old = (
        Verdict(text, conf or "low", tuple(json.loads(evidence or "[]")))
        if text in VERDICTS
        else None
    )
    new = merge(old, found)
    if new is None:
        return "", "", "[]"
    return new.verdict, new.confidence, json.dumps(list(new.evidence))
