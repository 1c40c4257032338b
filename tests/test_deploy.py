"""The deployment files, checked as far as a machine without Docker or Kubernetes allows.

- Every YAML and JSON file under deploy/ and dashboards/ parses.
- Every ``kaspwatch`` command line in compose.yaml, the Kubernetes manifests and the
  systemd units names a real sub-command, and each of its options appears in that
  sub-command's ``--help``.
- Every file they reference exists (bind mounts, rule files, provisioning, site packs,
  the Dockerfile's sources); secrets are referenced, never shipped.
- Least privilege: only the sensor has a capability, and only NET_RAW.
- The real validators where this machine has them: ``promtool check config``,
  ``amtool check-config``, ``systemd-analyze verify``, ``kubectl kustomize``; and
  ``kaspwatch indicators check`` on the example site configuration.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import tomllib
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.testenv import KASPWATCH, REPO

DEPLOY = REPO / "deploy"
DOCKER = DEPLOY / "docker"
K8S = DEPLOY / "k8s"
SYSTEMD = DEPLOY / "systemd"
PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
ALERTMANAGER_YML = DEPLOY / "alertmanager" / "alertmanager.yml"
OURS = [DOCKER, K8S, SYSTEMD, DEPLOY / "prometheus", DEPLOY / "alertmanager", REPO / "dashboards"]


@functools.cache
def options_of(command: str) -> frozenset[str]:
    """The option strings ``kaspwatch COMMAND --help`` lists; fails for an unknown command."""
    out = subprocess.run(
        [*KASPWATCH, command, "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, f"kaspwatch {command}: not a command\n{out.stderr}"
    return frozenset(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", out.stdout))


def check_command_line(argv: list[str], where: str) -> str:
    """``argv`` = [sub-command, options...]: the sub-command exists and knows each option."""
    assert argv, f"{where}: empty command"
    sub, rest = argv[0], argv[1:]
    known = options_of(sub)
    for arg in rest:
        if arg.startswith("--"):
            opt = arg.split("=", 1)[0]
            assert opt in known, f"{where}: kaspwatch {sub} has no option {opt}"
    return sub


def yaml_docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def test_every_yaml_and_json_file_parses() -> None:
    seen = 0
    for root in OURS:
        for path in sorted(root.rglob("*")):
            if path.suffix in (".yaml", ".yml"):
                yaml_docs(path)
                seen += 1
            elif path.suffix == ".json":
                json.loads(path.read_text())
                seen += 1
    assert seen >= 15


# ------------------------------------------------------------------------------ Docker


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    return doc


def _default(text: str) -> str:
    """Compose interpolation with defaults: ${X:-d} -> d, ${X:?msg} -> X."""
    text = re.sub(r"\$\{(\w+):-([^}]*)\}", r"\2", text)
    return re.sub(r"\$\{(\w+)(:?\?[^}]*)?\}", r"\1", text)


def test_compose_runs_real_commands_with_least_privilege() -> None:
    services = compose()["services"]
    assert {
        "kafka",
        "sensor",
        "alerts",
        "metrics",
        "store",
        "postgres",
        "prometheus",
        "alertmanager",
        "grafana",
    } <= set(services)
    subs = {}
    for name, svc in services.items():
        if not str(svc.get("image", "")).startswith("kaspwatch:"):
            assert "cap_add" not in svc, name
            continue
        assert svc["build"]["context"] == "../.."
        assert (DOCKER / "../.." / svc["build"]["dockerfile"]).resolve() == DOCKER / "Dockerfile"
        subs[name] = check_command_line(
            [_default(a) for a in svc["command"]], f"compose service {name}"
        )
        assert svc["cap_drop"] == ["ALL"], name
        assert svc["read_only"] is True, name
        if name == "sensor":
            assert svc["network_mode"] == "host"
            assert svc["cap_add"] == ["NET_RAW"]
            assert svc["entrypoint"][0] == "python3-netraw"
        else:
            assert "cap_add" not in svc, name
            assert "no-new-privileges:true" in svc["security_opt"], name
    assert subs["sensor"] == "sense" and subs["alerts"] == "alerts"
    assert subs["metrics"] == "metrics" and subs["store"] == "store"


def test_compose_references_existing_files_and_generated_secrets() -> None:
    doc = compose()
    named = set(doc.get("volumes", {}))
    text = (DOCKER / "compose.yaml").read_text()
    for name, svc in doc["services"].items():
        for vol in svc.get("volumes", []):
            src = vol.split(":", 1)[0]
            if src in named:
                continue
            assert (DOCKER / src).exists(), f"compose service {name}: {src} does not exist"
    # the kaspwatch services' /etc/kaspwatch/... arguments are files of ./site
    for svc in doc["services"].values():
        for arg in svc.get("command", []):
            if str(arg).startswith("/etc/kaspwatch/"):
                assert (DOCKER / "site" / arg.removeprefix("/etc/kaspwatch/")).is_file(), arg
    home = doc["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (REPO / "dashboards" / Path(home).name).is_file()
    assert (DOCKER / "postgres" / "10-grafana-reader.sh").stat().st_mode & 0o111
    # every required variable is one make-secrets.sh writes
    required = set(re.findall(r"\$\{(\w+):\?", text))
    script = (DOCKER / "make-secrets.sh").read_text()
    assert required and all(f"{var}=" in script for var in required), required
    assert ".env" in (DOCKER / ".gitignore").read_text().split()


def test_site_configuration_is_valid(tmp_path: Path) -> None:
    out = subprocess.run(
        [*KASPWATCH, "--config", str(DOCKER / "site" / "config.yaml"), "indicators", "check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "site-pack.yaml: ok" in out.stdout and "allowlist.yaml: ok" in out.stdout
    from consumers.assets import load_assets

    assert (
        load_assets(str(DOCKER / "site" / "assets.yaml")).lookup("10.20.0.1").site.startswith("ot-")
    )


def test_dockerfile() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert "pip install --require-hashes -r /tmp/requirements.lock" in text
    assert re.search(r"^USER kaspwatch", text, re.M)
    assert "setcap cap_net_raw+ep /usr/local/bin/python3-netraw" in text
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    for src in re.findall(r"^COPY (\S+) ", text, re.M):
        assert (REPO / src).exists(), f"Dockerfile copies {src}, which does not exist"
        assert f"!{src}" in ignore or f"!{src}/**" in ignore, f"{src} is excluded from the context"
    # the dev tools the lock also pins are removed again: the list is the dev extra's
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    dev = {
        re.split(r"[<>=\[ ]", d)[0] for d in pyproject["project"]["optional-dependencies"]["dev"]
    }
    uninstall = set(re.search(r"pip uninstall -y ([^\n\\]+)", text).group(1).split())  # type: ignore[union-attr]
    assert uninstall == dev
    # the package data the program reads at run time is inside what is copied
    for data in ("kaspwatch/schema", "sensor/packs"):
        assert (REPO / data).is_dir()


# ------------------------------------------------------------------------------ Prometheus


def test_prometheus_and_alertmanager_configs() -> None:
    promtool = shutil.which("promtool")
    amtool = shutil.which("amtool")
    if promtool is None or amtool is None:
        pytest.fail("promtool/amtool missing: bash .ci/system-packages.sh installs them")
    out = subprocess.run(
        [promtool, "check", "config", "--syntax-only", str(PROMETHEUS_YML)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    out = subprocess.run(
        [amtool, "check-config", str(ALERTMANAGER_YML)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    cfg = yaml.safe_load(PROMETHEUS_YML.read_text())
    # rule files as compose mounts them: ../prometheus at /etc/prometheus
    for rule_file in cfg["rule_files"]:
        assert (DEPLOY / "prometheus" / rule_file.removeprefix("/etc/prometheus/")).is_file()
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert {"kaspwatch-sensor", "kaspwatch-metrics", "kaspwatch-alerts"} <= set(jobs)
    services = compose()["services"]
    # each target is a kaspwatch service listening on that port
    for job, service in (("kaspwatch-metrics", "metrics"), ("kaspwatch-alerts", "alerts")):
        host, port = jobs[job]["static_configs"][0]["targets"][0].split(":")
        svc = services[service]
        assert host in svc["networks"]["default"]["aliases"]
        assert any(a.endswith(f":{port}") for a in svc["command"]), (job, svc["command"])
    sensor = jobs["kaspwatch-sensor"]["static_configs"][0]
    assert sensor["labels"]["sensor"] == _default(
        services["sensor"]["environment"]["KASPWATCH_SENSOR"]
    )
    assert sensor["targets"][0].endswith(":9109")
    assert any(_default(a).endswith(":9109") for a in services["sensor"]["command"])


# ------------------------------------------------------------------------------ Kubernetes


def k8s_objects() -> list[dict[str, Any]]:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    objs = []
    for res in kust["resources"]:
        assert (K8S / res).is_file(), f"kustomization lists {res}, which does not exist"
        objs.extend(yaml_docs(K8S / res))
    return objs


def test_kubernetes_manifests() -> None:
    objs = k8s_objects()
    for o in objs:
        assert o["apiVersion"] and o["kind"] and o["metadata"]["name"], o
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for o in objs:
        by_kind.setdefault(o["kind"], {})[o["metadata"]["name"]] = o
    assert "Secret" not in by_kind, "secrets are referenced, never shipped"
    configmaps = set(by_kind["ConfigMap"])
    workloads = {**by_kind["DaemonSet"], **by_kind["Deployment"]}
    assert set(by_kind["DaemonSet"]) == {"kaspwatch-sensor"}
    assert {"kaspwatch-alerts", "kaspwatch-metrics", "kaspwatch-store"} <= set(
        by_kind["Deployment"]
    )
    header = (K8S / "consumers.yaml").read_text().split("apiVersion", 1)[0]
    secrets = set()
    for name, w in workloads.items():
        spec = w["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        for vol in spec.get("volumes", []):
            if "configMap" in vol:
                assert vol["configMap"]["name"] in configmaps, (name, vol)
            if "secret" in vol:
                secrets.add(vol["secret"]["secretName"])
        for c in spec["containers"]:
            assert c["image"] == "kaspwatch"
            for ref in c.get("envFrom", []):
                assert ref["configMapRef"]["name"] in configmaps
            for env in c.get("env", []):
                if "secretKeyRef" in env.get("valueFrom", {}):
                    secrets.add(env["valueFrom"]["secretKeyRef"]["name"])
            sub = check_command_line(c["args"], f"k8s {name}")
            caps = c["securityContext"]["capabilities"]
            assert caps["drop"] == ["ALL"]
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            if name == "kaspwatch-sensor":
                assert sub == "sense"
                assert spec["hostNetwork"] is True
                assert caps["add"] == ["NET_RAW"]
                assert c["command"] == ["python3-netraw", "-m", "kaspwatch"]
            else:
                assert "add" not in caps, name
                assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert secrets == {
        "kaspwatch-webhook",
        "kaspwatch-store-db",
        "kaspwatch-store-api",
        "kaspwatch-kafka",  # optional: CA and SCRAM password of a secured Kafka cluster
    }
    assert all(s in header for s in secrets), "consumers.yaml's header lists the secrets"
    # the site ConfigMap carries the same files as the compose site directory
    site = by_kind["ConfigMap"]["kaspwatch-site"]["data"]
    for fname, text in site.items():
        assert text == (DOCKER / "site" / fname).read_text(), f"k8s {fname} differs from compose"
    scrape = yaml.safe_load(
        by_kind["ConfigMap"]["kaspwatch-prometheus-scrape"]["data"]["kaspwatch-scrape.yaml"]
    )
    assert {j["job_name"] for j in scrape} == {
        "kaspwatch-sensor",
        "kaspwatch-metrics",
        "kaspwatch-alerts",
    }


def test_kustomize_builds() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        warnings.warn(
            "kubectl not installed: `kubectl kustomize deploy/k8s` not run "
            "(the manifests were still parsed and checked above)",
            stacklevel=1,
        )
        return
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    built = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert len(built) == len(k8s_objects())
    assert all(
        d["metadata"].get("namespace") == "kaspwatch" for d in built if d["kind"] != "Namespace"
    )


# ------------------------------------------------------------------------------ systemd


def unit(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


UNITS = sorted(SYSTEMD.glob("*.service"))


def test_systemd_units_run_real_commands_with_least_privilege() -> None:
    assert {u.name for u in UNITS} >= {
        "kaspwatch-sense@.service",
        "kaspwatch-alerts.service",
        "kaspwatch-metrics.service",
        "kaspwatch-store.service",
    }
    for path in UNITS:
        u = unit(path)
        (exec_start,) = u["ExecStart"]
        argv = exec_start.split()
        assert argv[0] == "/opt/kaspwatch/bin/kaspwatch"
        sub = check_command_line(argv[1:], path.name)
        assert u["DynamicUser"] == ["yes"] and u["ProtectSystem"] == ["strict"], path.name
        assert u["NoNewPrivileges"] == ["yes"], path.name
        for arg in argv:
            if arg.startswith("/etc/kaspwatch/"):
                assert (DOCKER / "site" / arg.removeprefix("/etc/kaspwatch/")).is_file(), arg
        if sub == "sense":
            assert u["AmbientCapabilities"] == ["CAP_NET_RAW"]
            assert u["CapabilityBoundingSet"] == ["CAP_NET_RAW"]
        else:
            assert u["CapabilityBoundingSet"] == [""], path.name
            assert u["AmbientCapabilities"] == [""], path.name


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        warnings.warn(
            "systemd-analyze not installed: the units were not verified by systemd "
            "(their commands and options were checked above)",
            stacklevel=1,
        )
        return
    # the units point at the install location; verify them against this checkout's
    # kaspwatch (systemd checks that ExecStart is executable)
    exe = shutil.which("kaspwatch", path=str(Path(KASPWATCH[0]).parent))
    assert exe, "the venv's kaspwatch entry point"
    names = []
    for path in UNITS:
        name = path.name.replace("@.service", "@eth0.service")
        (tmp_path / name).write_text(path.read_text().replace("/opt/kaspwatch/bin/kaspwatch", exe))
        names.append(name)
    out = subprocess.run(
        [tool, "verify", "--man=no", *names],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    mine = [line for line in (out.stdout + out.stderr).splitlines() if "kaspwatch" in line]
    assert out.returncode == 0 and not mine, out.stdout + out.stderr
