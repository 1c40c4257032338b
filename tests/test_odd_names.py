"""SNI and Host values that are not host names (``server4:443``, ``[::1]:8000``): kept as
observations, normalised, flagged ``not_host_name``, and never matched against the packs."""

from __future__ import annotations

import io
import json

import jsonschema
import pytest

from kaspwatch.cli.scan import scan
from sensor.decode import NOT_HOST, observed_name
from sensor.decode.http import decode_http_request
from sensor.decode.tls import decode_client_hello_record
from sensor.peers.eve import eve_records
from sensor.peers.zeek import ZeekLog
from sensor.pipeline import Sensor
from sensor.rules.indicators import load_pack
from sensor.rules.match import Matcher
from tests import capturegen as gen


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("server4:443", "server4"),
        ("[::1]:8000", "::1"),
        ("[2001:DB8::1]", "2001:db8::1"),
        ("[fe80::1%eth0]:80", "fe80::1%eth0"),
        ("Host.Example:", "host.example"),
        ("a/b", "a/b"),
        ("name.", "name"),
        ("", None),
        ("/", None),
        ("[]:80", None),
        ("two words", None),
        ("tab\tinside", None),
        ("caf\u00e9", None),
        ("x" * 254, None),
    ],
)
def test_observed_name_normalises(raw: str, want: str | None) -> None:
    assert observed_name(raw) == want


def _hello(sni: bytes) -> bytes:
    return gen.tls_record(gen.client_hello(sni))


def test_tls_sni_that_is_not_a_host_name_is_kept_flagged() -> None:
    odd = decode_client_hello_record(_hello(b"Server4:443"))
    assert odd is not None and (odd.name, dict(odd.extra)) == ("server4", {NOT_HOST: True})
    plain = decode_client_hello_record(_hello(b"server4"))
    assert plain is not None and (plain.name, dict(plain.extra)) == ("server4", {})
    assert decode_client_hello_record(_hello(b"bad name\x01")) is None  # nothing printable to keep


def test_http_host_that_is_not_a_host_name_is_kept_flagged() -> None:
    def host(value: bytes) -> tuple[str, dict[str, object]]:
        (s,) = decode_http_request(b"GET / HTTP/1.1\r\nHost: " + value + b"\r\n\r\n")
        return s.name, dict(s.extra)

    assert host(b"[fe80::1%eth0]:80") == ("fe80::1%eth0", {NOT_HOST: True})
    assert host(b"[::1]:8000") == ("::1", {})  # an address literal: a host
    assert host(b"files.kaspersky.com:8080") == ("files.kaspersky.com", {})
    (connect,) = decode_http_request(b"CONNECT upd.kaspersky.com:443:1 HTTP/1.1\r\n\r\n")
    assert (connect.kind, connect.name, dict(connect.extra)) == (
        "http_connect",
        "upd.kaspersky.com:443:1",
        {NOT_HOST: True},
    )


def test_odd_names_are_observations_never_hits(event_schema: dict[str, object]) -> None:
    """The built capture: a watched name behind a port in the SNI is observed, not a hit;
    the same name sent properly (HTTP Host with a port) is a hit."""
    path = gen.HERE / "odd-sni-host.pcap"
    out = io.StringIO()
    scan([str(path)], Sensor(Matcher(load_pack()), "t", observations=True), "ndjson", out, True)
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    for ev in events:
        jsonschema.validate(ev, event_schema)
    seen = {
        (e["kind"], e["name"], e.get(NOT_HOST, False), e["indicator"] is not None) for e in events
    }
    assert seen == {
        ("tls_sni", "server4", True, False),
        ("quic_sni", "server4", True, False),
        ("tls_sni", "2001:db8::1", True, False),
        ("quic_sni", "2001:db8::1", True, False),
        ("tls_sni", "upd.kaspersky.com", True, False),
        ("quic_sni", "upd.kaspersky.com", True, False),
        ("http_host", "::1", False, False),
        ("http_host", "2001:db8::5", False, False),
        ("http_host", "files.kaspersky.com", False, True),
    }
    hits = io.StringIO()
    scan([str(path)], Sensor(Matcher(load_pack()), "t"), "ndjson", hits, True)
    assert [json.loads(line)["name"] for line in hits.getvalue().splitlines()] == [
        "files.kaspersky.com"
    ]


def _eve(etype: str, body: dict[str, object], dport: int = 443) -> dict[str, object]:
    return {
        "timestamp": "2026-12-06T10:00:00.000000+0000",
        "event_type": etype,
        "src_ip": "10.0.0.2",
        "src_port": 50000,
        "dest_ip": "10.0.0.9",
        "dest_port": dport,
        "proto": "UDP" if etype == "quic" else "TCP",
        etype: body,
    }


def _zeek(log: str, **fields: object) -> str:
    ids = {"id.orig_h": "10.0.0.2", "id.orig_p": 50000, "id.resp_h": "10.0.0.9"}
    return json.dumps({"_path": log, "ts": 1.5, **ids, "id.resp_p": 443, **fields})


def test_peer_logs_keep_odd_names_as_the_capture_path_does(
    event_schema: dict[str, object],
) -> None:
    """Suricata EVE and Zeek: an SNI or Host that is not a host name is an observation,
    normalised and flagged as the decoders do (``observed_name``), never a hit, even with
    a watched name before the port; the same names sent properly stay as they were."""
    docs = [
        _eve("tls", {"sni": "server4:443"}),
        _eve("tls", {"sni": "[::1]:8000"}),  # brackets and a port: no host name
        _eve("quic", {"sni": "UPD.KASPERSKY.COM:443"}),
        _eve("tls", {"sni": "UPD.KASPERSKY.COM:443"}),
        _eve("http", {"hostname": "[fe80::1%eth0]:80", "url": "/"}, 80),
        _eve("http", {"hostname": "[::1]:8000", "url": "/"}, 8000),  # an address: a host
        _eve("http", {"http_method": "CONNECT", "url": "upd.kaspersky.com:443:1"}, 3128),
        _eve("tls", {"sni": "upd.kaspersky.com"}),  # sent properly: a hit
    ]
    records = [r for d in docs for r in eve_records(d)]
    zeek = ZeekLog()
    records += [
        r
        for line in (
            _zeek("ssl", server_name="UPD.KASPERSKY.COM:443"),
            _zeek("quic", server_name="server4:443"),
            _zeek("http", host="[fe80::1%eth0]:80", uri="/", method="GET"),
            _zeek("http", host="files.kaspersky.com:8080", uri="/", method="GET"),
        )
        for r in zeek.records(line)
    ]
    sensor = Sensor(Matcher(load_pack()), "t", observations=True)
    events = [e.to_dict() for r in records for e in sensor.process_record(r)]
    for ev in events:
        jsonschema.validate(ev, event_schema)
    seen = [
        (e["source"], e["kind"], e["name"], e.get(NOT_HOST, False), e["indicator"] is not None)
        for e in events
        if e["kind"] != "http_request"
    ]
    assert seen == [
        ("suricata-eve", "tls_sni", "server4", True, False),
        ("suricata-eve", "tls_sni", "::1", True, False),
        ("suricata-eve", "quic_sni", "upd.kaspersky.com", True, False),
        ("suricata-eve", "tls_sni", "upd.kaspersky.com", True, False),
        ("suricata-eve", "http_host", "fe80::1%eth0", True, False),
        ("suricata-eve", "http_host", "::1", False, False),
        ("suricata-eve", "http_connect", "upd.kaspersky.com:443:1", True, False),
        ("suricata-eve", "tls_sni", "upd.kaspersky.com", False, True),
        ("zeek", "tls_sni", "upd.kaspersky.com", True, False),
        ("zeek", "quic_sni", "server4", True, False),
        ("zeek", "http_host", "fe80::1%eth0", True, False),
        ("zeek", "http_host", "files.kaspersky.com", False, True),
    ]
    hits_only = Sensor(Matcher(load_pack()), "t")
    hits = [e.to_dict()["name"] for r in records for e in hits_only.process_record(r)]
    assert hits == ["upd.kaspersky.com", "files.kaspersky.com"]
