"""Public resolvers Kaspersky products fall back to when internal DNS does not answer.

Kaspersky documents the fallback (KES, Safe Kids, Security Center for Linux and Cloud
Console): 8.8.8.8, 1.1.1.1, 223.6.6.6, 9.9.9.9, 185.228.168.168. A watched name asked
of one of them from inside a network that blocks Kaspersky is resolver bypass: exactly
what an enforced ban provokes. Sources: see the pack's not_yet_matchable row for the
fallback behaviour.
"""

from __future__ import annotations

import ipaddress
from typing import Final

PUBLIC_RESOLVERS: Final = frozenset(
    ipaddress.ip_address(a).packed
    for a in (
        # Google, Cloudflare, Quad9, AliDNS, CleanBrowsing: the documented five and their pairs
        "8.8.8.8", "8.8.4.4", "2001:4860:4860::8888", "2001:4860:4860::8844",
        "1.1.1.1", "1.0.0.1", "2606:4700:4700::1111", "2606:4700:4700::1001",
        "9.9.9.9", "149.112.112.112", "2620:fe::fe", "2620:fe::9",
        "223.6.6.6", "223.5.5.5", "2400:3200::1", "2400:3200:baba::1",
        "185.228.168.168", "185.228.169.168", "2a0d:2a00:1::", "2a0d:2a00:2::",
    )
)  # fmt: skip
