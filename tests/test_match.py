"""Matching semantics of the shipped pack and of the engine itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from sensor.rules.indicators import PackError, load_pack
from sensor.rules.match import Matcher


def ids(matcher: Matcher, name: str, kind: str = "dns_query") -> str | None:
    ind = matcher.match_name(name, kind)
    return ind.id if ind else None


@pytest.mark.parametrize(
    "name",
    ["kaspersky.com", "x.kaspersky.com", "a.b.c.kaspersky-labs.com", "www.kaspersky.ru"],
)
def test_label_boundary_suffix_matches(matcher: Matcher, name: str) -> None:
    assert matcher.match_name(name) is not None


@pytest.mark.parametrize(
    "name",
    [
        "notkaspersky.com",
        "kaspersky.com.evil.example",
        "mykaspersky-labs.com.example",
        "kaspersky-labs.com.example",
        "xkaspersky-labs.com",
        "com",
        "example.org",
    ],
)
def test_lookalikes_do_not_match(matcher: Matcher, name: str) -> None:
    assert matcher.match_name(name) is None


def test_most_specific_indicator_wins(matcher: Matcher) -> None:
    upd = matcher.match_name("dnl-03.geo.kaspersky.com")
    assert upd is not None and upd.category == "update"
    apex = matcher.match_name("www.kaspersky.com")
    assert apex is not None and apex.category == "infrastructure" and apex.severity == "low"
    assert ids(matcher, "s07.upd.kaspersky.com") != ids(matcher, "zz.upd.kaspersky.com")
    ksn = matcher.match_name("ksn-file-geo.kaspersky-labs.com")
    assert ksn is not None and ksn.category == "telemetry"


def test_range_bounds(matcher: Matcher) -> None:
    inside = matcher.match_name("s19.upd.kaspersky.com")
    outside = matcher.match_name("s20.upd.kaspersky.com")
    assert inside is not None and inside.match == "range"
    assert outside is not None and outside.match == "suffix"  # still under upd.kaspersky.com


def test_exclusions_suppress_catch_alls(matcher: Matcher) -> None:
    assert matcher.match_name("mx12.kaspersky-labs.com") is None
    assert matcher.excluded("mx12.kaspersky-labs.com")


def test_cidr_longest_prefix_v4_and_v6(matcher: Matcher) -> None:
    import ipaddress

    v4 = matcher.match_ip(ipaddress.ip_address("77.74.177.5").packed)
    v6 = matcher.match_ip(ipaddress.ip_address("2a03:2480:8012::1").packed)
    assert v4 is not None and v4.match == "cidr" and "ip" in v4.where
    assert v6 is not None and v6.pattern.startswith("2a03:2480:")
    assert matcher.match_ip(ipaddress.ip_address("77.74.184.1").packed) is None
    assert matcher.match_ip(ipaddress.ip_address("10.0.0.1").packed) is None


def test_names_never_match_cidr_rows_and_ips_never_match_names(matcher: Matcher) -> None:
    assert matcher.match_name("77.74.177.5", "http_host") is None


def test_shipped_pack_keeps_sources_and_categories(pack) -> None:  # type: ignore[no-untyped-def]
    assert len(pack.indicators) > 100
    assert all(ind.sources for ind in pack.indicators)
    assert {i.category for i in pack.indicators} >= {"update", "telemetry", "activation", "oem"}
    analytics = [i for i in pack.indicators if i.pattern == "counter.kaspersky.com"]
    assert analytics and analytics[0].severity == "info"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "site.yaml"
    p.write_text(text)
    return p


HEAD = "schema: kaspwatch-indicator-pack/1\nname: site\nversion: '1'\nindicators:\n"
ROW = (
    "  - id: {id}\n    pattern: '{pattern}'\n    match: {match}\n    category: update\n"
    "    severity: high\n    confidence: high\n    sources: [here]\n    description: test\n"
)


@pytest.mark.parametrize(
    ("pattern", "match", "message"),
    [
        ("com", "suffix", "bare TLD"),
        ("0.0.0.0/0", "cidr", "too broad"),
        ("10.1.0.0/16", "cidr", "private"),
        ("Upd.Example.com", "exact", "lowercase"),
        ("*.example.com", "wildcard", "exactly one"),
        ("s{19..00}.example.com", "range", "empty"),
    ],
)
def test_bad_patterns_are_refused_with_file_and_line(
    tmp_path: Path, pattern: str, match: str, message: str
) -> None:
    path = write(tmp_path, HEAD + ROW.format(id="kw-x", pattern=pattern, match=match))
    with pytest.raises(PackError) as err:
        load_pack(path)
    assert str(err.value).startswith(f"{path}:5:")
    assert message in str(err.value)


def test_duplicate_ids_and_yaml_errors_name_the_line(tmp_path: Path) -> None:
    row = ROW.format(id="kw-a", pattern="a.example.com", match="exact")
    path = write(tmp_path, HEAD + row + row)
    with pytest.raises(PackError, match=r"site.yaml:13: duplicate id 'kw-a' \(first at line 5\)"):
        load_pack(path)
    path.write_text(HEAD + "  - id: [unclosed\n")
    with pytest.raises(PackError, match=r"site.yaml:\d+: YAML syntax"):
        load_pack(path)


def test_site_pack_wildcard_and_range(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        HEAD
        + ROW.format(id="kw-w", pattern="dnl-*.mirror.example.net", match="wildcard")
        + ROW.format(id="kw-r", pattern="ksc{1..3}.corp.example.net", match="range"),
    )
    m = Matcher(load_pack(path))
    assert ids(m, "dnl-42.mirror.example.net") == "kw-w"
    assert ids(m, "x.dnl-42.mirror.example.net") is None  # one label only
    assert ids(m, "ksc2.corp.example.net") == "kw-r"
    assert ids(m, "ksc4.corp.example.net") is None
