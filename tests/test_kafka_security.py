"""Kafka over TLS and SASL/SCRAM, against a real broker with a SASL_SSL listener.

The module starts its own broker (deploy/kafka/kafka-local.sh) on loopback with three
listeners: PLAINTEXT (inter-broker and the script's readiness probe), SASL_SSL with
SCRAM-SHA-512 (the one under test) and MTLS (TLS with a required client certificate).
Certificates are made here (tests/tlscerts.py): a CA, a broker certificate for
127.0.0.1/localhost, a client certificate; the broker reads them as PEM.

Every kaspwatch command runs as a real process; each one's stdout and stderr are kept, and
the last test checks the password appears in none of them, nor in the files they wrote.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import selectors
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kaspwatch.bus.security import (
    KafkaConfigError,
    KafkaSettings,
    RedactSecrets,
    resolve,
)
from kaspwatch.cli.config import load_config
from tests.kafkautil import scrape
from tests.testenv import KAFKA_SH, KASPWATCH, REPO, SAMPLE, free_port, kafka_jars
from tests.tlscerts import PKI, make_ca, make_pki

USER = "kw-sensor"
OUTPUTS: list[str] = []  # every stdout/stderr of every command this module ran


@dataclass(frozen=True)
class SecureBroker:
    sasl_ssl: str  # host:port of the SASL_SSL listener
    mtls: str  # host:port of the TLS listener that wants a client certificate
    plaintext: str
    password: str
    password_file: Path
    pki: PKI
    run_dir: Path


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    base = tmp_path_factory.mktemp("kafka-sasl")
    pki = make_pki(base / "pki")
    # non-ASCII: the client library's debug log showed such a password as escaped bytes
    password = "Kw-é€-" + secrets.token_urlsafe(18)
    plain, ctrl, sasl, mtls = (free_port() for _ in range(4))
    store = (
        f"ssl.keystore.type=PEM\nssl.keystore.location={pki.server.bundle}\n"
        f"ssl.truststore.type=PEM\nssl.truststore.location={pki.ca}\n"
    )
    extra = base / "sasl-ssl.properties"
    extra.write_text(
        f"listeners=PLAINTEXT://127.0.0.1:{plain},CONTROLLER://127.0.0.1:{ctrl},"
        f"SASL_SSL://127.0.0.1:{sasl},MTLS://127.0.0.1:{mtls}\n"
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{plain},SASL_SSL://127.0.0.1:{sasl},"
        f"MTLS://127.0.0.1:{mtls}\n"
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,"
        "SASL_SSL:SASL_SSL,MTLS:SSL\n"
        "sasl.enabled.mechanisms=SCRAM-SHA-512\n"
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config="
        "org.apache.kafka.common.security.scram.ScramLoginModule required;\n"
        + "".join(f"listener.name.sasl_ssl.{line}\n" for line in store.splitlines())
        + "".join(f"listener.name.mtls.{line}\n" for line in store.splitlines())
        + "listener.name.mtls.ssl.client.auth=required\n"
    )
    scram = base / "scram-users"
    scram.write_text(f"SCRAM-SHA-512=[name={USER},password={password}]\n")
    scram.chmod(0o600)
    password_file = base / "kafka-password"
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    run_dir = base / "run"
    env = {
        **os.environ,
        "KAFKA_RUN_DIR": str(run_dir),
        "KAFKA_PORT": str(plain),
        "KAFKA_CONTROLLER_PORT": str(ctrl),
        "KAFKA_EXTRA_PROPERTIES": str(extra),
        "KAFKA_SCRAM_CREDENTIALS": str(scram),
    }
    kafka_jars(env)
    proc = subprocess.run(
        ["bash", str(KAFKA_SH), "start"], env=env, capture_output=True, text=True, timeout=300
    )
    if proc.returncode != 0:
        pytest.fail(f"SASL_SSL broker did not start:\n{proc.stderr[-3000:]}")
    try:
        yield SecureBroker(
            sasl_ssl=f"127.0.0.1:{sasl}",
            mtls=f"127.0.0.1:{mtls}",
            plaintext=f"127.0.0.1:{plain}",
            password=password,
            password_file=password_file,
            pki=pki,
            run_dir=run_dir,
        )
    finally:
        subprocess.run(["bash", str(KAFKA_SH), "stop"], env=env, timeout=120, check=False)


def kaspwatch(
    *args: str, env: dict[str, str] | None = None, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    """Run a real kaspwatch command; its output is kept for the secrecy check."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KASPWATCH_")}
    proc = subprocess.run(
        [*KASPWATCH, *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    OUTPUTS.extend([proc.stdout, proc.stderr])
    return proc


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """A long-running kaspwatch command; ``stop`` ends it and keeps its output."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KASPWATCH_")}
    return subprocess.Popen(
        [*KASPWATCH, *args],
        env={**clean, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def first_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The first line the process prints within ``timeout`` seconds ('' if none)."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            return ""
    line = proc.stdout.readline()
    OUTPUTS.append(line)
    return line


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"{proc.args!r} did not stop on SIGTERM:\n{err}")
    OUTPUTS.extend([out, err])


def secure(b: SecureBroker, *, ca: Path | None = None) -> list[str]:
    return [
        "--kafka-security-protocol",
        "SASL_SSL",
        "--kafka-user",
        USER,
        "--kafka-ca",
        str(ca or b.pki.ca),
    ]


def sense(
    bootstrap: str,
    *flags: str,
    topic: str = "sec.hits",
    env: dict[str, str] | None = None,
    timeout: float = 90,
    verbose: bool = False,
) -> subprocess.CompletedProcess[str]:
    """``kaspwatch sense`` on the sample capture, publishing to ``bootstrap``."""
    return kaspwatch(
        *(["-v"] if verbose else []),
        "sense",
        "--pcap",
        str(SAMPLE),
        "--bus",
        f"kafka://{bootstrap}",
        "--topic",
        topic,
        "--heartbeat-interval",
        "60",
        *flags,
        env=env,
        timeout=timeout,
    )


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The command failed at start with exit 2 and exactly one error line, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("kaspwatch: error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def expected_hits() -> int:
    proc = kaspwatch("scan", str(SAMPLE))
    assert proc.returncode == 0, proc.stderr
    return len(proc.stdout.splitlines())


# ------------------------------------------------------------------ the real path


@pytest.mark.kafka
def test_sensor_publishes_and_consumers_read_back_over_sasl_ssl(
    broker: SecureBroker, tmp_path: Path
) -> None:
    want = expected_hits()
    assert want > 0
    topic = "sec.hits.roundtrip"
    # the sensor: password from a file given by flag
    proc = sense(
        broker.sasl_ssl,
        *secure(broker),
        "--kafka-password-file",
        str(broker.password_file),
        topic=topic,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"{want} hits, {want} published, 0 publish failures" in proc.stderr
    assert f"SASL_SSL, SCRAM-SHA-512 as {USER}" in proc.stderr

    # the store: settings from the config file's kafka: section, password from the env
    config = tmp_path / "kaspwatch.yaml"
    (tmp_path / "ca.pem").write_bytes(broker.pki.ca.read_bytes())
    config.write_text(
        f"bus: kafka://{broker.sasl_ssl}\n"
        "kafka:\n"
        "  security_protocol: SASL_SSL\n"
        "  sasl_mechanism: SCRAM-SHA-512\n"
        f"  username: {USER}\n"
        "  ca_file: ca.pem\n"  # relative to the config file
    )
    db = f"sqlite:///{tmp_path / 'store.sqlite'}"
    proc = kaspwatch(
        "--config",
        str(config),
        "store",
        "--topic",
        topic,
        "--db",
        db,
        "--group",
        "sec-store",
        "--from-beginning",
        "--until-caught-up",
        env={"KASPWATCH_KAFKA_PASSWORD": broker.password},
    )
    assert proc.returncode == 0, proc.stderr
    assert f"store: {want} hits stored" in proc.stderr
    proc = kaspwatch("query", "hosts", "--db", db, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert sum(h["count"] for h in json.loads(proc.stdout)) == want

    # the alerts consumer, a long-running group member: its alerts arrive over SASL_SSL too,
    # password from an environment variable of the site's choosing
    alerts = serve(
        "alerts",
        "--bus",
        f"kafka://{broker.sasl_ssl}",
        "--topic",
        topic,
        "--group",
        "sec-alerts",
        "--alerts-topic",
        "sec.alerts",
        "--dead-letter-topic",
        "sec.dlq",
        "--state",
        str(tmp_path / "alerts.sqlite"),
        *secure(broker),
        "--kafka-password-env",
        "SITE_KAFKA_SECRET",
        env={"SITE_KAFKA_SECRET": broker.password},
    )
    try:
        first = first_line(alerts, timeout=60)
    finally:
        stop(alerts)
    assert first, "alerts printed no alert within 60 s"
    alert = json.loads(first)
    assert alert["host"] and alert["category"]

    # the metrics consumer: hits and heartbeats subscribers, and the lag reader (an admin
    # client) reporting the store's group, all over SASL_SSL
    port = free_port()
    metrics = serve(
        "--config",
        str(config),
        "metrics",
        "--topic",
        topic,
        "--group",
        "sec-metrics",
        "--listen",
        f"127.0.0.1:{port}",
        "--lag-groups",
        "sec-store",
        env={"KASPWATCH_KAFKA_PASSWORD": broker.password},
    )
    lag = f'kaspwatch_consumer_lag{{group="sec-store",partition="0",topic="{topic}"}}'
    try:
        samples: dict[str, float] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and metrics.poll() is None:
            with contextlib.suppress(OSError):
                samples = scrape(port)
            hits = sum(v for k, v in samples.items() if k.startswith("kaspwatch_hits_total{"))
            if hits == want and lag in samples:
                break
            time.sleep(0.3)
    finally:
        stop(metrics)
    assert hits == want, samples
    assert samples[lag] == 0  # the store committed everything

    for path in tmp_path.iterdir():  # nothing written holds the password
        assert broker.password.encode() not in path.read_bytes(), path


@pytest.mark.kafka
def test_mutual_tls_with_a_client_certificate(broker: SecureBroker) -> None:
    tls = ["--kafka-security-protocol", "SSL", "--kafka-ca", str(broker.pki.ca)]
    cert = ["--kafka-cert", str(broker.pki.client.cert), "--kafka-key", str(broker.pki.client.key)]
    proc = sense(broker.mtls, *tls, *cert)
    assert proc.returncode == 0, proc.stderr
    assert "client certificate" in proc.stderr
    line = one_error_line(sense(broker.mtls, *tls))  # no client certificate
    assert f"kafka {broker.mtls}:" in line


# ------------------------------------------------------------- failing clearly


@pytest.mark.kafka
def test_wrong_password_is_one_clear_line(broker: SecureBroker) -> None:
    for verbose in ([], ["-v"]):
        proc = kaspwatch(
            *verbose,
            "sense",
            "--pcap",
            str(SAMPLE),
            "--bus",
            f"kafka://{broker.sasl_ssl}",
            *secure(broker),
            env={"KASPWATCH_KAFKA_PASSWORD": "not-" + broker.password},
        )
        line = one_error_line(proc)
        assert f"authentication failed for user '{USER}' (SCRAM-SHA-512)" in line
        assert broker.password not in proc.stderr


@pytest.mark.kafka
def test_untrusted_ca_is_refused(broker: SecureBroker, tmp_path: Path) -> None:
    other_ca, _, _ = make_ca(tmp_path, "some-other-ca")
    proc = sense(
        broker.sasl_ssl,
        *secure(broker, ca=other_ca),
        "--kafka-password-file",
        str(broker.password_file),
    )
    line = one_error_line(proc)
    assert "certificate is not trusted" in line and str(other_ca) in line


@pytest.mark.kafka
def test_host_name_is_verified(broker: SecureBroker) -> None:
    """A certificate from the trusted CA, but for another name: refused. (A loopback TLS
    server stands in for the broker: the handshake fails before Kafka's protocol starts.)"""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(broker.pki.misnamed.cert, broker.pki.misnamed.key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    done = threading.Event()

    def serve_tls() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn, contextlib.suppress(OSError):
                conn.settimeout(5)
                ctx.wrap_socket(conn, server_side=True).close()

    thread = threading.Thread(target=serve_tls, daemon=True)
    thread.start()
    try:
        addr = f"127.0.0.1:{listener.getsockname()[1]}"
        proc = sense(addr, "--kafka-security-protocol", "SSL", "--kafka-ca", str(broker.pki.ca))
    finally:
        done.set()
        thread.join(5)
        listener.close()
    line = one_error_line(proc)
    assert "certificate is not trusted (IP address mismatch" in line, line
    assert "not valid for '127.0.0.1'" in line, line


@pytest.mark.kafka
def test_plaintext_client_on_the_sasl_ssl_port_fails_fast(broker: SecureBroker) -> None:
    started = time.monotonic()
    proc = sense(broker.sasl_ssl, timeout=60)  # subprocess timeout: it must not hang
    line = one_error_line(proc)
    assert "closed the connection (PLAINTEXT)" in line
    assert "--kafka-security-protocol" in line
    assert time.monotonic() - started < 60


@pytest.mark.kafka
def test_sasl_ssl_client_on_the_plaintext_port_fails(broker: SecureBroker) -> None:
    proc = sense(
        broker.plaintext, *secure(broker), "--kafka-password-file", str(broker.password_file)
    )
    assert "is this a TLS listener" in one_error_line(proc)


@pytest.mark.kafka
def test_bad_settings_fail_before_connecting(broker: SecureBroker, tmp_path: Path) -> None:
    missing = tmp_path / "missing-ca.pem"
    line = one_error_line(
        sense(
            broker.sasl_ssl,
            *secure(broker, ca=missing),
            "--kafka-password-file",
            str(broker.password_file),
        )
    )
    assert line.endswith(f"--kafka-ca: {missing}: no such file")

    line = one_error_line(
        sense(broker.sasl_ssl, *secure(broker), "--kafka-password-file", str(tmp_path / "nope"))
    )
    assert "--kafka-password-file:" in line and "cannot read: No such file" in line

    shared = tmp_path / "shared-password"
    shared.write_text("x\n")
    shared.chmod(0o644)
    line = one_error_line(
        sense(broker.sasl_ssl, *secure(broker), "--kafka-password-file", str(shared))
    )
    assert "world-readable" in line

    line = one_error_line(sense(broker.sasl_ssl, *secure(broker)))  # no password anywhere
    assert "no password for Kafka user 'kw-sensor'" in line and "$KASPWATCH_KAFKA_PASSWORD" in line

    # the config file: a password literal is refused at its line; a missing CA at its line
    config = tmp_path / "c.yaml"
    config.write_text(
        "sensor: s1\nkafka:\n  security_protocol: SASL_SSL\n  username: u\n"
        f"  password: {broker.password}\n"
    )
    proc = kaspwatch(
        "--config", str(config), "sense", "--pcap", str(SAMPLE), "--bus", "kafka://127.0.0.1:1"
    )
    line = one_error_line(proc)
    assert f"{config}:5: kafka.password: a password is not accepted" in line
    assert broker.password not in proc.stderr
    config.write_text("kafka:\n  security_protocol: SSL\n  ca_file: nowhere.pem\n")
    line = one_error_line(
        kaspwatch(
            "--config",
            str(config),
            "store",
            "--bus",
            "kafka://127.0.0.1:1",
            "--db",
            "sqlite:///:memory:",
        )
    )
    assert f"{config}:3: kafka.ca_file: {tmp_path / 'nowhere.pem'}: no such file" in line
    config.write_text(
        "kafka:\n  security_protocol: SASL_PLAINTEXT\n  sasl_mechanism: PLAIN\n  username: u\n"
    )
    line = one_error_line(
        kaspwatch("--config", str(config), "metrics", "--bus", "kafka://127.0.0.1:1")
    )
    assert f"{config}:3: kafka.sasl_mechanism: SASL PLAIN sends the password" in line


# ------------------------------------------------------------------ the secret


def test_settings_never_show_the_password() -> None:
    pw = "pw-" + secrets.token_hex(8)
    sec = resolve(
        KafkaSettings(security_protocol="SASL_SSL", username="u"), {"KASPWATCH_KAFKA_PASSWORD": pw}
    )
    assert sec.client_kwargs()["sasl_plain_password"] == pw
    for text in (repr(sec), str(sec), sec.describe(), repr(sec.password), f"{sec.password}"):
        assert pw not in text
    assert RedactSecrets.scrub(f"oops {pw} leaked") == "oops *** leaked"
    with pytest.raises(KafkaConfigError, match="only over TLS"):
        resolve(
            KafkaSettings(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", username="u"),
            {"KASPWATCH_KAFKA_PASSWORD": pw},
        )


@pytest.mark.kafka
def test_no_command_ever_printed_the_password(broker: SecureBroker) -> None:
    """A right and a wrong password with debug logs on, then every output of this module
    (all the commands above when they ran first) and the broker's logs: no password."""
    right = sense(
        broker.sasl_ssl,
        *secure(broker),
        verbose=True,
        env={"KASPWATCH_KAFKA_PASSWORD": broker.password},
        topic="sec.verbose",
    )
    assert right.returncode == 0, right.stderr
    assert "DEBUG" in right.stderr  # aiokafka's own debug output is in there too
    wrong = sense(
        broker.sasl_ssl,
        *secure(broker),
        verbose=True,
        env={"KASPWATCH_KAFKA_PASSWORD": broker.password[::-1]},
    )
    assert "authentication failed" in one_error_line(wrong)
    escaped = repr(broker.password.encode())[2:-1]  # b'Kw-\xc3\xa9...': how bytes print
    for text in OUTPUTS:
        assert broker.password not in text
        assert broker.password[::-1] not in text
        assert escaped not in text
        # no SCRAM exchange either: it lets a reader test password guesses offline
        assert "SaslAuthenticate" not in text and "n,,n=" not in text
    for log in (broker.run_dir / "logs").glob("*.log"):
        assert broker.password not in log.read_text(errors="replace"), log


def test_the_readme_example_configuration_loads(tmp_path: Path) -> None:
    """The `kafka:` example in README "Kafka security" uses the real keys."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Kafka security", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    config = tmp_path / "site.yaml"
    config.write_text(block)
    kafka = load_config(str(config)).kafka
    assert kafka.security_protocol == "SASL_SSL" and kafka.sasl_mechanism == "SCRAM-SHA-512"
    assert kafka.ca_file == str(tmp_path / "kafka-ca.pem")
    assert kafka.where("ca_file") == f"{config}:7: kafka.ca_file"
