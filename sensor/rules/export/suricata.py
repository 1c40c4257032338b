"""Suricata rules (checked with Suricata 8.0.6): one rule per indicator and place it applies.

Names: ``dns.query``, ``tls.sni``, ``quic.sni``, ``http.host``; a suffix zone is
``dotprefix; content:".zone"; endswith`` (the zone itself and every name under it, on a label
boundary), an exact name ``content; bsize``, a range or wildcard the zone's ``endswith`` plus an
anchored ``pcre``; pack exclusions inside a zone become a negated ``pcre`` on that rule.
Prefixes: ``alert ip any any -> [prefix] any`` with a per-host-pair limit.

sid: ``SID_BASE + sha256("<id>/<kind>") mod SID_SPAN``, so an indicator keeps its sids across
pack versions and other indicators; on a collision the later rule (in file order) takes the
next free number.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

from sensor.rules.export.view import CONTENT, PackView, network, reference
from sensor.rules.indicators import Exclusion, Indicator, expand_range

SID_BASE: Final = 3_700_000_000
SID_SPAN: Final = 100_000_000
PRIORITY: Final = {"high": 1, "medium": 2, "low": 3, "info": 4}
# pack "where" -> (rule kind, app-layer protocol, sticky buffer)
BUFFERS: Final = {
    "dns": (("dns", "dns", "dns.query"),),
    "sni": (("tls", "tls", "tls.sni"), ("quic", "quic", "quic.sni")),
    "http": (("http", "http", "http.host"),),
}
IP_LIMIT: Final = "threshold:type limit,track by_both,count 1,seconds 3600"

CANNOT: Final = [
    "What these rules cannot express (kaspwatch's own sensor does it):",
    "- most specific wins: kaspwatch reports one indicator per name (exact, then wildcard, then",
    "  the longest zone); here every rule that matches alerts (a range name also fires its zone).",
    "- DNS answers: names reached through CNAME chains (kind dns_answer); dns.query is the question.",
    "- flows to addresses a watched name resolved to (ip_flow attributed by DNS): only the fixed",
    "  prefixes below; and an IP rule alerts once an hour per host pair, not once per flow.",
    "- HTTP CONNECT targets: http.host is the Host header, which a CONNECT may not carry.",
    "- the site allowlist (--allowlist): sanctioned exceptions stay in kaspwatch.",
    "- content signals: the updater path is matched on http.uri (with its query string, where",
    "  kaspwatch reads the path alone); the DIFF body magic counts only after an updater path",
    "  request in kaspwatch and is left out here (listed below).",
]


def _sid(ind_id: str, kind: str, used: set[int]) -> int:
    digest = hashlib.sha256(f"{ind_id}/{kind}".encode()).digest()
    sid = SID_BASE + int.from_bytes(digest[:8], "big") % SID_SPAN
    while sid in used:
        sid = SID_BASE + (sid - SID_BASE + 1) % SID_SPAN
    used.add(sid)
    return sid


def _rx(name: str) -> str:
    return re.escape(name).replace("/", r"\/")


def _carve(excl: list[Exclusion]) -> str:
    """A negated pcre dropping the excluded names (the buffer may carry dotprefix's dot)."""
    if not excl:
        return ""
    alts = "|".join(
        _rx(e.pattern) if e.match == "exact" else rf"(?:.*\.)?{_rx(e.pattern)}" for e in excl
    )
    return rf' pcre:!"/^\.?(?:{alts})$/i";'


def _match(ind: Indicator, buffer: str) -> str:
    nocase = "" if buffer == "http.host" else " nocase;"  # http.host is already lowercase
    if ind.match == "exact":
        return f' content:"{ind.pattern}";{nocase} bsize:{len(ind.pattern)};'
    if ind.match == "suffix":
        return f' dotprefix; content:".{ind.pattern}";{nocase} endswith;'
    if ind.match == "range":
        names = expand_range(ind.pattern)
        parent = names[0].split(".", 1)[1]
        rx = "(?:" + "|".join(n.split(".", 1)[0] for n in names) + ")"
    else:  # wildcard: one '*' inside the leftmost label, as the matcher reads it
        first, parent = ind.pattern.split(".", 1)
        rx = _rx(first).replace(r"\*", "[a-z0-9_-]*")
    return f' content:".{parent}";{nocase} endswith; pcre:"/^{rx}\\.{_rx(parent)}$/i";'


def _meta(ind: Indicator, view: PackView) -> str:
    pack_version = view.version
    return (
        f" metadata:kaspwatch_id {ind.id}, kaspwatch_category {ind.category}, "
        f"kaspwatch_severity {ind.severity}, kaspwatch_confidence {ind.confidence}, "
        f"kaspwatch_match {ind.match}, kaspwatch_pack {ind.pack}, "
        f"kaspwatch_pack_version {pack_version};"
    )


def _tail(ind: Indicator, view: PackView, sid: int) -> str:
    ref = reference(ind)
    refs = f" reference:url,{ref.split('://', 1)[1]};" if ref else ""
    return f"{_meta(ind, view)}{refs} priority:{PRIORITY[ind.severity]}; sid:{sid}; rev:1;)"


def _pcre(pattern: str, anchored: bool) -> str:
    body = pattern.replace("/", r"\/").replace('"', r"\x22").replace(";", r"\x3b")
    return f'pcre:"/{"^" if anchored else ""}{body}{"$" if anchored else ""}/";'


def _content(ind: Indicator, head: str) -> str | None:
    """A rule for a content signal, up to its ``_tail``; None when Suricata cannot say it."""
    if ind.match == "path":
        return f'alert http any any -> any any (msg:"{head} (http.uri)"; http.uri; {_pcre(ind.pattern, False)}'
    if ind.match == "user_agent":
        return (
            f'alert http any any -> any any (msg:"{head} (http.user_agent)"; '
            f"http.user_agent; {_pcre(ind.pattern, True)}"
        )
    if ind.with_path_signal:
        return None  # DIFF: only together with an updater path
    return (
        f'alert http any any -> any any (msg:"{head} (file.data)"; flow:to_client,established; '
        f'file.data; content:"{ind.pattern}"; startswith;'
    )


def rules(view: PackView) -> tuple[list[str], list[str]]:
    """The rule lines, and the indicators left out (with why)."""
    out: list[str] = []
    left_out: list[str] = []
    used: set[int] = set()
    for ind in view.indicators:
        if view.fully_excluded(ind):
            left_out.append(f"- {ind.id} ({ind.pattern}): every name is under a pack exclusion")
            continue
        head = f"kaspwatch {ind.category}/{ind.severity} {ind.id}: {ind.pattern}"
        if ind.match in CONTENT:
            rule = _content(ind, head)
            if rule is None:
                left_out.append(f"- {ind.id} ({ind.pattern}): only after an updater path request")
            else:
                out.append(rule + _tail(ind, view, _sid(ind.id, "http", used)))
            continue
        if ind.match == "cidr":
            sid = _sid(ind.id, "ip", used)
            out.append(
                f"alert ip any any -> [{network(ind)}] any "
                f'(msg:"{head} (ip)"; {IP_LIMIT};{_tail(ind, view, sid)}'
            )
            continue
        carve = _carve(view.carve_outs(ind))
        for where in sorted(ind.where):
            for kind, proto, buffer in BUFFERS[where]:
                sid = _sid(ind.id, kind, used)
                path = ""
                if ind.path_prefix:
                    path = f' http.uri.raw; content:"{ind.path_prefix}"; startswith;'
                out.append(
                    f"alert {proto} any any -> any any "
                    f'(msg:"{head} ({buffer})"; {buffer};{_match(ind, buffer)}{carve}{path}'
                    f"{_tail(ind, view, sid)}"
                )
    return out, left_out


def write(view: PackView, out_name: str) -> dict[str, str]:
    lines, left_out = rules(view)
    head = [*view.header("suricata"), f"rules: {len(lines)}", ""]
    head += [
        f"sid = {SID_BASE} + (sha256('<indicator id>/<kind>') mod {SID_SPAN}), kind one of",
        "dns tls quic http ip; stable across pack versions; a collision takes the next free sid.",
        "priority: severity high 1, medium 2, low 3, info 4. Needs Suricata 7 or later",
        "(dotprefix, bsize, quic.sni); checked with Suricata 8.0.6.",
        "",
        *CANNOT,
        *(["", "Indicators not exported:", *left_out] if left_out else []),
    ]
    text = "".join(f"# {h}".rstrip() + "\n" for h in head) + "\n" + "\n".join(lines) + "\n"
    return {out_name: text}
