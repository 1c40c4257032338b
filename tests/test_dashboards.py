"""Grafana dashboards and Prometheus rules, checked against the real things.

- ``promtool check rules`` and ``promtool test rules`` on deploy/prometheus/rules/.
- The dashboards are well-formed Grafana JSON whose every variable and data source is
  defined, and the provisioning files point where the deployments mount them.
- Live: a real Prometheus (Debian ``prometheus``) scrapes a real kaspwatch deployment on
  the real Kafka broker — ``kaspwatch sense`` (its own /metrics), ``kaspwatch metrics`` and
  ``kaspwatch alerts`` — with the shipped rules loaded. The sensor reads a pcap stream on
  stdin that never ends (the sample capture replayed every half second with fresh
  timestamps, plus a canary lookup), so every process lives as long as the test. Then
  every PromQL expression of every dashboard panel, with its template variables
  substituted (once with concrete values, once with "All"), and every rule must parse and
  return data through the HTTP API. An alert whose condition is false in a healthy run
  (sensor silent, kernel drops...) cannot return data; for those, each quantity the alert
  compares (``tests.prometheus.signals``: thresholds, ``and``/``or``/``unless`` and
  ``absent()`` taken apart) must return data instead — so no alert watches a series that
  does not exist. The OT-site alert must actually fire: the sample's hosts are mapped to
  the OT site ``ot-plant-1``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import shutil
import struct
import subprocess
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import pytest
import yaml

from tests import postgres
from tests.prometheus import (
    PROMTOOL,
    Prometheus,
    Target,
    dashboard_targets,
    need,
    rule_expressions,
    signals,
    substitute,
    template_variables,
)
from tests.testenv import KASPWATCH, REPO, SAMPLE, free_port

postgres_url = postgres.postgres_url  # the session fixture: a real PostgreSQL server

DASHBOARDS = REPO / "dashboards"
PROVISIONING = DASHBOARDS / "provisioning"
RULES = REPO / "deploy" / "prometheus" / "rules" / "kaspwatch.rules.yaml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "rules" / "kaspwatch.rules.test.yaml"
DASHBOARD_FILES = sorted(DASHBOARDS.glob("*.json"))
SENSOR = "dash-1"
OT_SITE = "ot-plant-1"
LIVE_BUDGET_S = 85.0  # everything after the broker is up


# ------------------------------------------------------------------------------ promtool


def test_promtool_check_rules() -> None:
    promtool = need(PROMTOOL)
    out = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_promtool_rule_unit_tests() -> None:
    promtool = need(PROMTOOL)
    out = subprocess.run(
        [promtool, "test", "rules", str(RULE_TESTS)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=RULE_TESTS.parent,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_every_alert_has_a_unit_test() -> None:
    tested = {
        case["alertname"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    alerts = {name for kind, name, _ in rule_expressions(RULES) if kind == "alert"}
    assert alerts - tested == set(), "alerts never shown firing in kaspwatch.rules.test.yaml"


# ------------------------------------------------------------------------------ dashboards


def test_dashboards_are_well_formed() -> None:
    assert {p.name for p in DASHBOARD_FILES} == {
        "kaspwatch-soc-overview.json",
        "kaspwatch-sensor-health.json",
        "kaspwatch-incident-response.json",
    }
    uids = set()
    for path in DASHBOARD_FILES:
        dash = json.loads(path.read_text())
        assert 36 <= dash["schemaVersion"] <= 41, path.name
        assert dash["uid"] not in uids
        uids.add(dash["uid"])
        variables = {v["name"]: v for v in template_variables(path)}
        ds_vars = {f"${{{n}}}" for n, v in variables.items() if v["type"] == "datasource"}
        ids = set()
        for q in dashboard_targets(path):
            # data sources only by variable, so an import or provisioning picks its own
            assert q.datasource in ds_vars, f"{path.name} / {q.panel}: {q.datasource}"
            # every variable a query uses is defined by the dashboard
            values = dict.fromkeys(variables, "x")
            substitute(_sql_macros(q.expr, 0, 1), values)
        for panel in json.loads(path.read_text())["panels"]:
            assert panel["id"] not in ids
            ids.add(panel["id"])
            if panel["type"] != "row":
                assert panel.get("description"), f"{path.name} / {panel['title']}"
                grid = panel["gridPos"]
                assert grid["x"] + grid["w"] <= 24
        assert dashboard_targets(path), path.name


def test_provisioning_points_where_the_deployments_mount() -> None:
    sources = yaml.safe_load((PROVISIONING / "datasources" / "kaspwatch.yaml").read_text())
    by_type = {d["type"]: d for d in sources["datasources"]}
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "kaspwatch.yaml").read_text())
    path = providers["providers"][0]["options"]["path"]
    for dash_file in DASHBOARD_FILES:
        for var in template_variables(dash_file):
            if var["type"] == "datasource":  # the default a provisioned dashboard opens with
                assert var["current"]["value"] == by_type[var["query"]]["uid"]
    # the compose file mounts the dashboards at that path and the provisioning files
    # where Grafana reads them; the Kubernetes instructions name every dashboard
    compose = (REPO / "deploy" / "docker" / "compose.yaml").read_text()
    assert f"../../dashboards:{path}:ro" in compose
    assert "../../dashboards/provisioning:/etc/grafana/provisioning:ro" in compose
    kustomization = (REPO / "deploy" / "k8s" / "kustomization.yaml").read_text()
    for dash_file in DASHBOARD_FILES:
        assert f"dashboards/{dash_file.name}" in kustomization


# ------------------------------------------------------------------------------ live


def _sql_macros(sql: str, start: int, end: int) -> str:
    return sql.replace("$__unixEpochFrom()", str(start)).replace("$__unixEpochTo()", str(end))


def _canary_frame(n: int) -> bytes:
    from scapy.layers.dns import DNS, DNSQR
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    query = DNS(id=n & 0xFFFF, rd=1, qd=DNSQR(qname=f"{n}.canary.kaspwatch.test", qtype="A"))
    return bytes(
        Ether(src="02:00:00:00:00:09", dst="02:00:00:00:00:35")
        / IP(src="10.77.0.9", dst="10.77.0.53")
        / UDP(sport=40000 + n % 20000, dport=53)
        / query
    )


class Feeder(threading.Thread):
    """Writes a pcap stream that does not end: the sample, replayed with fresh times."""

    def __init__(self, out: IO[bytes]) -> None:
        super().__init__(daemon=True)
        data = SAMPLE.read_bytes()
        assert data[:4] == bytes.fromhex("d4c3b2a1"), "sample.pcap: little-endian µs pcap"
        self.header = data[:24]
        self.records: list[tuple[float, bytes]] = []
        off = 24
        while off < len(data):
            sec, usec, incl, _ = struct.unpack_from("<IIII", data, off)
            self.records.append((sec + usec / 1e6, data[off + 16 : off + 16 + incl]))
            off += 16 + incl
        self.out = out
        self.stop = threading.Event()
        self.rounds = 0

    def run(self) -> None:
        first = self.records[0][0]
        with contextlib.suppress(BrokenPipeError, ValueError, OSError):
            self.out.write(self.header)
            while not self.stop.is_set():
                now = time.time()
                frames = [(now + ts - first, frame) for ts, frame in self.records]
                frames.append((now + 0.5, _canary_frame(self.rounds)))
                for ts, frame in frames:
                    sec, usec = int(ts), int((ts % 1) * 1e6)
                    self.out.write(struct.pack("<IIII", sec, usec, len(frame), len(frame)))
                    self.out.write(frame)
                self.out.flush()
                self.rounds += 1
                self.stop.wait(0.5)


async def _create_topics(bootstrap: str, topics: list[str]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(t, num_partitions=2, replication_factor=1) for t in topics]
        )
    finally:
        await admin.close()


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.terminate()
    for p in started:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def _has_data(doc: dict[str, Any]) -> bool:
    data = doc.get("data") or {}
    if data.get("resultType") == "scalar":
        return True
    return bool(data.get("result"))


def _queries() -> list[tuple[str, str, bool]]:
    """(what, PromQL, must return data) of every panel and rule, as this test evaluates them."""
    out: list[tuple[str, str, bool]] = []
    concrete = {"site": OT_SITE, "sensor": SENSOR, "window": "24h", "ot_sites": "ot-.*"}
    everything = {"site": ".*", "sensor": ".*", "window": "5m", "ot_sites": "ot-.*"}
    for path in DASHBOARD_FILES:
        for q in dashboard_targets(path):
            if q.language != "promql":
                continue
            for label, values in (("concrete", concrete), ("All", everything)):
                where = f"{q.dashboard} / {q.panel} / {q.ref} ({label} variables)"
                out.append((where, substitute(q.expr, values), True))
    for kind, name, expr in rule_expressions(RULES):
        if kind == "record":
            out.append((f"recording rule {name}", expr, True))
            out.append((f"recorded series {name}", name, True))
        else:
            # the whole condition must parse; it is empty while the alert does not fire
            out.append((f"alert {name}", expr, False))
            for n, signal in enumerate(signals(expr)):
                where = f"alert {name}, compared quantity {n}: {' '.join(signal.split())}"
                out.append((where, signal, True))
    return out


@pytest.mark.kafka
@pytest.mark.timeout(
    300
)  # the broker's start (session fixture) may land here; the test's own work is bounded by LIVE_BUDGET_S
def test_every_panel_and_rule_query_returns_data(
    kafka_bootstrap: str, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    need(PROMTOOL)
    started = time.monotonic()
    run = uuid.uuid4().hex[:8]
    hits, beats, alerts_topic, dlq = (f"{t}-{run}" for t in ("hits", "beats", "alerts", "dlq"))
    asyncio.run(_create_topics(kafka_bootstrap, [hits, beats, alerts_topic, dlq]))
    bus = f"kafka://{kafka_bootstrap}"
    assets = tmp_path / "assets.yaml"
    assets.write_text(
        "schema: kaspwatch-assets/1\nnetworks:\n"
        f"  - {{cidr: 10.77.0.0/24, site: {OT_SITE}, zone: ot, criticality: critical}}\n"
        "  - {cidr: 'fd77::/64', site: hq, zone: it, criticality: medium}\n"
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "KASPWATCH_STATE_DIR": str(tmp_path)}
    ports = {"sensor": free_port(), "metrics": free_port(), "alerts": free_port()}
    logs = {name: (tmp_path / f"{name}.log").open("wb") for name in ("sense", "metrics", "alerts")}

    sense = subprocess.Popen(
        [
            *KASPWATCH,
            "sense",
            "--pcap",
            "-",
            "--bus",
            bus,
            "--topic",
            hits,
            "--heartbeats-topic",
            beats,
            "--heartbeat-interval",
            "1",
            "--sensor",
            SENSOR,
            "--metrics-addr",
            f"127.0.0.1:{ports['sensor']}",
        ],
        stdin=subprocess.PIPE,
        stdout=logs["sense"],
        stderr=subprocess.STDOUT,
        env=env,
    )
    procs.append(sense)
    metrics = subprocess.Popen(
        [
            *KASPWATCH,
            "metrics",
            "--bus",
            bus,
            "--topic",
            hits,
            "--heartbeats-topic",
            beats,
            "--group",
            f"metrics-{run}",
            "--listen",
            f"127.0.0.1:{ports['metrics']}",
            "--assets",
            str(assets),
            "--lag-groups",
            f"alerts-{run},metrics-{run}",
        ],
        stdout=logs["metrics"],
        stderr=subprocess.STDOUT,
        env=env,
    )
    alerts = subprocess.Popen(
        [
            *KASPWATCH,
            "alerts",
            "--bus",
            bus,
            "--topic",
            hits,
            "--alerts-topic",
            alerts_topic,
            "--dead-letter-topic",
            dlq,
            "--group",
            f"alerts-{run}",
            "--assets",
            str(assets),
            "--state",
            str(tmp_path / "alerts.sqlite"),
            "--metrics-addr",
            f"127.0.0.1:{ports['alerts']}",
        ],
        stdout=logs["alerts"],
        stderr=subprocess.STDOUT,
        env=env,
    )
    procs.extend([metrics, alerts])
    assert sense.stdin is not None
    feeder = Feeder(sense.stdin)
    feeder.start()

    targets = [
        Target("kaspwatch-sensor", f"127.0.0.1:{ports['sensor']}", {"sensor": SENSOR}),
        Target("kaspwatch-metrics", f"127.0.0.1:{ports['metrics']}", {}),
        Target("kaspwatch-alerts", f"127.0.0.1:{ports['alerts']}", {}),
    ]
    queries = _queries()
    failures: dict[str, str] = {}
    try:
        with Prometheus(tmp_path / "prometheus", targets, [RULES]) as prom:
            # every query must parse at once; data comes as the pipeline warms up
            deadline = started + LIVE_BUDGET_S
            pending = {where: (expr, data) for where, expr, data in queries}
            assert len(pending) == len(queries), "two queries with the same description"
            while pending and time.monotonic() < deadline:
                for p in procs:
                    assert p.poll() is None, _died(p, logs, tmp_path)
                for where, (expr, data) in list(pending.items()):
                    doc = prom.query(expr)
                    if doc.get("status") != "success":
                        failures[where] = (
                            f"{expr}\n    -> {doc.get('errorType')}: {doc.get('error')}"
                        )
                        del pending[where]
                    elif _has_data(doc) or not data:
                        del pending[where]
                if pending:
                    time.sleep(1.0)
            for where, (expr, _) in pending.items():
                failures[where] = f"{expr}\n    -> no data"
            # the variables' label_values(metric, label) queries list something
            for path in DASHBOARD_FILES:
                for var in template_variables(path):
                    if var["type"] != "query" or var["datasource"]["type"] != "prometheus":
                        continue
                    m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", var["definition"])
                    assert m, f"{path.name} ${var['name']}: {var['definition']}"
                    doc = prom.api(f"label/{m[2]}/values", **{"match[]": m[1]})
                    if not doc.get("data"):
                        failures[f"{path.name} variable ${var['name']}"] = f"{doc}"

            # the rules loaded, evaluate without error, and the OT alert fires on the
            # sample's Kaspersky hits from ot-plant-1 (sensor-silent and friends do not)
            groups = prom.api("rules")["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            assert len(rules) == len(rule_expressions(RULES))
            bad = {r["name"]: r.get("lastError") for r in rules if r.get("health") != "ok"}
            assert not bad, f"rules with evaluation errors: {bad}"
            firing = {
                (a["labels"]["alertname"], a["labels"].get("site"))
                for a in prom.api("alerts")["data"]["alerts"]
            }
            assert ("KaspwatchKasperskyHitInOTSite", OT_SITE) in firing, firing
            assert not {a for a, _ in firing} & {
                "KaspwatchSensorSilent",
                "KaspwatchNoSensors",
                "KaspwatchTargetDown",
                "KaspwatchPackReloadFailed",
            }, firing
    finally:
        feeder.stop.set()
        with contextlib.suppress(OSError):
            sense.stdin.close()
        feeder.join(5)
        for f in logs.values():
            f.close()
    assert not failures, f"{len(failures)} of {len(queries)} queries failed:\n" + "\n".join(
        f"- {where}: {why}" for where, why in sorted(failures.items())
    )
    assert feeder.rounds > 0
    assert time.monotonic() - started < LIVE_BUDGET_S + 30


def _died(p: subprocess.Popen[bytes], logs: dict[str, IO[bytes]], tmp_path: Path) -> str:
    for f in logs.values():
        f.flush()
    text = "\n".join(
        f"--- {name}.log\n{(tmp_path / f'{name}.log').read_text(errors='replace')[-3000:]}"
        for name in logs
    )
    return f"{p.args[3] if isinstance(p.args, list) else p.args} exited {p.returncode}\n{text}"


def test_signals_take_alert_expressions_apart() -> None:
    assert signals("a > 1 or b == 0") == ["a", "b"]
    assert signals("(x and on () y > bool 2)") == ["x", "y"]
    assert signals('absent_over_time(m{c="x or y"}[1d])') == ['m{c="x or y"}']
    assert signals("sum by (s) (rate(k_total[5m])) / clamp_min(p, 1e-9) > 0.01") == [
        "sum by (s) (rate(k_total[5m])) / clamp_min(p, 1e-9)"
    ]
    assert signals('up{job=~"kaspwatch.*"} == 0') == ['up{job=~"kaspwatch.*"}']
    assert re.fullmatch(r"\S+", signals("sensor_up unless orders")[1])


# ------------------------------------------------------------------------------ SQL panels


def test_sql_panels_against_the_real_postgresql_store(postgres_url: str) -> None:
    """Every SQL query of the incident-response dashboard (panels and variables) runs on a
    real PostgreSQL store holding the sample's hits, as the read-only role Grafana uses
    (created by deploy/docker/postgres/10-grafana-reader.sh before the store's tables
    exist, as in compose), and returns rows."""
    import psycopg

    from consumers.store.backends import open_backend
    from consumers.store.store import Store
    from kaspwatch.cli import main as kaspwatch_main
    from kaspwatch.event import event_from_json

    psql = shutil.which("psql")
    if psql is None:
        pytest.fail("psql not found: install the Debian package postgresql-client")
    url = postgres.create_database(postgres_url, f"dash_{uuid.uuid4().hex[:10]}")
    parts = urllib.parse.urlsplit(url)
    db = parts.path.lstrip("/")
    reader_password = uuid.uuid4().hex
    init = subprocess.run(
        [str(REPO / "deploy" / "docker" / "postgres" / "10-grafana-reader.sh")],
        env={
            **os.environ,
            "PGHOST": parts.hostname or "127.0.0.1",
            "PGPORT": str(parts.port or 5432),
            "POSTGRES_USER": parts.username or "postgres",
            "POSTGRES_DB": db,
            "GRAFANA_READER_PASSWORD": reader_password,
            "PATH": f"{Path(psql).parent}:{os.environ.get('PATH', '')}",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert init.returncode == 0, init.stdout + init.stderr
    try:
        # the store creates its tables afterwards, as kaspwatch store does on first start
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert kaspwatch_main(["scan", "--sensor", SENSOR, str(SAMPLE)]) == 0
        events = [event_from_json(line.encode()) for line in out.getvalue().splitlines()]
        store = Store(open_backend(url))
        assert store.ingest(events) == len(events) > 0
        store.backend.close()
        first = min(int(datetime.fromisoformat(e.ts).timestamp()) for e in events)
        start, end = first - 3600, int(time.time()) + 3600

        path = DASHBOARDS / "kaspwatch-incident-response.json"
        reader = urllib.parse.urlunsplit(
            parts._replace(netloc=f"grafana_reader:{reader_password}@{parts.hostname}:{parts.port}")
        )
        with psycopg.connect(reader, autocommit=True) as conn:
            variables = {v["name"]: v for v in template_variables(path)}
            categories = [r[0] for r in conn.execute(variables["category"]["query"]).fetchall()]
            assert {"update", "telemetry", "activation"} <= set(categories)
            host = events[0].host
            failures = {}
            sql_queries = [q for q in dashboard_targets(path) if q.language == "sql"]
            assert len(sql_queries) >= 8
            for q in sql_queries:
                for label, cats in (("concrete", ["update"]), ("All", categories)):
                    values = {"category": ",".join(f"'{c}'" for c in cats), "host": host}
                    sql = substitute(_sql_macros(q.expr, start, end), values)
                    try:
                        rows = conn.execute(sql.encode()).fetchall()
                    except psycopg.Error as exc:
                        failures[f"{q.panel} ({label})"] = f"{sql}\n    -> {exc}"
                        continue
                    if not rows or rows == [(None,)] or rows == [(0,)]:
                        failures[f"{q.panel} ({label})"] = f"{sql}\n    -> no rows: {rows}"
            # the role Grafana uses reads and cannot write
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                conn.execute(b"DELETE FROM hits")
        assert not failures, "\n".join(f"- {k}: {v}" for k, v in sorted(failures.items()))
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(b"DROP OWNED BY grafana_reader")
            conn.execute(b"DROP ROLE grafana_reader")
