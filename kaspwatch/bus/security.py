"""How every Kafka client of kaspwatch connects: TLS, SASL/SCRAM, and where the password
comes from. The one place that builds aiokafka's connection keyword arguments.

Settings come from flags, the ``kafka:`` section of the configuration file, then the
environment (see ``kaspwatch.cli.kafka``). ``resolve`` checks them and reads the
password **before** anything connects, so a missing CA file, an unreadable password file or
a PLAIN login over an unencrypted connection is a one-line error naming the flag or the
``file:line`` that set it.

The password is never taken from the command line (argv is readable by every user in
/proc): only from a file (``password_file``) or from an environment variable
(``password_env``, default ``KASPWATCH_KAFKA_PASSWORD``). It is held in a ``Secret`` whose
``repr`` is ``***``; every value read is registered with ``RedactSecrets``, a logging filter
that replaces it wherever it would appear in a log line.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Final

from kaspwatch.bus import BusError
from kaspwatch.secretfile import read_secret_file

if TYPE_CHECKING:  # ssl is imported where a TLS context is built: ``scan`` never needs it
    import ssl

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN")
DEFAULT_MECHANISM = "SCRAM-SHA-512"
DEFAULT_PASSWORD_ENV = "KASPWATCH_KAFKA_PASSWORD"  # noqa: S105 - a variable name
REDACTED = "***"

log = logging.getLogger("kaspwatch")


class KafkaConfigError(BusError):
    """Kafka connection settings are wrong; the message names where they were set."""


class Secret:
    """A value that must not be printed: ``str``/``repr`` show ``***``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        RedactSecrets.register(value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return REDACTED

    __str__ = __repr__


# The client library's records that carry an authentication exchange: withheld whole,
# whatever the secret's encoding (a SCRAM exchange holds no password, yet lets a reader
# test password guesses offline).
_AUTH_TYPES: Final = ("SaslHandshake", "SaslAuthenticate")
WITHHELD: Final = "<authentication exchange withheld>"


class RedactSecrets(logging.Filter):
    """Keeps secrets out of log lines, by structure first: any argument of a record that is
    an authentication request or response (or raw bytes from the Kafka client) is replaced
    before formatting; then every registered secret, in the forms it can take in a message
    (as given, ``repr``'d, its escaped UTF-8 bytes), is replaced in the message and
    traceback text."""

    _secrets: ClassVar[set[str]] = set()

    @classmethod
    def register(cls, value: str) -> None:
        if value:
            raw = value.encode("utf-8", "surrogateescape")
            cls._secrets |= {value, repr(value)[1:-1], repr(raw)[2:-1], raw.hex()}

    @classmethod
    def scrub(cls, text: str) -> str:
        for secret in sorted(cls._secrets, key=len, reverse=True):
            text = text.replace(secret, REDACTED)
        return text

    @staticmethod
    def _withhold(record: logging.LogRecord) -> None:
        args = record.args
        if not args or not isinstance(args, tuple):
            return
        kafka = record.name.startswith("aiokafka")
        clean = tuple(
            WITHHELD
            if type(a).__name__.startswith(_AUTH_TYPES)
            or (kafka and isinstance(a, bytes | bytearray | memoryview))
            else a
            for a in args
        )
        if clean != args:
            record.args = clean

    def filter(self, record: logging.LogRecord) -> bool:
        self._withhold(record)
        if self._secrets:
            message = record.getMessage()
            clean = self.scrub(message)
            if clean != message:
                record.msg, record.args = clean, None
            if record.exc_info and record.exc_info[1] is not None:
                trace = logging.Formatter().formatException(record.exc_info)
                text = self.scrub(trace)
                if text != trace:  # else the record keeps its exception for other handlers
                    record.exc_info, record.exc_text = None, text
        return True


@dataclass(frozen=True)
class KafkaSettings:
    """Unchecked settings as given; ``origins`` says where each one came from
    (``--kafka-ca``, ``site.yaml:7``, ``$KASPWATCH_KAFKA_PASSWORD``) for error messages."""

    security_protocol: str | None = None
    sasl_mechanism: str | None = None
    username: str | None = None
    password_file: str | None = None
    password_env: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    origins: Mapping[str, str] = field(default_factory=dict)

    def where(self, key: str) -> str:
        return self.origins.get(key, key)


@dataclass(frozen=True)
class KafkaSecurity:
    """Checked settings, password read, TLS context built: ready for aiokafka."""

    protocol: str = "PLAINTEXT"
    mechanism: str | None = None
    username: str | None = None
    password: Secret | None = field(default=None, repr=False)
    ca_file: str | None = None
    cert_file: str | None = None
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for every aiokafka producer, consumer and admin client."""
        kw: dict[str, Any] = {"security_protocol": self.protocol}
        if self.tls:
            kw["ssl_context"] = self.ssl_context
        if self.sasl:
            assert self.password is not None
            kw["sasl_mechanism"] = self.mechanism
            kw["sasl_plain_username"] = self.username
            kw["sasl_plain_password"] = self.password.reveal()
        return kw

    def describe(self) -> str:
        """For the start-up log line: never the password."""
        parts = [self.protocol]
        if self.sasl:
            parts.append(f"{self.mechanism} as {self.username}")
        if self.tls:
            parts.append(f"CA {self.ca_file or 'system trust store'}")
            if self.cert_file:
                parts.append(f"client certificate {self.cert_file}")
        return ", ".join(parts)


PLAINTEXT = KafkaSecurity()


def resolve(settings: KafkaSettings, environ: Mapping[str, str] | None = None) -> KafkaSecurity:
    """Check the settings, read the password, build the TLS context; raise
    ``KafkaConfigError`` naming the setting's origin on anything wrong."""
    env = os.environ if environ is None else environ
    s = settings
    protocol = (s.security_protocol or "PLAINTEXT").upper()
    if protocol not in PROTOCOLS:
        raise KafkaConfigError(
            f"{s.where('security_protocol')}: security protocol {s.security_protocol!r}: "
            f"expected one of {', '.join(PROTOCOLS)}"
        )
    tls = protocol in ("SSL", "SASL_SSL")
    sasl = protocol in ("SASL_PLAINTEXT", "SASL_SSL")
    for key in ("ca_file", "cert_file", "key_file"):
        if getattr(s, key) and not tls:
            raise KafkaConfigError(
                f"{s.where(key)}: a TLS file is given but the security protocol is "
                f"{protocol}; use SSL or SASL_SSL"
            )
    for key in ("sasl_mechanism", "username", "password_file"):
        if getattr(s, key) and not sasl:
            raise KafkaConfigError(
                f"{s.where(key)}: SASL settings are given but the security protocol is "
                f"{protocol}; use SASL_SSL"
            )
    context = _tls_context(s) if tls else None
    if not sasl:
        return KafkaSecurity(
            protocol=protocol, ca_file=s.ca_file, cert_file=s.cert_file, ssl_context=context
        )
    mechanism = (s.sasl_mechanism or DEFAULT_MECHANISM).upper()
    if mechanism not in MECHANISMS:
        raise KafkaConfigError(
            f"{s.where('sasl_mechanism')}: SASL mechanism {s.sasl_mechanism!r}: expected one "
            f"of {', '.join(MECHANISMS)}"
        )
    if mechanism == "PLAIN" and not tls:
        raise KafkaConfigError(
            f"{s.where('sasl_mechanism')}: SASL PLAIN sends the password as it is: only over "
            "TLS (SASL_SSL); use SCRAM-SHA-512"
        )
    if not s.username:
        raise KafkaConfigError(
            f"{s.where('security_protocol')}: {protocol} needs a user name "
            "(--kafka-user, or 'username' under 'kafka:' in the config file)"
        )
    password = _password(s, env)
    if not tls:
        log.warning(
            "kafka: %s: the password is not sent, but every hit crosses the network "
            "unencrypted; use SASL_SSL",
            protocol,
        )
    return KafkaSecurity(
        protocol=protocol,
        mechanism=mechanism,
        username=s.username,
        password=password,
        ca_file=s.ca_file,
        cert_file=s.cert_file,
        ssl_context=context,
    )


def _password(s: KafkaSettings, env: Mapping[str, str]) -> Secret:
    if s.password_file:
        try:
            raw = read_secret_file(s.password_file, "Kafka password file")
        except (OSError, ValueError) as exc:
            raise KafkaConfigError(f"{s.where('password_file')}: {_reason(exc)}") from None
        try:
            return Secret(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise KafkaConfigError(
                f"{s.where('password_file')}: {s.password_file} is not UTF-8 text"
            ) from None
    name = s.password_env or DEFAULT_PASSWORD_ENV
    value = env.get(name)
    if not value:
        raise KafkaConfigError(
            f"{s.where('username')}: no password for Kafka user {s.username!r}: give "
            f"--kafka-password-file FILE (or 'password_file' under 'kafka:') or set ${name}"
        )
    return Secret(value)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: cannot read: {exc.strerror}"
    return str(exc)


def _no_key_password() -> str:
    raise KafkaConfigError("the private key is encrypted")


def _tls_context(s: KafkaSettings) -> ssl.SSLContext:
    """Server certificate and host name always checked; TLS 1.2 at least."""
    import ssl  # here: 20 ms that only a TLS connection needs

    for key in ("ca_file", "cert_file", "key_file"):
        path = getattr(s, key)
        if path and not os.access(path, os.R_OK):
            why = "no such file" if not os.path.exists(path) else "not readable"
            raise KafkaConfigError(f"{s.where(key)}: {path}: {why}")
    if bool(s.cert_file) != bool(s.key_file):
        key = "cert_file" if s.cert_file else "key_file"
        raise KafkaConfigError(
            f"{s.where(key)}: a client certificate needs both --kafka-cert and --kafka-key"
        )
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    if s.ca_file:
        try:
            context.load_verify_locations(cafile=s.ca_file)
        except ssl.SSLError as exc:
            raise KafkaConfigError(
                f"{s.where('ca_file')}: {s.ca_file}: no PEM CA certificate in it ({exc.reason})"
            ) from None
    if s.cert_file and s.key_file:
        try:
            context.load_cert_chain(s.cert_file, s.key_file, password=_no_key_password)
        except KafkaConfigError:
            raise KafkaConfigError(
                f"{s.where('key_file')}: {s.key_file}: the private key is encrypted; give an "
                "unencrypted PEM key readable only by this service"
            ) from None
        except ssl.SSLError as exc:
            raise KafkaConfigError(
                f"{s.where('cert_file')}: {s.cert_file} / {s.key_file}: not a PEM "
                f"certificate and its key ({exc.reason})"
            ) from None
    return context


def explain_connect_failure(
    bootstrap: str, security: KafkaSecurity, seen: list[str], exc: BaseException
) -> tuple[str, bool]:
    """One line for a client that could not start, from what aiokafka saw connecting, and
    whether it is only that nothing answered (no refusal: credentials, TLS, protocol)."""
    detail = seen[-1] if seen else str(exc)
    low = detail.lower()
    if "saslauthenticationfailed" in low or "authentication failed" in low:
        why = (
            f"authentication failed for user {security.username!r} ({security.mechanism}): "
            "wrong user name or password"
        )
    elif "unsupportedsaslmechanism" in low or ("does not support" in low and "sasl" in low):
        why = f"the broker does not offer {security.mechanism} on this listener"
    elif "certificate verify failed" in low:
        reason = detail.split("certificate verify failed:", 1)[-1].split(" (_ssl")[0].strip()
        why = (
            f"TLS: the broker's certificate is not trusted ({reason}); "
            f"is it signed by the CA in {security.ca_file or 'the system trust store'} "
            "and issued for this host name?"
        )
    elif "wrong version number" in low or "record layer failure" in low or "ssl" in low:
        why = f"TLS handshake failed ({detail}); is this a TLS listener?"
    elif "connectionreset" in low and security.tls:
        why = "the broker reset the TLS connection; is this a TLS listener (SSL, SASL_SSL)?"
    elif "closed" in low and not security.tls:
        why = (
            f"the broker closed the connection ({security.protocol}); "
            "does this listener need TLS or SASL (--kafka-security-protocol)?"
        )
    elif "closed" in low and not security.sasl:
        why = "the broker closed the connection; does this listener need SASL (SASL_SSL)?"
    else:
        return RedactSecrets.scrub(f"kafka {bootstrap}: cannot connect: {detail}"), True
    return RedactSecrets.scrub(f"kafka {bootstrap}: {why}"), False
