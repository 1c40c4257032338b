"""A generic webhook: ``POST {"alerts": [...]}`` signed with HMAC-SHA256.

With ``--group-wait`` (the default) each POST holds one host's alerts and says so at the top:
``host``, ``site``, ``zone``, ``owner``, ``criticality``, the highest ``severity``,
``count``, ``categories``, ``stages``, ``names``, ``indicators`` and a one-line ``summary``.

Headers: ``X-Kaspwatch-Signature: sha256=<hex HMAC of the exact body>`` (with a secret),
``X-Kaspwatch-Delivery`` and ``Idempotency-Key``: a digest of the POST's alert ids and
statuses, the same on every retry of that POST. After a crash the alerts of the batch in
flight are sent again, possibly grouped into other POSTs: receivers deduplicate on each
``alerts[].alert_id``, which a replay keeps.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

from consumers.alerts.engine import Alert
from consumers.alerts.sinks import SinkOptionError
from consumers.alerts.sinks.group import group_summary
from consumers.alerts.sinks.http import check_url, origin, post
from kaspwatch.secretfile import read_secret_file


def load_secret(path: str | Path) -> bytes:
    """The shared secret in ``path`` (trailing newline stripped); refuses a world-readable file."""
    return read_secret_file(path, "webhook secret file")


def delivery_id(alerts: list[Alert]) -> str:
    """Stable per batch content: the same alerts in the same state give the same id."""
    return _digest([a.to_dict() for a in alerts])


def _digest(docs: list[dict[str, Any]]) -> str:
    keys = sorted(f"{d['alert_id']}:{d['status']}" for d in docs)
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()


def sign(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class WebhookSink:
    name = "webhook"

    def __init__(
        self,
        url: str,
        secret: bytes | None,
        attempts: int = 5,
        backoff_s: float = 0.5,
        timeout_s: float = 10.0,
    ) -> None:
        self.url = check_url(url, "--webhook")
        self._secret = secret
        self.attempts, self.backoff_s, self.timeout_s = attempts, backoff_s, timeout_s

    def __repr__(self) -> str:  # never show the secret
        return f"WebhookSink({origin(self.url)!r}, signed={self._secret is not None})"

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def request(
        self, alerts: list[Alert], group: dict[str, Any] | None = None
    ) -> tuple[bytes, dict[str, str]]:
        docs = [a.to_dict() for a in alerts]
        return self._request(docs, group)

    def _request(
        self, docs: list[dict[str, Any]], group: dict[str, Any] | None
    ) -> tuple[bytes, dict[str, str]]:
        raw = json.dumps({**(group or {}), "alerts": docs}, separators=(",", ":")).encode()
        key = _digest(docs)
        headers = {
            "Content-Type": "application/json",
            "X-Kaspwatch-Delivery": key,
            "Idempotency-Key": key,
        }
        if self._secret is not None:
            headers["X-Kaspwatch-Signature"] = sign(self._secret, raw)
        return raw, headers

    async def send(self, alerts: list[Alert]) -> None:
        if not alerts:
            return
        await self._post(*self.request(alerts))

    async def send_group(self, docs: list[dict[str, Any]]) -> None:
        """One host's alerts in one POST, with what they add up to at the top."""
        summary = group_summary(docs)
        del summary["alert_ids"]  # each alert in ``alerts`` has its own
        await self._post(*self._request(docs, summary))

    async def _post(self, body: bytes, headers: dict[str, str]) -> None:
        await post(
            self.name,
            self.url,
            body,
            headers,
            attempts=self.attempts,
            backoff_s=self.backoff_s,
            timeout=self.timeout_s,
        )


def add_options(p: argparse._ActionsContainer) -> None:
    p.add_argument("--webhook", metavar="URL", help="POST alerts as JSON here")
    p.add_argument(
        "--webhook-secret-file", metavar="PATH", help="HMAC-SHA256 key for X-Kaspwatch-Signature"
    )


def from_options(args: argparse.Namespace) -> WebhookSink | None:
    if not args.webhook:
        if args.webhook_secret_file:
            raise SinkOptionError("--webhook-secret-file needs --webhook URL")
        return None
    try:
        secret = load_secret(args.webhook_secret_file) if args.webhook_secret_file else None
        return WebhookSink(args.webhook, secret)
    except OSError as exc:
        raise SinkOptionError(
            f"--webhook-secret-file {args.webhook_secret_file}: {exc.strerror}"
        ) from None
    except ValueError as exc:
        raise SinkOptionError(str(exc)) from None
