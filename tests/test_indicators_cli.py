"""``kaspwatch indicators check | explain | list`` and pack-level guarantees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kaspwatch.cli import main
from tests.factories import HEAD, ROW, site_pack


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_check_passes_on_the_shipped_packs(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(capsys, "indicators", "check")
    assert rc == 0, err
    assert "kaspersky.yaml: ok: pack kaspersky" in out and "canary.yaml: ok" in out


def test_check_reports_every_broken_file_as_file_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    syntax = tmp_path / "syntax.yaml"
    syntax.write_text(HEAD + "  - id: kw-a\n    pattern: [unclosed\n")
    schema = site_pack(
        tmp_path,
        ROW.format(id="kw-b", pattern="a.example", match="fuzzy", category="update"),
        name="schema.yaml",
    )
    broad = site_pack(
        tmp_path,
        ROW.format(id="kw-c", pattern="co.uk", match="suffix", category="update"),
        name="broad.yaml",
    )
    good = site_pack(
        tmp_path,
        ROW.format(id="kw-d", pattern="ksc.corp.example", match="exact", category="management"),
        name="good.yaml",
    )
    rc, out, err = run(
        capsys, "indicators", "check", str(syntax), str(schema), str(broad), str(good)
    )
    assert rc == 1
    lines = err.splitlines()
    assert lines[0].startswith(f"{syntax}:7: YAML syntax")
    assert (
        lines[1]
        == f"{schema}:5: match 'fuzzy' is not one of exact, suffix, wildcard, range, cidr, path, "
        "user_agent, magic"
    )
    assert lines[2] == f"{broad}:5: pattern 'co.uk' covers a public suffix; too broad"
    assert f"{good}: ok" in out


@pytest.mark.parametrize(
    ("pattern", "match", "why"),
    [
        ("0.0.0.0/0", "cidr", "too broad"),
        ("192.168.0.0/16", "cidr", "private"),
        ("fd00::/8", "cidr", "too broad"),
        ("com", "suffix", "bare TLD"),
        ("*.com", "wildcard", "exactly one"),
        ("*.kaspersky.com", "wildcard", "exactly one"),
    ],
)
def test_check_refuses_over_broad_entries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pattern: str, match: str, why: str
) -> None:
    p = site_pack(tmp_path, ROW.format(id="kw-x", pattern=pattern, match=match, category="update"))
    rc, _, err = run(capsys, "indicators", "check", str(p))
    assert rc == 1 and err.startswith(f"{p}:5:") and why in err


def test_explain_names_the_winner_and_the_shadowed(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(
        capsys, "indicators", "explain", "DNL-03.Geo.Kaspersky.COM.", "--format", "json"
    )
    doc = json.loads(out)
    assert rc == 0
    assert doc["name"] == "dnl-03.geo.kaspersky.com"
    assert doc["match"]["category"] == "update" and doc["match"]["match"] == "range"
    assert doc["match"]["sources"] and "range" in doc["match"]["reason"]
    assert [a["match"] for a in doc["also"]] == ["suffix", "suffix"]


def test_explain_idna_and_ip(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "indicators", "explain", "обновление.kaspersky.ru", "--format", "json")
    assert rc == 0 and json.loads(out)["name"] == "xn--90acjaoqmddc.kaspersky.ru"
    rc, out, _ = run(capsys, "indicators", "explain", "2a03:2480:8000::1", "--format", "json")
    assert rc == 0 and json.loads(out)["match"]["match"] == "cidr"


@pytest.mark.parametrize("target", ["notkaspersky.com", "kaspersky.com.evil.example", "10.0.0.1"])
def test_explain_exits_1_when_nothing_matches(
    capsys: pytest.CaptureFixture[str], target: str
) -> None:
    rc, out, _ = run(capsys, "indicators", "explain", target)
    assert rc == 1 and "no match" in out


def test_explain_says_when_an_exclusion_wins(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "indicators", "explain", "mx12.kaspersky-labs.com")
    assert rc == 1 and "excluded by mx12.kaspersky-labs.com" in out


def test_site_pack_layers_over_the_shipped_pack(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = site_pack(
        tmp_path,
        ROW.format(
            id="kw-site-ksc", pattern="ksc.corp.example", match="exact", category="management"
        ),
        # same id as a shipped indicator: the site's version wins
        ROW.format(id="kw-update-ds", pattern="ds.kaspersky.com", match="exact", category="oem"),
    )
    rc, out, _ = run(
        capsys, "indicators", "explain", "--pack", str(p), "ksc.corp.example", "--format", "json"
    )
    assert rc == 0 and json.loads(out)["match"]["pack"] == "site"
    rc, out, _ = run(
        capsys, "indicators", "explain", "--pack", str(p), "ds.kaspersky.com", "--format", "json"
    )
    assert json.loads(out)["match"]["category"] == "oem"
    rc, out, _ = run(capsys, "indicators", "check", "--pack", str(p))
    assert rc == 0 and "kw-update-ds overrides" in out


def test_list_json_has_every_indicator_with_sources(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "indicators", "list", "--format", "json")
    rows = json.loads(out)
    assert rc == 0 and len(rows) > 150
    assert all(r["sources"] and r["description"] for r in rows)
    assert {"kw-canary-self-test", "kw-oem-juniper-kaspersky-av"} <= {r["id"] for r in rows}
