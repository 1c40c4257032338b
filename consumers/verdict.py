"""Host verdicts: what a host's hits, taken together, say it runs.

A single hit is weak evidence: a VPN sends a Kaspersky name as a decoy SNI, a saved page
makes a clean browser fetch Kaspersky's web-AV script, a bank embeds Kaspersky's fraud
prevention. The consumers see every sensor, so they weigh all of a host's hits:

- ``installed``: an update download (updater path, file magic, User-Agent: weaker),
  install evidence (update, KSN telemetry, activation) backed by a DNS answer or a
  Kaspersky prefix, or looked up in DNS;
- ``management`` / ``oem-engine``: the same for Security Center and embedded engines;
- ``unverified-name``: Kaspersky names seen only as SNI/Host to addresses nothing ties to
  them (``backed_by: none``): the decoy pattern;
- ``web-artefact``: only web artefacts (script tags, fraud prevention, shop images) and
  Kaspersky web sites.

The host's verdict is the strongest one its evidence reaches, with the best confidence
seen for it and the evidence (a few lines) that led there. Bounded: the hosts seen last.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from kaspwatch.event import Event

VERDICTS: Final = ("installed", "management", "oem-engine", "unverified-name", "web-artefact")
STRONG: Final = frozenset({"installed", "management", "oem-engine"})
_RANK: Final = {v: len(VERDICTS) - i for i, v in enumerate(VERDICTS)}  # installed highest
CONFIDENCES: Final = ("low", "medium", "high")
_CONF: Final = {c: i for i, c in enumerate(CONFIDENCES)}
CONTENT_KINDS: Final = frozenset({"http_request", "file_magic"})
DNS_KINDS: Final = frozenset({"dns_query", "dns_answer"})
MAX_EVIDENCE: Final = 5
MAX_HOSTS: Final = 200_000
REASONS: Final = {
    "installed": "Kaspersky code runs there: an update download, or install traffic tied to "
    "its destination by DNS or a Kaspersky prefix",
    "management": "a Kaspersky Security Center reached through DNS or a Kaspersky prefix",
    "oem-engine": "an embedded Kaspersky engine's traffic backed by DNS or a Kaspersky prefix",
    "unverified-name": "Kaspersky names only as SNI/Host to addresses no DNS answer or "
    "Kaspersky prefix ties to them (a VPN's decoy SNI looks so); nothing shows Kaspersky code "
    "on the host",
    "web-artefact": "only web artefacts (a page's web-AV script tag, a bank's fraud "
    "prevention, shop images, Kaspersky web sites); nothing shows Kaspersky code on the host",
}
_STRONG_ROLE: Final = {"install": "installed", "management": "management", "oem": "oem-engine"}


@dataclass(frozen=True, slots=True)
class Verdict:
    verdict: str
    confidence: str
    evidence: tuple[str, ...]

    @property
    def strong(self) -> bool:
        return self.verdict in STRONG

    @property
    def reason(self) -> str:
        return REASONS[self.verdict]

    def to_dict(self) -> dict[str, object]:
        return {
            "verdict": self.verdict,
            "confidence": self.confidence,
            "evidence": list(self.evidence),
            "reason": self.reason,
        }


def classify(event: Event) -> tuple[str, str, str] | None:
    """(verdict, confidence, evidence line) one hit supports; None for the canary."""
    ind = event.indicator
    if ind is None:
        return None
    role = ind.role
    if role == "canary":
        return None
    backed = event.extra.get("backed_by", "unknown")  # older sensors: not said; trusted
    line = f"{event.kind} {event.name} [{ind.id}] backed_by {backed}"
    confidence = ind.confidence if ind.confidence in _CONF else "low"
    if role in ("web", "portal"):
        return "web-artefact", confidence, line
    if event.kind in CONTENT_KINDS:  # what an updater does: no name needed
        return _STRONG_ROLE.get(role, "installed"), confidence, line
    if backed == "none" and event.kind not in DNS_KINDS:
        return "unverified-name", "low", line
    if role == "infrastructure":  # a catch-all zone or a prefix: Kaspersky, purpose unknown
        return "installed", "low", line
    return _STRONG_ROLE.get(role, "installed"), confidence, line


# evidence lines, strongest kind first: a download, an updater request, a connection, DNS
_KIND_ORDER: Final = {"file_magic": 0, "http_request": 1, "ip_flow": 3, "dns_query": 4,
                      "dns_answer": 4}  # fmt: skip


def _line_order(line: str) -> tuple[int, str]:
    return _KIND_ORDER.get(line.split(" ", 1)[0], 2), line


def merge(
    old: Verdict | None, found: list[tuple[str, str, str]], bound: int = MAX_EVIDENCE
) -> Verdict | None:
    """A stored verdict with new hits' classifications added: the strongest verdict wins;
    at the same verdict the best confidence and the evidence lines gathered, the first
    ``bound`` in sorted order, so a store fed the same hits in any batches agrees."""
    best = old
    for verdict, confidence, line in found:
        if best is None or _RANK[verdict] > _RANK[best.verdict]:
            best = Verdict(verdict, confidence, (line,))
        elif verdict == best.verdict:
            conf = max(best.confidence, confidence, key=_CONF.__getitem__)
            lines = best.evidence
            if line not in lines:
                lines = tuple(sorted((*lines, line), key=_line_order)[:bound])
            best = Verdict(verdict, conf, lines)
    return best


class Verdicts:
    def __init__(self, max_hosts: int = MAX_HOSTS) -> None:
        self.max_hosts = max_hosts
        # host -> verdict -> (confidence rank, evidence lines)
        self._hosts: OrderedDict[str, dict[str, tuple[int, tuple[str, ...]]]] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._hosts)

    def get(self, host: str) -> Verdict | None:
        seen = self._hosts.get(host)
        if not seen:
            return None
        best = max(seen, key=_RANK.__getitem__)
        rank, lines = seen[best]
        return Verdict(best, CONFIDENCES[rank], lines)

    def feed(self, event: Event) -> tuple[Verdict | None, Verdict | None]:
        """The host's verdict before and after this hit."""
        host = event.host
        before = self.get(host)
        found = classify(event)
        if found is None:
            return before, before
        verdict, confidence, line = found
        seen = self._hosts.get(host)
        if seen is None:
            seen = self._hosts[host] = {}
            if len(self._hosts) > self.max_hosts:
                self._hosts.popitem(last=False)
                self.evicted += 1
        else:
            self._hosts.move_to_end(host)
        rank, lines = seen.get(verdict, (0, ()))
        if line not in lines:
            lines = (
                (line, *lines)[:MAX_EVIDENCE]
                if _CONF[confidence] > rank
                else ((*lines, line)[:MAX_EVIDENCE])
            )
        seen[verdict] = (max(rank, _CONF[confidence]), lines)
        return before, self.get(host)
