"""A Zeek Intel framework file plus the script its suffix, wildcard and path matches need.

The Intel framework matches a DOMAIN only when the seen name equals it, so the file lists exact
names, range names and each suffix zone; the script walks the parents of every DNS query, TLS/QUIC
SNI and HTTP Host and reports the nearest watched zone to ``Intel::seen`` (skipping pack
exclusions), tries the wildcards' patterns, and reports the path-limited HTTP indicators as
``Intel::URL``. Format per Zeek's input reader (``src/input/readers/ascii/Ascii.cc``: lines
starting with ``#`` other than ``#fields`` are skipped) and its intel tests.
"""

from __future__ import annotations

import re
from pathlib import PurePath

from sensor.rules.export.view import CONTENT, PackView, reference
from sensor.rules.indicators import Indicator, expand_range

FIELDS = ("indicator", "indicator_type", "meta.source", "meta.desc", "meta.url")

CANNOT = [
    "What the Intel framework cannot express (kaspwatch's own sensor does it):",
    "- where: an Intel::DOMAIN matches wherever Zeek's seen scripts see the name (DNS request,",
    "  TLS SNI, HTTP Host, certificate CN), not only where the pack allows it.",
    "- most specific wins: a name that is an exact indicator and under a zone can match twice.",
    "- DNS answers (CNAME chains) and flows to addresses a watched name resolved to.",
    "- the site allowlist (--allowlist).",
    "Not loaded by a real Zeek (not installable where it was built): checked against the format",
    "of Zeek's input reader and the intel files of Zeek's own tests.",
]


def _clean(text: str) -> str:
    return " ".join(text.split()) or "-"


def _desc(ind: Indicator) -> str:
    return _clean(
        f"{ind.id} {ind.category}/{ind.severity} confidence {ind.confidence} "
        f"({ind.match} {ind.pattern}): {ind.description}"
    )


def _rows(view: PackView) -> list[tuple[str, str, Indicator]]:
    rows: list[tuple[str, str, Indicator]] = []
    for ind in view.indicators:
        if view.fully_excluded(ind) or ind.match in CONTENT:
            continue  # content signals: listed as left out in the header
        if ind.match == "cidr":
            kind = "Intel::ADDR" if ind.pattern.endswith(("/32", "/128")) else "Intel::SUBNET"
            rows.append((ind.pattern, kind, ind))
        elif ind.path_prefix:
            rows.append((f"{ind.pattern}{ind.path_prefix}", "Intel::URL", ind))
        elif ind.match == "range":
            carved = {e.pattern for e in view.carve_outs(ind)}
            rows += [
                (n, "Intel::DOMAIN", ind) for n in expand_range(ind.pattern) if n not in carved
            ]
        else:  # exact, a suffix zone itself, a wildcard's own text (the script reports it)
            rows.append((ind.pattern, "Intel::DOMAIN", ind))
    return rows


def _intel(view: PackView, rows: list[tuple[str, str, Indicator]]) -> str:
    content = [f"- {i.id} ({i.match} {i.pattern})" for i in view.content()]
    head = [*view.header("zeek-intel"), f"items: {len(rows)}", "", *CANNOT]
    if content:
        head += [
            "- content signals (an updater's request path or User-Agent, a body's magic):",
            *content,
        ]
    lines = [f"# {h}".rstrip() for h in head]
    lines.append("#fields\t" + "\t".join(FIELDS))
    for value, kind, ind in rows:
        source = f"kaspwatch {ind.pack} {view.version}"
        lines.append("\t".join((value, kind, source, _desc(ind), reference(ind) or "-")))
    return "\n".join(lines) + "\n"


def _set(values: list[str]) -> str:
    if not values:
        return "set()"
    return "{\n" + ",\n".join(f'\t\t"{v}"' for v in values) + "\n\t}"


def _script(view: PackView, intel_name: str) -> str:
    live = [i for i in view.names() if not view.fully_excluded(i)]
    zones = sorted({i.pattern for i in live if i.match == "suffix" and not i.path_prefix})
    wild = sorted({i.pattern for i in live if i.match == "wildcard"})
    paths = sorted({(i.pattern, i.path_prefix) for i in live if i.path_prefix})
    excl = [e.pattern for e in view.exclusions if e.match == "exact"]
    excl_zones = [e.pattern for e in view.exclusions if e.match == "suffix"]
    wild_table = "".join(
        f'\t\t["{w}"] = /^{re.escape(w).replace(chr(92) + "*", "[a-z0-9_-]*")}$/,\n' for w in wild
    ).rstrip(",\n")
    path_table = ",\n".join(f'\t\t["{h}"] = "{p}"' for h, p in paths)
    header = "".join(f"##! {h}".rstrip() + "\n" for h in view.header("zeek-intel script"))
    return f"""{header}##! Loads {intel_name} (next to this script) and adds what Intel's exact match lacks:
##! names under a watched zone, wildcard names, and path-limited HTTP indicators.
##! Use: copy both files to one directory and `@load` this script (e.g. from local.zeek).

@load base/frameworks/intel
@load frameworks/intel/seen

redef Intel::read_files += {{ @DIR + "/{intel_name}" }};

module KaspwatchIntel;

export {{
	## Suffix zones: a name equal to one is in the intel file; a name under one is reported here.
	const zones: set[string] = {_set(zones)} &redef;
	## Pack exclusions: names and zones never reported.
	const excluded: set[string] = {_set(excl)} &redef;
	const excluded_zones: set[string] = {_set(excl_zones)} &redef;
	## Wildcard indicators (their text is the Intel::DOMAIN item) and the names they cover.
	const wildcards: table[string] of pattern = {{
{wild_table}
	}} &redef;
	## HTTP indicators limited to a path: host -> path prefix (the item is host + prefix).
	const paths: table[string] of string = {{
{path_table}
	}} &redef;
}}

function check(c: connection, name: string, where: Intel::Where)
	{{
	local labels = split_string(to_lower(name), /\\./);
	local zone = "";
	local nearest = "";
	local j = |labels|;
	while ( j > 0 )  # from the top-level label down: zone grows to the whole name
		{{
		--j;
		zone = (zone == "") ? labels[j] : labels[j] + "." + zone;
		if ( zone in excluded_zones )
			return;
		if ( j > 0 && zone in zones )
			nearest = zone;  # the longest, as kaspwatch picks the most specific
		}}
	if ( zone in excluded )
		return;
	for ( w, rx in wildcards )
		if ( rx in zone )
			Intel::seen([$indicator=w, $indicator_type=Intel::DOMAIN, $conn=c, $where=where]);
	# the name itself is matched exactly by the Intel framework; report the zone it sits under
	if ( nearest != "" )
		Intel::seen([$indicator=nearest, $indicator_type=Intel::DOMAIN, $conn=c, $where=where]);
	}}

event dns_request(c: connection, msg: dns_msg, query: string, qtype: count, qclass: count)
	{{
	check(c, query, DNS::IN_REQUEST);
	}}

event ssl_extension_server_name(c: connection, is_orig: bool, names: string_vec)
	{{
	if ( is_orig )
		for ( _, n in names )
			check(c, n, SSL::IN_SERVER_NAME);
	}}

event http_header(c: connection, is_orig: bool, name: string, value: string)
	{{
	if ( ! is_orig || name != "HOST" )
		return;
	local host = to_lower(split_string1(value, /:/)[0]);
	check(c, host, HTTP::IN_HOST_HEADER);
	if ( host in paths && c?$http && c$http?$uri && starts_with(c$http$uri, paths[host]) )
		Intel::seen([$indicator=host + paths[host], $indicator_type=Intel::URL, $conn=c,
			$where=HTTP::IN_URL]);
	}}
"""


def write(view: PackView, out_name: str) -> dict[str, str]:
    intel_name = PurePath(out_name).name
    script_name = str(PurePath(out_name).with_suffix(".zeek"))
    if script_name == out_name:
        script_name = out_name + ".zeek"
        intel_name = PurePath(out_name).name
    return {out_name: _intel(view, _rows(view)), script_name: _script(view, intel_name)}
