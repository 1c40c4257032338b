"""Name patterns for the store: reversed labels make "everything under a zone" an index range.

Names are stored with a second column, ``rname``: the labels in reverse order
(``dnl-01.geo.kaspersky.com`` → ``com.kaspersky.geo.dnl-01``). A zone's names then share
a prefix, and ``prefix <= rname < prefix-with-last-char-bumped`` is a B-tree range scan in
SQLite and in PostgreSQL (the column has the binary ``C`` collation there). IP literals
(the names of unattributed ``ip_flow`` hits) are stored as they are.

Patterns, as ``kaspwatch query name`` and ``dns`` take them:

- ``kaspersky.com``: that name and every name under it, on label boundaries (a zone);
- ``*.kaspersky.com``: only the names under it;
- an exact name with ``exact=True`` (``--exact``); an IP address is always exact.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


def reverse_name(name: str) -> str:
    """The stored ``rname`` of a name."""
    if _is_ip(name):
        return name
    return ".".join(reversed(name.split(".")))


def _is_ip(text: str) -> bool:
    if ":" not in text and not text[-1:].isdigit():
        return False  # a DNS name (TLDs are not numeric): skip the costly parse
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class PatternError(ValueError):
    """A name pattern that cannot be searched."""


@dataclass(frozen=True, slots=True)
class NameMatch:
    """What a pattern selects: ``rname = exact`` and/or ``low <= rname < high``."""

    exact: str | None
    low: str | None
    high: str | None

    def where(self, column: str = "rname") -> tuple[str, list[str]]:
        """SQL condition (``?`` placeholders) and its parameters."""
        parts: list[str] = []
        params: list[str] = []
        if self.exact is not None:
            parts.append(f"{column} = ?")
            params.append(self.exact)
        if self.low is not None and self.high is not None:
            parts.append(f"({column} >= ? AND {column} < ?)")
            params += [self.low, self.high]
        return "(" + " OR ".join(parts) + ")", params

    def matches(self, rname: str) -> bool:
        if self.exact is not None and rname == self.exact:
            return True
        return self.low is not None and self.high is not None and self.low <= rname < self.high


def parse_pattern(pattern: str, exact: bool = False) -> NameMatch:
    text = pattern.strip().lower().rstrip(".")
    if _is_ip(text.strip("[]")):
        return NameMatch(str(ipaddress.ip_address(text.strip("[]"))), None, None)
    subdomains_only = text.startswith("*.")
    if subdomains_only:
        text = text[2:]
    # no whitespace nor control characters: a NUL is an error in PostgreSQL's text
    if not text or "*" in text or not text.isprintable() or " " in text or ".." in text:
        raise PatternError(
            f"name pattern {pattern[:300]!r}: expected NAME, ZONE or *.ZONE (one leading '*.' "
            "at most)"
        )
    rname = reverse_name(text)
    if exact and not subdomains_only:
        return NameMatch(rname, None, None)
    low = rname + "."
    high = rname + chr(ord(".") + 1)  # '/': the first string past every 'rname.' prefix
    return NameMatch(None if subdomains_only else rname, low, high)
