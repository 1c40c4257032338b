"""Which address is the Kaspersky endpoint and which the DNS resolver, per event kind.

For a DNS query the packet goes to the resolver, and for an answer it comes from it: the
resolver is not Kaspersky. The Kaspersky endpoint of a DNS hit is its name, with the
answer's first address when there is one; for every other kind it is the destination.
"""

from __future__ import annotations

from kaspwatch.event import Event

DNS_KINDS = frozenset({"dns_query", "dns_answer"})


def kaspersky_endpoint(ev: Event) -> tuple[str | None, int | None]:
    """(address, port) of the Kaspersky side; None where the event does not show it."""
    if ev.kind == "dns_answer":
        return (ev.answers[0] if ev.answers else None), None
    if ev.kind == "dns_query":
        return None, None
    return ev.dst_ip, ev.dst_port


def resolver(ev: Event) -> tuple[str, int] | None:
    """(address, port) of the DNS resolver that was asked; None for other kinds."""
    if ev.kind == "dns_answer":
        return ev.src_ip, ev.src_port
    if ev.kind == "dns_query":
        return ev.dst_ip, ev.dst_port
    return None
