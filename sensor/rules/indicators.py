"""Indicator packs: load, validate (errors as ``file:line: message``), and describe.

A pack is YAML (``schema: kaspwatch-indicator-pack/1``); see ``sensor/packs/kaspersky.yaml``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from kaspwatch.event import CATEGORIES, EVIDENCE, EVIDENCE_BY_CATEGORY, SEVERITIES, IndicatorRef
from kaspwatch.yamlfile import YamlError, load_yaml

__all__ = ["PackError", "load_pack"]

PACK_SCHEMA: Final = "kaspwatch-indicator-pack/1"
MATCH_KINDS: Final = ("exact", "suffix", "wildcard", "range", "cidr", "path", "user_agent", "magic")
CONFIDENCES: Final = ("high", "medium", "low")
WHERES: Final = ("dns", "sni", "http", "ip", "http_path", "http_user_agent", "http_body")
# content signals: the match kind, the one place it is read, and what its pattern is
CONTENT_WHERE: Final = {"path": "http_path", "user_agent": "http_user_agent", "magic": "http_body"}
MAX_CONTENT_PATTERN: Final = 300
_ID: Final = re.compile(r"^[a-z0-9][a-z0-9-]{0,79}$")
_LABEL: Final = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")
_RANGE: Final = re.compile(r"\{(\d+)\.\.(\d+)\}")
# second-level public suffixes under country TLDs (co.uk, com.au, ...): a suffix pattern
# equal to one would match a whole country's commercial names
_PUBLIC_SECOND_LEVEL: Final = re.compile(
    r"^(co|com|net|org|gov|gob|edu|ac|or|ne|go|mil|ltd|plc)\.[a-z]{2}$"
)
MAX_RANGE: Final = 1000

# the shipped packs, beside the package's modules (an installed wheel unpacks them there;
# importlib.resources would cost the scan's start-up ≈ 5 ms of imports for the same path)
PACKS: Final = Path(__file__).resolve().parent.parent / "packs"


class PackError(YamlError):
    """An indicator pack or allowlist is invalid. ``str()`` is ``file:line: message``."""


@dataclass(frozen=True, slots=True)
class Indicator:
    id: str
    pattern: str
    match: str
    where: frozenset[str]
    category: str
    severity: str
    confidence: str
    evidence: str  # what a hit says about the host (kaspwatch.event.EVIDENCE)
    sources: tuple[str, ...]
    description: str
    ref: IndicatorRef = field(compare=False, repr=False)
    path_prefix: str | None = None  # HTTP only: the request path must start with this
    pack: str = ""  # name of the pack it came from
    with_path_signal: bool = False  # magic only: counts only after a path signal
    remediation: str = ""  # what to do next: the indicator's own, else its pack's category's


@dataclass(frozen=True, slots=True)
class Exclusion:
    pattern: str
    match: str  # exact | suffix
    reason: str


@dataclass(frozen=True, slots=True)
class Pack:
    name: str
    version: str
    path: str
    indicators: tuple[Indicator, ...]
    exclusions: tuple[Exclusion, ...]


def shipped_pack_path() -> Path:
    return PACKS / "kaspersky.yaml"


def shipped_pack_paths() -> list[Path]:
    """The Kaspersky pack and the canary (self-test) pack: what runs by default."""
    return [shipped_pack_path(), PACKS / "canary.yaml"]


def load_pack(path: str | Path | None = None) -> Pack:
    """Load and validate a pack; PackError names the file and line of the first problem."""
    path = Path(path) if path is not None else shipped_pack_path()
    where = str(path)
    doc, _ = load_yaml(path, PackError)
    if not isinstance(doc, dict):
        raise PackError(f"{where}:1: a pack is a mapping with 'schema' and 'indicators'")
    if doc.get("schema") != PACK_SCHEMA:
        raise PackError(f"{where}:1: schema must be {PACK_SCHEMA!r}, got {doc.get('schema')!r}")
    items = doc.get("indicators")
    if not isinstance(items, list) or not items:
        raise PackError(f"{where}:1: 'indicators' must be a non-empty list")
    seen: dict[str, int] = {}
    indicators = []
    pack_name = str(doc.get("name", path.stem))
    remediation = _remediation_table(where, doc.get("remediation"))
    for item in items:
        ind = _indicator(where, item, pack_name, remediation)
        line = item["__line__"]
        if ind.id in seen:
            raise PackError(
                f"{where}:{line}: duplicate id {ind.id!r} (first at line {seen[ind.id]})"
            )
        seen[ind.id] = line
        indicators.append(ind)
    exclusions = tuple(_exclusion(where, e) for e in doc.get("exclusions") or [])
    return Pack(
        name=pack_name,
        version=str(doc.get("version", "unversioned")),
        path=where,
        indicators=tuple(indicators),
        exclusions=exclusions,
    )


def _require(
    where: str, item: dict[str, Any], key: str, allowed: tuple[str, ...] | None = None
) -> str:
    line = item.get("__line__", 0)
    value = item.get(key)
    if not isinstance(value, str) or not value.strip():
        raise PackError(f"{where}:{line}: '{key}' is required and must be a non-empty string")
    if allowed is not None and value not in allowed:
        raise PackError(f"{where}:{line}: {key} {value!r} is not one of {', '.join(allowed)}")
    return value


def _remediation_table(where: str, table: object) -> dict[str, str]:
    """The pack's ``remediation`` mapping: category -> what to do next (optional)."""
    if table is None:
        return {}
    line = table.get("__line__", 1) if isinstance(table, dict) else 1
    if not isinstance(table, dict):
        raise PackError(f"{where}:{line}: remediation must be a mapping of category to text")
    out = {}
    for cat, text in table.items():
        if cat == "__line__":
            continue
        if cat not in CATEGORIES:
            raise PackError(
                f"{where}:{line}: remediation for {cat!r}: not a category ({', '.join(CATEGORIES)})"
            )
        if not isinstance(text, str) or not text.strip():
            raise PackError(f"{where}:{line}: remediation for {cat!r} must be non-empty text")
        out[cat] = " ".join(text.split())
    return out


def _indicator(
    where: str, item: object, pack_name: str, remediation: dict[str, str] | None = None
) -> Indicator:
    if not isinstance(item, dict):
        raise PackError(f"{where}: every indicator must be a mapping, got {item!r}")
    line = item["__line__"]
    ind_id = _require(where, item, "id")
    if not _ID.match(ind_id):
        raise PackError(f"{where}:{line}: id {ind_id!r} must be lowercase letters, digits and '-'")
    match = _require(where, item, "match", MATCH_KINDS)
    pattern = _require(where, item, "pattern")
    check_pattern(pattern, match, f"{where}:{line}")
    content = CONTENT_WHERE.get(match)
    default_where = [content] if content else ["ip"] if match == "cidr" else ["dns", "sni", "http"]
    wheres = item.get("where", default_where)
    if not isinstance(wheres, list) or not wheres or any(w not in WHERES for w in wheres):
        raise PackError(f"{where}:{line}: where must be a list drawn from {', '.join(WHERES)}")
    if (match == "cidr") != (wheres == ["ip"]):
        raise PackError(f"{where}:{line}: cidr indicators match where [ip], and only they do")
    if (wheres != [content]) if content else any(w in CONTENT_WHERE.values() for w in wheres):
        raise PackError(
            f"{where}:{line}: match {match} reads where [{content or 'dns, sni, http'}]: "
            "path -> [http_path], user_agent -> [http_user_agent], magic -> [http_body]"
        )
    with_path = item.get("with_path_signal", False)
    if not isinstance(with_path, bool) or (with_path and match != "magic"):
        raise PackError(f"{where}:{line}: with_path_signal is true or false, on magic indicators")
    category = _require(where, item, "category", CATEGORIES)
    severity = _require(where, item, "severity", SEVERITIES)
    confidence = _require(where, item, "confidence", CONFIDENCES)
    evidence = (
        _require(where, item, "evidence", EVIDENCE)
        if "evidence" in item
        else EVIDENCE_BY_CATEGORY[category]
    )
    sources = item.get("sources")
    if not isinstance(sources, list) or not sources or not all(isinstance(s, str) for s in sources):
        raise PackError(f"{where}:{line}: sources must be a non-empty list of strings")
    description = _require(where, item, "description")
    path_prefix = item.get("path_prefix")
    if path_prefix is not None and (
        not isinstance(path_prefix, str) or not path_prefix.startswith("/") or wheres != ["http"]
    ):
        raise PackError(
            f"{where}:{line}: path_prefix must be a string starting with '/', "
            "on an indicator whose where is [http]"
        )
    own = item.get("remediation")
    if own is not None and (not isinstance(own, str) or not own.strip()):
        raise PackError(f"{where}:{line}: remediation must be non-empty text")
    todo = " ".join(own.split()) if own else (remediation or {}).get(category, "")
    description = " ".join(description.split())
    if content is None:
        pattern = pattern.lower()
    return Indicator(
        id=ind_id,
        pattern=pattern,
        match=match,
        where=frozenset(wheres),
        category=category,
        severity=severity,
        confidence=confidence,
        evidence=evidence,
        sources=tuple(sources),
        description=description,
        ref=IndicatorRef(
            ind_id,
            pattern,
            match,
            category,
            severity,
            confidence,
            evidence=evidence,
            description=description,
            remediation=todo,
            sources=tuple(sources),
        ),
        path_prefix=path_prefix,
        pack=pack_name,
        with_path_signal=with_path,
        remediation=todo,
    )


def _exclusion(where: str, item: object) -> Exclusion:
    if not isinstance(item, dict):
        raise PackError(f"{where}: every exclusion must be a mapping, got {item!r}")
    match = _require(where, item, "match", ("exact", "suffix"))
    pattern = _require(where, item, "pattern")
    check_pattern(pattern, match, f"{where}:{item['__line__']}")
    return Exclusion(pattern.lower(), match, _require(where, item, "reason"))


def check_pattern(pattern: str, match: str, place: str) -> None:
    """Refuse patterns that are malformed or would match far more than Kaspersky."""
    if match in CONTENT_WHERE:
        check_content_pattern(pattern, match, place)
        return
    if match == "cidr":
        try:
            net = ipaddress.ip_network(pattern, strict=True)
        except ValueError as exc:
            raise PackError(f"{place}: bad cidr {pattern!r}: {exc}") from None
        too_wide = 8 if net.version == 4 else 19
        if net.prefixlen < too_wide:
            raise PackError(f"{place}: cidr {pattern} is too broad (shorter than /{too_wide})")
        if net.is_private or net.is_loopback or net.is_link_local or net.is_multicast:
            raise PackError(f"{place}: cidr {pattern} is private/special address space")
        return
    if pattern != pattern.lower() or pattern.endswith(".") or pattern.startswith("."):
        raise PackError(
            f"{place}: pattern {pattern!r} must be lowercase with no leading/trailing dot"
        )
    labels = _RANGE.sub("0", pattern).split(".") if match == "range" else pattern.split(".")
    if len(labels) < 2:
        raise PackError(f"{place}: pattern {pattern!r} is a bare TLD or single label; too broad")
    if (
        match in ("suffix", "wildcard")
        and _PUBLIC_SECOND_LEVEL.match(".".join(labels[-2:]))
        and (len(labels) == 2 or (match == "wildcard" and len(labels) == 3))
    ):
        raise PackError(f"{place}: pattern {pattern!r} covers a public suffix; too broad")
    first, rest = labels[0], labels[1:]
    for label in rest:
        if not _LABEL.match(label):
            raise PackError(f"{place}: pattern {pattern!r} has a bad label {label!r}")
    if match == "wildcard":
        if first.count("*") != 1 or first == "*":
            raise PackError(
                f"{place}: wildcard {pattern!r} needs exactly one '*' inside the leftmost label "
                "(a bare '*' label is a suffix match)"
            )
        if not _LABEL.match(first.replace("*", "x")):
            raise PackError(f"{place}: pattern {pattern!r} has a bad label {first!r}")
    elif match == "range":
        m = _RANGE.search(pattern)
        if m is None or len(_RANGE.findall(pattern)) != 1 or "." in pattern[: m.start()]:
            raise PackError(f"{place}: range {pattern!r} needs one {{a..b}} in the leftmost label")
        lo, hi = int(m.group(1)), int(m.group(2))
        if lo > hi or hi - lo >= MAX_RANGE:
            raise PackError(f"{place}: range {m.group(0)} is empty or longer than {MAX_RANGE}")
        if not _LABEL.match(first):
            raise PackError(f"{place}: pattern {pattern!r} has a bad label {first!r}")
    elif not _LABEL.match(first):
        raise PackError(f"{place}: pattern {pattern!r} has a bad label {first!r}")


def check_content_pattern(pattern: str, match: str, place: str) -> None:
    """A ``magic`` is 4 printable ASCII bytes; a ``path`` or ``user_agent`` pattern is a
    regular expression (searched in the request path without its query, case-insensitive;
    matched against the whole User-Agent) that must compile and cannot match everything."""
    if match == "magic":
        if len(pattern) != 4 or not pattern.isascii() or not pattern.isprintable():
            raise PackError(f"{place}: magic {pattern!r} must be 4 printable ASCII characters")
        return
    if len(pattern) > MAX_CONTENT_PATTERN:
        raise PackError(f"{place}: {match} pattern longer than {MAX_CONTENT_PATTERN} characters")
    try:
        rx = re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise PackError(f"{place}: {match} pattern {pattern!r} is not a regex: {exc}") from None
    if rx.search("") is not None or rx.search("/") is not None:
        raise PackError(f"{place}: {match} pattern {pattern!r} matches an empty or root value")


def expand_range(pattern: str) -> list[str]:
    """``s{00..19}.upd.x`` -> s00.upd.x ... s19.upd.x (zero padding follows the bound's width)."""
    m = _RANGE.search(pattern)
    if m is None:
        return [pattern]
    lo_s, hi_s = m.group(1), m.group(2)
    width = len(lo_s) if lo_s.startswith("0") and len(lo_s) > 1 else 0
    return [
        pattern[: m.start()] + str(n).zfill(width) + pattern[m.end() :]
        for n in range(int(lo_s), int(hi_s) + 1)
    ]
