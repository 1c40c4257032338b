"""Verdicts from real clients in network namespaces: an updater that names nothing is an
install and alerts HIGH; a VPN-style decoy SNI and a page's web-AV script tag alert at
most low, as ``unverified-name`` and ``web-artefact``; the decoy host doing DNS-backed
update traffic later becomes ``installed``.

Each case captures the client veth with tcpdump, reads the capture with the sensor (both
readers: the libpcap prefilter and the pure one must agree) and feeds the hits to the
alerts engine, as ``kaspwatch scan`` + ``kaspwatch alerts`` would.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from consumers.alerts.engine import SEVERITY_RANK, Alert, AlertEngine
from kaspwatch.cli.scan import scan
from kaspwatch.event import event_from_json
from sensor.pipeline import Sensor
from sensor.rules.indicators import load_pack
from sensor.rules.match import Matcher
from tests.livelab import CURL, Lab, lab, ok
from tests.netns import CLIENT_V4, SERVER_V4

pytestmark = [pytest.mark.live, pytest.mark.timeout(60)]

TOKEN = "*Kx3b9QmZpL0vT7yW2cR5nA8dF1gH4jS6kE9uI0oP3lM5zX7cV2bN4mQ8wE1rT"  # opaque updater UA
BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
WEBAV = "gc.kis.v2.scr.kaspersky-labs.com"
GUID = "FD126C42-EBFA-4E12-B309-BB3FDD723AC1"


def capture(tmp_path: Path, pcap: Path) -> list[dict[str, Any]]:
    """The hits in ``pcap``, read through the prefilter and without it (they agree)."""
    runs = []
    for prefilter in (True, False):
        out = io.StringIO()
        sensor = Sensor(Matcher(load_pack()), "live-verdicts")
        _w, errors = scan([str(pcap)], sensor, "ndjson", out, prefilter)
        assert not errors, errors
        runs.append(out.getvalue().splitlines())
    assert sorted(runs[0]) == sorted(runs[1]), "the prefilter changed what the sensor reports"
    return [json.loads(line) for line in runs[0]]


def alerts_for(engine: AlertEngine, hits: list[dict[str, Any]]) -> list[Alert]:
    out: list[Alert] = []
    for hit in hits:
        out += engine.feed(event_from_json(json.dumps(hit).encode()))
    return out


def worst(alerts: list[Alert]) -> str:
    return max((a.severity for a in alerts), key=SEVERITY_RANK.__getitem__)


def http_server(net: Lab, root: Path) -> None:
    """python's http.server on port 80: it writes the head, then the file, in two sends."""
    args = (sys.executable, "-m", "http.server", "80", "--bind", SERVER_V4, "-d", str(root))
    net.wait_listening("tcp", 80, net.spawn(net.net.server, "http", *args))


def test_updater_to_a_bare_address_is_installed_and_alerts_high(tmp_path: Path) -> None:
    root = tmp_path / "www"
    (root / "updaters").mkdir(parents=True)
    (root / "updaters" / "updater.xml.klz").write_bytes(b"KLZF" + bytes(range(256)) * 40)
    with lab("vu", tmp_path, "curl") as net:
        http_server(net, root)
        with net.watch() as seen:
            got = ok(
                net.client(f"{CURL} -0 -A {TOKEN} http://{SERVER_V4}/updaters/updater.xml.klz")
            )
    assert got.stdout == "200"
    assert b"kaspersky" not in seen.pcap.read_bytes().lower()  # no Kaspersky name on the wire
    hits = capture(tmp_path, seen.pcap)
    assert {(h["kind"], h["indicator"]["id"]) for h in hits} == {
        ("http_request", "kw-content-update-updaters"),
        ("file_magic", "kw-content-magic-klzf"),
    }
    assert {h["host"] for h in hits} == {CLIENT_V4}
    engine = AlertEngine()
    alerts = alerts_for(engine, hits)
    assert worst(alerts) == "high"
    verdict = engine.verdicts.get(CLIENT_V4)
    assert verdict is not None and (verdict.verdict, verdict.confidence) == ("installed", "high")
    # the live sensor on the client veth alerted on it too, with the verdict
    assert {(a["kind"], a["verdict"], a["severity"]) for a in seen.alerts} >= {
        ("http_request", "installed", "high")
    }


def test_decoy_sni_is_an_unverified_name_then_dns_backed_updates_make_it_installed(
    tmp_path: Path, cert: tuple[Path, Path]
) -> None:
    decoy, update = "dc1-file.ksn.kaspersky-labs.com", "s07.upd.kaspersky.com"
    crt, key = cert
    with lab("vd", tmp_path, "openssl", "dnsmasq", "dig") as net:
        s_server = net.spawn(
            net.net.server, "s_server", "openssl", "s_server", "-accept", "443",
            "-cert", str(crt), "-key", str(key), "-www",
        )  # fmt: skip
        net.wait_listening("tcp", 443, s_server)
        with net.watch() as first:  # TLS to a non-Kaspersky address, no DNS before it
            ok(net.client(f"openssl s_client -connect {SERVER_V4}:443 -servername {decoy}"))
        engine = AlertEngine()
        hits = capture(tmp_path, first.pcap)
        assert {(h["kind"], h["name"], h["backed_by"]) for h in hits} == {
            ("tls_sni", decoy, "none")
        }
        early = alerts_for(engine, hits)
        assert early and worst(early) == "low"
        assert all("decoy SNI" in a.to_dict()["verdict_reason"] for a in early)
        verdict = engine.verdicts.get(CLIENT_V4)
        assert verdict is not None and verdict.verdict == "unverified-name"
        # later the same host looks an update server up and connects to what DNS said
        net.dnsmasq()
        with net.watch() as later:
            ok(net.client(f"dig +short @{SERVER_V4} {update} A"))
            ok(net.client(f"openssl s_client -connect {SERVER_V4}:443 -servername {update}"))
        hits = capture(tmp_path, later.pcap)
    backed = {(h["kind"], h["name"], h["backed_by"]) for h in hits}
    assert ("tls_sni", update, "dns") in backed
    raised = alerts_for(engine, hits)
    verdict = engine.verdicts.get(CLIENT_V4)
    assert verdict is not None and verdict.verdict == "installed"
    confirmed = [a for a in raised if a.stage == "confirmed"]
    assert confirmed and confirmed[0].severity == "high"
    assert confirmed[0].to_dict()["confirms"] == ["telemetry"]


def test_page_with_the_web_av_script_tag_is_a_web_artefact(
    tmp_path: Path, cert: tuple[Path, Path]
) -> None:
    page = f"http://{SERVER_V4}/saved.html"
    script = f"http://{WEBAV}/{GUID}/main.js?attr=abc"
    with lab("vw", tmp_path, "curl", "nginx", "dnsmasq") as net:
        net.nginx(cert)
        net.dnsmasq()
        with net.watch() as seen:
            # the browser fetches the page, then what its script tag names, with the page
            # as Referer (dnsmasq answers the name with the namespace's server address)
            ok(net.client(f"{CURL} -A", BROWSER, page))
            ok(net.client("dig", "+short", f"@{SERVER_V4}", WEBAV, "A"))
            ok(net.client(f"{CURL} -A", BROWSER, "-e", page, "--resolve",
                          f"{WEBAV}:80:{SERVER_V4}", script))  # fmt: skip
    hits = capture(tmp_path, seen.pcap)
    assert {h["indicator"]["evidence"] for h in hits} == {"web"}
    assert {h["kind"] for h in hits} >= {"dns_query", "http_host"}
    engine = AlertEngine()
    alerts = alerts_for(engine, hits)
    assert alerts and worst(alerts) == "low"
    verdict = engine.verdicts.get(CLIENT_V4)
    assert verdict is not None and verdict.verdict == "web-artefact"
    assert all("script tag" in a.to_dict()["verdict_reason"] for a in alerts)
