"""``kaspwatch indicators export``: the pack as Suricata rules, Zeek intel, an RPZ, CSV and JSON.

The Suricata rules are parsed by a real rule parser (suricataparser), then run against every
name the pack implies by a small evaluator of the few keywords the export uses, and the verdicts
compared with kaspwatch's own matcher. The RPZ is loaded by named-checkzone and served by unbound
in a network namespace with only a loopback. tools/check_suricata_export.sh loads the rules into
the real Suricata; it is not part of this suite (it needs a 10-minute build).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest
from suricataparser import parse_rules
from suricataparser.rule import Rule

from kaspwatch.cli import main
from sensor.rules.export import FORMATS, export
from sensor.rules.export.suricata import SID_BASE, SID_SPAN
from sensor.rules.indicators import expand_range, load_pack, shipped_pack_paths
from sensor.rules.match import Matcher
from tests.factories import ROW, site_pack
from tests.netns import need_tools, sh
from tests.testenv import KASPWATCH

STICKY = {"dns.query": "dns_query", "tls.sni": "tls_sni", "quic.sni": "quic_sni"}
STICKY["http.host"] = "http_host"


def packs() -> list:  # type: ignore[type-arg]
    return [load_pack(p) for p in shipped_pack_paths()]


@cache
def shipped_rules() -> tuple[str, tuple[Rule, ...]]:
    text = export(packs(), "suricata")["kaspwatch.rules"]
    return text, tuple(parse_rules(text))


# --- a tiny evaluator for the keywords the export writes (content, nocase, bsize, startswith,
# endswith, dotprefix, pcre); anything else in a rule fails the test


@cache
def _pcre(value: str) -> tuple[bool, re.Pattern[str]]:
    neg = value.startswith("!")
    body = value.lstrip("!").strip('"')
    rx, flags = body[1 : body.rindex("/")], body[body.rindex("/") + 1 :]
    return neg, re.compile(rx, re.I if "i" in flags else 0)


def fires(rule: Rule, buffers: dict[str, str]) -> bool:
    cur: str | None = None
    checks: list[tuple[str, str, str, set[str], dict[str, int]]] = []
    for opt in rule.options:
        name = opt.name
        if name in STICKY or name == "http.uri.raw":
            if name not in buffers:
                return False
            cur = buffers[name]
        elif name == "dotprefix":
            assert cur is not None
            cur = "." + cur
        elif name in ("content", "pcre"):
            assert cur is not None
            checks.append((cur, name, opt.value, set(), {}))
        elif name in ("nocase", "endswith", "startswith"):
            checks[-1][3].add(name)
        elif name == "bsize":
            checks[-1][4]["bsize"] = int(opt.value)
        else:
            assert name in ("msg", "metadata", "reference", "priority", "sid", "rev"), name
    for buf, kind, value, mods, sizes in checks:
        if kind == "pcre":
            neg, rx = _pcre(value)
            if bool(rx.search(buf)) == neg:
                return False
            continue
        pat = value.strip('"')
        hay = buf.lower() if "nocase" in mods else buf
        if "bsize" in sizes and len(buf) != sizes["bsize"]:
            return False
        if "startswith" in mods and not hay.startswith(pat):
            return False
        if "endswith" in mods and not hay.endswith(pat):
            return False
        if pat not in hay:
            return False
    return True


def rule_id(rule: Rule) -> str:
    meta = dict(m.split(" ", 1) for m in rule.metadata)
    return meta["kaspwatch_id"]


def probe_names(matcher: Matcher) -> Iterator[str]:
    """Every name the packs imply, the names just beside them, and the exclusions."""
    for ind in matcher.indicators.values():
        if ind.match == "cidr":
            continue
        if ind.match == "wildcard":
            first, zone = ind.pattern.split(".", 1)
            names = [first.replace("*", "file") + "." + zone, first.replace("*", "") + "." + zone]
            names += [
                first.replace("*", "a.b") + "." + zone,
                "x" + first.replace("*", "") + "." + zone,
            ]
        else:
            names = expand_range(ind.pattern)
        for n in names:
            yield n
            yield "www." + n
            yield "x" + n
            yield n + ".example.net"
    for pack in matcher.packs:
        for e in pack.exclusions:
            yield e.pattern
            yield "a." + e.pattern
    yield "s20.upd.kaspersky.com"
    yield "example.org"


def test_every_rule_parses_with_a_real_parser_and_carries_the_indicator() -> None:
    text, rules = shipped_rules()
    body = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert len(rules) == len(body) and all(r.enabled for r in rules)
    matcher = Matcher(packs())
    sids = [r.sid for r in rules]
    assert len(set(sids)) == len(sids)
    assert all(SID_BASE <= (s or 0) < SID_BASE + SID_SPAN for s in sids)
    for r in rules:
        ind = matcher.indicators[rule_id(r)]
        meta = dict(m.split(" ", 1) for m in r.metadata)
        assert meta["kaspwatch_category"] == ind.category
        assert meta["kaspwatch_severity"] == ind.severity
        assert meta["kaspwatch_pack_version"] == matcher.version
        assert ind.id in (r.msg or "") and r.rev == 1
    # every prefix is one IP rule on exactly that prefix
    ip_rules = {rule_id(r): r.header for r in rules if r.header.startswith("ip ")}
    cidrs = {i.id: i.pattern for i in matcher.indicators.values() if i.match == "cidr"}
    assert ip_rules == {k: f"ip any any -> [{v}] any" for k, v in cidrs.items()}


def test_rules_fire_exactly_where_kaspwatch_matches() -> None:
    """Lossless where Suricata can express it: for every name the pack implies, in every place
    (DNS query, TLS SNI, QUIC SNI, HTTP Host, in mixed case too), some rule fires exactly when
    kaspwatch matches, kaspwatch's verdict is among the rules that fire, and every rule that
    fires is an indicator kaspwatch also sees covering the name (exclusions honoured)."""
    _, rules = shipped_rules()
    matcher = Matcher(packs())
    by_buffer: dict[str, list[Rule]] = {}
    for r in rules:
        for opt in r.options:
            if opt.name in STICKY:
                by_buffer.setdefault(opt.name, []).append(r)
                break
    checked = 0
    for name in sorted(set(probe_names(matcher))):
        for buffer, kind in STICKY.items():
            for seen, path in ((name, "/AV/SRX210"), (name.upper(), "/SAV/x")):
                if buffer == "http.host":
                    seen = seen.lower()  # Suricata's http.host is normalised to lowercase
                bufs = {buffer: seen, "http.uri.raw": path}
                fired = {rule_id(r) for r in by_buffer[buffer] if fires(r, bufs)}
                verdict = matcher.match_name(name, kind, path if kind == "http_host" else None)
                assert bool(fired) == (verdict is not None), (name, kind, path, fired, verdict)
                if verdict is not None:
                    assert verdict.id in fired
                    covering = {i.id for i, _ in matcher.candidates(name)}
                    assert fired <= covering, (name, fired - covering)
                checked += 1
    assert checked > 4000


def test_sids_stay_put_when_a_site_pack_adds_indicators(tmp_path: Path) -> None:
    _, rules = shipped_rules()
    before = {(rule_id(r), r.msg): r.sid for r in rules}
    site = site_pack(
        tmp_path,
        ROW.format(
            id="site-mirror", pattern="avmirror.corp.example", match="exact", category="update"
        ),
    )
    after_text = export([*packs(), load_pack(site)], "suricata")["kaspwatch.rules"]
    after_rules = parse_rules(after_text)
    after = {(rule_id(r), r.msg): r.sid for r in after_rules}
    assert {k: v for k, v in after.items() if k in before} == before
    assert any(k[0] == "site-mirror" for k in after)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_export_is_deterministic_and_carries_the_pack_version(fmt: str) -> None:
    first = export(packs(), fmt)
    second = export(packs(), fmt)
    assert first == second
    main_text = next(iter(first.values()))
    assert "kaspersky@2026.11.27.2+canary@1" in main_text.splitlines()[1] + main_text[:4000]
    for text in first.values():
        assert text.endswith("\n") and "\r" not in text


def test_suricata_lists_what_it_cannot_express_at_the_top() -> None:
    text, _ = shipped_rules()
    head = text.split("\nalert ", 1)[0]
    assert all(ln.startswith("#") or not ln for ln in head.splitlines())
    assert "cannot express" in head and "DNS answers" in head and "sid = 3700000000" in head


# --- Zeek intel


def zeek_rows(text: str) -> tuple[list[str], list[list[str]]]:
    """Read the file the way Zeek's ASCII input reader does (Ascii.cc GetLine)."""
    fields: list[str] = []
    rows = []
    for line in text.split("\n"):
        if not line:
            continue
        if line.startswith("#fields\t"):
            fields = line[8:].split("\t")
        elif not line.startswith("#"):
            rows.append(line.split("\t"))
    return fields, rows


def test_zeek_intel_file_and_suffix_script() -> None:
    files = export(packs(), "zeek-intel", "kaspwatch.intel")
    assert list(files) == ["kaspwatch.intel", "kaspwatch.zeek"]
    fields, rows = zeek_rows(files["kaspwatch.intel"])
    assert fields == ["indicator", "indicator_type", "meta.source", "meta.desc", "meta.url"]
    assert all(len(r) == len(fields) and all(r) for r in rows)
    assert {r[1] for r in rows} == {"Intel::DOMAIN", "Intel::SUBNET", "Intel::URL"}
    items = {r[0] for r in rows}
    matcher = Matcher(packs())
    for ind in matcher.indicators.values():
        if ind.match in ("path", "user_agent", "magic"):  # content: named as left out
            assert (
                ind.pattern not in items
                and f"# - {ind.id} ({ind.match} " in files["kaspwatch.intel"]
            )
        elif ind.path_prefix:
            assert ind.pattern + ind.path_prefix in items
        elif ind.match == "range":
            assert set(expand_range(ind.pattern)) <= items
        else:
            assert ind.pattern in items, ind.id
    script = files["kaspwatch.zeek"]
    assert 'redef Intel::read_files += { @DIR + "/kaspwatch.intel" };' in script
    assert script.count("{") == script.count("}")
    zones = re.search(r"const zones: set\[string\] = \{(.*?)\}", script, re.S)
    assert zones is not None
    suffixes = {i.pattern for i in matcher.indicators.values() if i.match == "suffix"}
    assert set(re.findall(r'"([^"]+)"', zones.group(1))) == suffixes
    assert '"mx12.kaspersky-labs.com"' in script  # exclusions the script honours


# --- RPZ, loaded by real resolvers


def rpz_zone(tmp_path: Path, action: str = "nxdomain") -> Path:
    zone = tmp_path / "rpz.zone"
    zone.write_text(export(packs(), "rpz", rpz_action=action)["rpz.kaspwatch.zone"])
    return zone


@pytest.mark.live  # needs root (tests/tiers.py): named-checkzone from bind9-utils
def test_rpz_loads_in_named_checkzone(tmp_path: Path) -> None:
    need_tools("named-checkzone")
    zone = rpz_zone(tmp_path)
    res = sh("named-checkzone", "-i", "full", "rpz.kaspwatch", str(zone), check=False)
    assert res.returncode == 0 and "loaded serial 2026112702" in res.stdout, res.stdout
    text = zone.read_text()
    assert (
        "*.kaspersky.com CNAME ." in text and "mx12.kaspersky-labs.com CNAME rpz-passthru." in text
    )
    assert "24.0.230.198.91.rpz-ip CNAME ." in text and "48.zz.8020.2480.2a03.rpz-ip" in text


ROOT = """. 3600 IN SOA localhost. hostmaster.localhost. 1 3600 600 86400 300
. 3600 IN NS localhost.
www.example.org. 3600 IN A 127.0.0.9
dnl-01.geo.kaspersky.com. 3600 IN A 127.0.0.13
www.kaspersky.com. 3600 IN A 127.0.0.15
mx12.kaspersky-labs.com. 3600 IN A 127.0.0.12
cdn.example.org. 3600 IN A 91.198.230.7
"""

UNBOUND = """server:
    interface: 127.0.0.1@{port}
    port: {port}
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "{dir}"
    pidfile: ""
    use-syslog: no
    logfile: ""
    verbosity: 1
    do-ip6: no
    module-config: "respip validator iterator"
    access-control: 127.0.0.0/8 allow
# every answer comes from this local root zone: the resolver asks nothing outside
auth-zone:
    name: "."
    zonefile: "{dir}/root.zone"
    for-downstream: no
    for-upstream: yes
    fallback-enabled: no
rpz:
    name: "rpz.kaspwatch."
    zonefile: "{zone}"
    rpz-log: yes
    rpz-log-name: "kaspwatch"
remote-control:
    control-enable: no
"""


def dig(ns: str, name: str) -> tuple[str, list[str]]:
    res = sh(
        "ip",
        "netns",
        "exec",
        ns,
        "dig",
        "+time=2",
        "+tries=1",
        "@127.0.0.1",
        "-p",
        "5353",
        name,
        "A",
        check=False,
    )
    status = re.search(r"status: (\w+)", res.stdout)
    answers = re.findall(r"^\S+\s+\d+\s+IN\s+A\s+(\S+)$", res.stdout, re.M)
    return (status.group(1) if status else "NO-ANSWER"), answers


@pytest.mark.live  # root: unbound in a network namespace
@pytest.mark.parametrize("action", ["nxdomain", "passthru"])
def test_rpz_served_by_unbound_blocks_or_logs_kaspersky_only(tmp_path: Path, action: str) -> None:
    """unbound in a namespace with only a loopback, every answer from a local root zone: the
    zone answers NXDOMAIN (or passes and logs) for Kaspersky names and addresses, normally for
    the rest and for the pack's exclusions."""
    need_tools("unbound", "dig")
    zone = rpz_zone(tmp_path, action)
    (tmp_path / "root.zone").write_text(ROOT)
    conf = tmp_path / "unbound.conf"
    conf.write_text(UNBOUND.format(port=5353, dir=tmp_path, zone=zone))
    ns = f"kwrpz{os.getpid() % 100000}"
    sh("ip", "netns", "add", ns)
    proc = None
    try:
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "unbound", "-d", "-c", str(conf)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(100):  # until it answers (readiness, not a timing assert)
            if dig(ns, "www.example.org")[0] == "NOERROR" or proc.poll() is not None:
                break
            time.sleep(0.1)
        results = {
            n: dig(ns, n)
            for n in (
                "www.example.org",
                "dnl-01.geo.kaspersky.com",
                "www.kaspersky.com",
                "mx12.kaspersky-labs.com",
                "cdn.example.org",
            )
        }
    finally:
        if proc is not None:
            proc.terminate()
            log, _ = proc.communicate(timeout=10)
        sh("ip", "netns", "del", ns, check=False)
    assert results["www.example.org"] == ("NOERROR", ["127.0.0.9"]), log
    assert results["mx12.kaspersky-labs.com"] == ("NOERROR", ["127.0.0.12"])  # an exclusion
    if action == "nxdomain":
        assert results["dnl-01.geo.kaspersky.com"][0] == "NXDOMAIN"
        assert results["www.kaspersky.com"][0] == "NXDOMAIN"
        assert results["cdn.example.org"][0] == "NXDOMAIN"  # answer inside 91.198.230.0/24
    else:
        assert results["dnl-01.geo.kaspersky.com"] == ("NOERROR", ["127.0.0.13"])
        assert results["cdn.example.org"] == ("NOERROR", ["91.198.230.7"])
    applied = re.findall(r"rpz: applied \[kaspwatch\] (\S+) (\S+) \S+ (\S+)", log)
    hits = {(q, trig, act) for trig, act, q in applied}
    verb = "rpz-nxdomain" if action == "nxdomain" else "rpz-passthru"
    assert ("dnl-01.geo.kaspersky.com.", "dnl-01.geo.kaspersky.com.", verb) in hits, log
    assert ("www.kaspersky.com.", "*.kaspersky.com.", verb) in hits
    assert not any(q == "www.example.org." for q, _, _ in hits)


# --- CSV and JSON


def test_csv_and_json_carry_every_indicator_and_exclusion() -> None:
    matcher = Matcher(packs())
    doc = json.loads(export(packs(), "json")["kaspwatch-indicators.json"])
    assert doc["pack_version"] == matcher.version
    assert [i["id"] for i in doc["indicators"]] == [
        i.id for p in matcher.packs for i in p.indicators
    ]
    assert {e["pattern"] for e in doc["exclusions"]} >= {"mx12.kaspersky-labs.com"}
    rows = list(csv.DictReader(io.StringIO(export(packs(), "csv")["kaspwatch-indicators.csv"])))
    ids = [r["id"] for r in rows if r["type"] == "indicator"]
    assert ids == [i["id"] for i in doc["indicators"]]
    assert {r["pack_version"] for r in rows} == {matcher.version}
    snn = next(r for r in rows if r["id"] == "kw-update-snn")
    assert snn["names"].split()[:2] == ["s00.upd.kaspersky.com", "s01.upd.kaspersky.com"]


# --- the command


def test_cli_writes_the_files_and_refuses_a_bad_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "kw.intel"
    assert main(["indicators", "export", "--format", "zeek-intel", "--out", str(out)]) == 0
    assert out.exists() and (tmp_path / "kw.zeek").exists()
    assert '@DIR + "/kw.intel"' in (tmp_path / "kw.zeek").read_text()
    capsys.readouterr()
    assert main(["indicators", "export", "--format", "suricata"]) == 0
    stdout = capsys.readouterr().out
    assert stdout == export(packs(), "suricata")["kaspwatch.rules"]
    rc = main(["indicators", "export", "--format", "rpz", "--out", str(tmp_path / "no" / "x")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--out" in err


def test_cli_export_is_byte_identical_across_processes(tmp_path: Path) -> None:
    """Different hash seeds (set and dict order) must not change a byte of any format."""
    for fmt in sorted(FORMATS):
        outs = []
        for seed in ("1", "2"):
            (tmp_path / seed / fmt).mkdir(parents=True)
            out = tmp_path / seed / fmt / "export.out"
            env = {**os.environ, "PYTHONHASHSEED": seed}
            res = subprocess.run(
                [*KASPWATCH, "indicators", "export", "--format", fmt, "--out", str(out)],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            assert res.returncode == 0, res.stderr
            outs.append(sorted((p.name, p.read_bytes()) for p in out.parent.iterdir()))
        assert outs[0] == outs[1], fmt


def test_cli_export_uses_site_packs_and_reports_a_bad_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = site_pack(
        tmp_path,
        ROW.format(
            id="site-mirror", pattern="avmirror.corp.example", match="suffix", category="update"
        ),
    )
    argv = ["indicators", "export", "--format", "json", "--no-shipped-pack", "--pack", str(site)]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [i["id"] for i in doc["indicators"]] == ["site-mirror"]
    assert doc["pack_version"] == "site@7"
    bad = tmp_path / "bad.yaml"
    bad.write_text("schema: kaspwatch-indicator-pack/1\nindicators: []\n")
    rc = main(["indicators", "export", "--format", "csv", "--pack", str(bad)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "bad.yaml" in err
