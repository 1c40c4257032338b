"""A hit's indicator is a claim: check it against our own pack before acting on it.

Anyone who can write the hits topic can claim any indicator for any name (a critical
activation hit for ``www.google.com``). A consumer that decides on hits (the alerts
consumer) re-matches the name against the pack it loaded itself: a hit that matches
nothing is refused (an ``EventError``, so the consume loop dead-letters it with the
reason); a hit that matches is acted on with *our* indicator, and a different claimed
one is kept for the record as ``claimed_indicator``. A ``resolver_bypass`` claim is kept
only when the resolver really is a public one.

This lives with the matcher (``sensor.rules``); consumers must not import the sensor, so
the command line builds the check and hands it to the consume loop as part of parsing.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable

from kaspwatch.event import Event, EventError, show
from sensor.resolvers import PUBLIC_RESOLVERS
from sensor.rules.indicators import Indicator
from sensor.rules.match import Matcher


def _text(ev: Event, key: str) -> str | None:
    value = ev.extra.get(key)
    return value if isinstance(value, str) else None


def _content(matcher: Matcher, ev: Event) -> Indicator | None:
    """A content signal re-matched on what its event publishes: the request's path (and
    User-Agent), or the body's magic with the path that asked for it."""
    path = _text(ev, "path")
    if ev.kind == "http_request":
        return matcher.match_request(path, _text(ev, "user_agent"))
    magic = _text(ev, "magic")
    if magic is None:
        return None
    asked = matcher.match_request(path, None)
    signal = asked is not None and asked.match == "path"
    return matcher.match_magic(magic.encode("latin-1", "replace"), signal)


def _own(matcher: Matcher, ev: Event) -> Indicator | None:
    assert ev.indicator is not None
    if ev.kind in ("http_request", "file_magic"):
        return _content(matcher, ev)
    if ev.kind == "ip_flow":
        try:
            addr = ipaddress.ip_address(ev.name)
        except ValueError:  # a flow attributed by DNS: the name is the watched name
            found = matcher.match_name(ev.name, "dns_query")
        else:
            found = matcher.match_ip(addr.packed)
        return found or matcher.match_ip(ipaddress.ip_address(ev.dst_ip).packed)
    found = matcher.match_name(ev.name, ev.kind)
    if found is not None or matcher.excluded(ev.name):
        return found
    # An HTTP indicator bound to a path: the event does not carry the path, so the
    # claimed indicator stands if it is ours and covers the name.
    for ind, _ in matcher.candidates(ev.name):
        if ind.id == ev.indicator.id and ind.path_prefix is not None:
            return ind
    return None


def _bypassed(ev: Event) -> bool:
    resolver = ev.dst_ip if ev.kind == "dns_query" else ev.src_ip
    return ev.kind in ("dns_query", "dns_answer") and (
        ipaddress.ip_address(resolver).packed in PUBLIC_RESOLVERS
    )


def hit_verifier(matcher: Callable[[], Matcher]) -> Callable[[Event], Event]:
    """``verify(event)``: the event with our indicator, or EventError for a hit our pack
    does not match. ``matcher`` is asked each time (a reload swaps it)."""

    def verify(ev: Event) -> Event:
        if ev.indicator is None:
            return ev  # an observation claims nothing
        ind = _own(matcher(), ev)
        if ind is None:
            raise EventError(
                f"hit for {show(ev.name)} claims indicator {show(ev.indicator.id)}, "
                "which this consumer's pack does not match: not acted on"
            )
        extra = dict(ev.extra)
        if ind.ref != ev.indicator:
            extra["claimed_indicator"] = ev.indicator.to_dict()
        if extra.get("resolver_bypass") and not _bypassed(ev):
            extra["claimed_resolver_bypass"] = extra.pop("resolver_bypass")
        return dataclasses.replace(ev, indicator=ind.ref, extra=extra)

    return verify
