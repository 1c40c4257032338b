"""A real Prometheus for tests, and the PromQL bookkeeping around it.

- ``Prometheus``: runs ``/usr/bin/prometheus`` (Debian package ``prometheus``) on a free
  loopback port with throw-away storage, scraping the given targets every second and
  evaluating the given rule files every second; ``query`` goes through its HTTP API.
- ``dashboard_targets``: every query of every panel of a Grafana dashboard (rows and
  nested panels included), with the panel title for messages.
- ``substitute``: Grafana template variables and built-ins replaced by concrete values.
- ``signals``: the sub-expressions an alert expression compares, so a healthy system that
  fires none of the alerts can still show that every series they watch exists.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.testenv import free_port

PROMETHEUS = "/usr/bin/prometheus"
PROMTOOL = "promtool"


def need(tool: str) -> str:
    """The tool's path; fail (never skip) with the package that brings it."""
    found = shutil.which(tool)
    if found is None:
        pytest.fail(
            f"{tool} not found: install the Debian package 'prometheus' "
            "(bash .ci/system-packages.sh does)"
        )
    return found


@dataclass
class Target:
    job: str
    address: str  # HOST:PORT
    labels: Mapping[str, str]


class Prometheus:
    def __init__(
        self, workdir: Path, targets: Sequence[Target], rule_files: Sequence[Path] = ()
    ) -> None:
        self.binary = need(PROMETHEUS if Path(PROMETHEUS).exists() else "prometheus")
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        jobs: dict[str, list[dict[str, Any]]] = {}
        for t in targets:
            jobs.setdefault(t.job, []).append({"targets": [t.address], "labels": dict(t.labels)})
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [
                {"job_name": job, "scrape_interval": "1s", "static_configs": static}
                for job, static in jobs.items()
            ],
        }
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Prometheus:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1h",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"prometheus exited {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        pytest.fail(f"prometheus not ready in 30 s:\n{self.log.read_text()}")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def api(self, path: str, **params: str) -> dict[str, Any]:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                doc: dict[str, Any] = json.load(r)
        except urllib.error.HTTPError as exc:  # 400 for a parse error: its body says why
            doc = json.load(exc)
        return doc

    def query(self, expr: str) -> dict[str, Any]:
        """The API's answer to an instant query: status, and data or error."""
        return self.api("query", query=expr)

    def targets_up(self) -> dict[str, str]:
        doc = self.api("targets")
        return {t["scrapeUrl"]: t["health"] for t in doc.get("data", {}).get("activeTargets", [])}


# ---------------------------------------------------------------------------- dashboards


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref: str
    datasource: str  # the datasource uid text, e.g. ${DS_PROMETHEUS}
    expr: str  # PromQL (Prometheus targets) or SQL (rawSql)
    language: str  # "promql" or "sql"


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))


def dashboard_targets(path: Path) -> list[PanelQuery]:
    dash = json.loads(path.read_text())
    out = []
    for panel in _panels(dash.get("panels", [])):
        default_ds = (panel.get("datasource") or {}).get("uid", "")
        for t in panel.get("targets", []):
            ds = (t.get("datasource") or {}).get("uid", default_ds)
            if "expr" in t:
                out.append(
                    PanelQuery(path.name, panel["title"], t["refId"], ds, t["expr"], "promql")
                )
            elif "rawSql" in t:
                out.append(
                    PanelQuery(path.name, panel["title"], t["refId"], ds, t["rawSql"], "sql")
                )
    return out


def template_variables(path: Path) -> list[dict[str, Any]]:
    variables: list[dict[str, Any]] = json.loads(path.read_text())["templating"]["list"]
    return variables


# Grafana's built-ins as the test pins them: what a 1 h dashboard at 1 s scrape shows.
BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h", "__range_s": "3600"}

_VAR = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Replace ``$name``, ``${name}``, ``${name:fmt}`` and ``[[name]]``; an unknown
    variable is an error (a panel must only use variables its dashboard defines)."""

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name in values:
            return values[name]
        if name in BUILTINS:
            return BUILTINS[name]
        raise KeyError(f"unknown template variable ${name} in {expr!r}")

    return _VAR.sub(repl, expr)


# ---------------------------------------------------------------------------- alert signals

_CMP = ("==", "!=", ">=", "<=", ">", "<")
_MODIFIER = re.compile(
    r"^\s*(?:bool\b\s*)?(?:(?:on|ignoring)\s*\([^)]*\)\s*)?(?:(?:group_left|group_right)\s*(?:\([^)]*\))?\s*)?"
)
_NUMBER = re.compile(r"^\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*$")


def _top_level(expr: str) -> Iterator[tuple[int, str]]:
    """(index, char) of the characters outside (), [], {} and string literals."""
    depth = 0
    quote = ""
    i = 0
    while i < len(expr):
        c = expr[i]
        if quote:
            if c == "\\":
                i += 2
                continue
            if c == quote:
                quote = ""
        elif c in "\"'`":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0:
            yield i, c
        i += 1


def _split(expr: str, ops: Sequence[str], words: bool) -> list[str] | None:
    """Split at the top-level occurrences of ``ops`` (keywords when ``words``)."""
    cuts: list[tuple[int, int]] = []
    top = dict(_top_level(expr))
    i = 0
    while i < len(expr):
        if i not in top:
            i += 1
            continue
        for op in ops:
            end = i + len(op)
            if expr[i:end] != op or not all(k in top for k in range(i, end)):
                continue
            if words:
                before = expr[i - 1] if i else " "
                after = expr[end] if end < len(expr) else " "
                if before.isalnum() or before == "_" or after.isalnum() or after == "_":
                    continue
            cuts.append((i, end))
            i = end - 1
            break
        i += 1
    if not cuts:
        return None
    parts, start = [], 0
    for a, b in cuts:
        parts.append(expr[start:a])
        start = b
    parts.append(expr[start:])
    return [_MODIFIER.sub("", p, count=1) if n else p for n, p in enumerate(parts)]


def _unwrap(expr: str) -> str:
    expr = expr.strip()
    while expr.startswith("(") and expr.endswith(")"):
        depth = 0
        for i, c in _all_depths(expr):
            depth += c
            if depth == 0 and i < len(expr) - 1:
                return expr
        expr = expr[1:-1].strip()
    return expr


def _all_depths(expr: str) -> Iterator[tuple[int, int]]:
    quote = ""
    for i, c in enumerate(expr):
        if quote:
            if c == quote:
                quote = ""
        elif c in "\"'`":
            quote = c
        elif c == "(":
            yield i, 1
        elif c == ")":
            yield i, -1


_ABSENT = re.compile(r"^absent(_over_time)?\s*\((.*)\)$", re.S)


def signals(expr: str) -> list[str]:
    """The quantities an alert expression watches, thresholds and set operators removed.

    ``a > 1 or b == 0`` → ``[a, b]``; ``x and on () y`` → ``[x, y]``; ``absent(m)`` →
    ``[m]``; ``absent_over_time(m[1d])`` → ``[m]``. Each must return data in a healthy
    system, or the alert could never fire.
    """
    expr = _unwrap(expr)
    for ops, words in ((("or",), True), (("and", "unless"), True), (_CMP, False)):
        parts = _split(expr, ops, words)
        if parts is None:
            continue
        out: list[str] = []
        for part in parts:
            if not _NUMBER.match(part):
                out.extend(signals(part))
        return out
    m = _ABSENT.match(expr)
    if m:
        inner = m.group(2).strip()
        if m.group(1):
            inner = re.sub(r"\[[^\]]*\]\s*$", "", inner).strip()
        return signals(inner)
    return [expr]


def rule_expressions(path: Path) -> list[tuple[str, str, str]]:
    """(kind, name, expr) of every rule of a Prometheus rule file."""
    doc = yaml.safe_load(path.read_text())
    out = []
    for group in doc["groups"]:
        for rule in group["rules"]:
            kind = "alert" if "alert" in rule else "record"
            out.append((kind, rule.get("alert") or rule["record"], rule["expr"]))
    return out
