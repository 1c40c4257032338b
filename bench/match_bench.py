"""Indicator lookups per second on one core, for a realistic name mix, against the full pack.

    .venv/bin/python bench/match_bench.py [--names 200000] [--runs 5] [--kaspersky-share 0.02]

The mix: names a monitored network resolves all day (operating-system and cloud
services, CDNs with hashed labels, reverse lookups, local service discovery), a share of
Kaspersky names (every exact/range name of the pack plus random hosts under its zones),
and lookalikes. The peer is the obvious implementation: test every pattern in turn
(``==`` / ``endswith('.' + zone)``), as a script over a blocklist would. Prints the median
of the runs and the ratio.
"""

from __future__ import annotations

import argparse
import random
import statistics
import string
import time
from collections.abc import Callable

from sensor.rules.indicators import expand_range, load_pack
from sensor.rules.match import Matcher

COMMON = """google.com googleapis.com gstatic.com youtube.com doubleclick.net microsoft.com
windowsupdate.com windows.com office.com office365.com live.com msftconnecttest.com azure.com
azureedge.net akamaiedge.net akamai.net cloudflare.com cloudfront.net amazonaws.com apple.com
icloud.com mzstatic.com facebook.com fbcdn.net whatsapp.net twitter.com linkedin.com
github.com githubusercontent.com slack.com zoom.us adobe.com digicert.com letsencrypt.org
sectigo.com ubuntu.com debian.org mozilla.org firefox.com sophos.com eset.com
mcafee.com symantec.com trendmicro.com crowdstrike.com sentinelone.net paloaltonetworks.com
fortinet.com cisco.com vmware.com citrix.com salesforce.com servicenow.com okta.com
example.com example.org co.uk bbc.co.uk gov.uk nhs.uk""".split()  # noqa: SIM905


def realistic_names(n: int, share: float, rng: random.Random) -> list[str]:
    pack = load_pack()
    kasp: list[str] = []
    zones: list[str] = []
    for ind in pack.indicators:
        if ind.match == "exact":
            kasp.append(ind.pattern)
        elif ind.match == "range":
            kasp.extend(expand_range(ind.pattern))
        elif ind.match == "suffix":
            zones.append(ind.pattern)
        elif ind.match == "wildcard":
            kasp.append(ind.pattern.replace("*", "file"))
    lookalikes = ["notkaspersky.com", "kaspersky.com.evil.example", "mykaspersky-labs.com.example"]

    def label() -> str:
        return "".join(rng.choices(string.ascii_lowercase + string.digits, k=rng.randint(3, 12)))

    out = []
    for _ in range(n):
        r = rng.random()
        if r < share * 0.6:
            out.append(rng.choice(kasp))
        elif r < share:
            out.append(f"{label()}.{rng.choice(zones)}")
        elif r < share + 0.01:
            out.append(rng.choice(lookalikes))
        elif r < 0.12:
            out.append(
                f"{rng.randint(1, 254)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.10.in-addr.arpa"
            )
        elif r < 0.15:
            out.append(f"{label()}._tcp.local")
        elif r < 0.35:
            out.append(f"{label()}-{label()}.{rng.choice(COMMON)}")
        else:
            host = rng.choice(["www", "api", "cdn", "login", "update", "ocsp"])
            out.append(f"{host}.{rng.choice(COMMON)}")
    return out


def naive(pack_patterns: list[tuple[str, bool]]) -> Callable[[str], str | None]:
    def match(name: str) -> str | None:
        for pattern, is_suffix in pack_patterns:
            if name == pattern or (is_suffix and name.endswith("." + pattern)):
                return pattern
        return None

    return match


def rate(fn: Callable[[str], object], names: list[str]) -> float:
    t = time.perf_counter()
    for name in names:
        fn(name)
    return len(names) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--names", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--kaspersky-share", type=float, default=0.02)
    args = ap.parse_args()
    rng = random.Random(20240929)
    names = realistic_names(args.names, args.kaspersky_share, rng)
    pack = load_pack()
    matcher = Matcher(pack)
    patterns = [
        (p, i.match == "suffix")
        for i in pack.indicators
        if i.match != "cidr"
        for p in (expand_range(i.pattern) if i.match == "range" else [i.pattern])
    ]
    hits = sum(1 for n in names if matcher.match_name(n) is not None)
    ours = statistics.median(rate(matcher.match_name, names) for _ in range(args.runs))
    peer_names = names[: max(1, len(names) // 10)]
    peer = statistics.median(rate(naive(patterns), peer_names) for _ in range(args.runs))
    print(f"pack: {len(pack.indicators)} indicators ({len(patterns)} name patterns expanded)")
    print(f"mix: {len(names)} names, {hits} hits ({100 * hits / len(names):.1f}%)")
    print(f"kaspwatch matcher: {ours:,.0f} lookups/s (median of {args.runs}, one core)")
    print(f"naive scan (peer): {peer:,.0f} lookups/s")
    print(
        f"ratio: {ours / peer:.0f}x; target >= 1,000,000/s: {'met' if ours >= 1e6 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
