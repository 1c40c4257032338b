"""A tiny HTTP POST with retries, shared by the Alertmanager and webhook sinks (stdlib only).

Retries connection errors, timeouts, 5xx, 408 and 429 with exponential backoff (honouring
``Retry-After`` up to ``MAX_RETRY_AFTER_S``); any other status below 200 or from 300 on
gives up at once. Redirects are never followed (the body and its signature stay with the
configured receiver). Errors name the receiver by origin only (``scheme://host:port``), as
a path or query may carry a token.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from consumers.alerts.sinks import SinkError

MAX_RETRY_AFTER_S: Final = 30.0


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    retry_after: str | None = None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # urllib then raises HTTPError with the 3xx status


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)
_PROXIED = urllib.request.build_opener(_NoRedirect)  # honours http(s)_proxy / no_proxy


def check_url(url: str, what: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what} {origin(url)!r}: expected an http:// or https:// URL")
    return url


def origin(url: str) -> str:
    """The URL without credentials, path or query: safe to log."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}"


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _post_sync(url: str, body: bytes, headers: dict[str, str], timeout: float) -> Reply:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
    opener = _DIRECT if _is_loopback(url) else _PROXIED
    try:
        with opener.open(req, timeout=timeout) as resp:
            resp.read()
            return Reply(resp.status)
    except urllib.error.HTTPError as exc:
        with exc:
            return Reply(exc.code, exc.headers.get("Retry-After"))


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta or HTTP date), capped."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return min(max(when - (time.time() if now is None else now), 0.0), MAX_RETRY_AFTER_S)


def _retryable(status: int) -> bool:
    return status >= 500 or status in (408, 429)


async def post(
    sink: str,
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    attempts: int = 3,
    backoff_s: float = 0.5,
    timeout: float = 10.0,
) -> None:
    """POST until a 2xx; raise SinkError naming sink and receiver after giving up."""
    why, wait = "no attempt", 0.0
    for attempt in range(attempts):
        await asyncio.sleep(wait)
        wait = backoff_s * 2**attempt
        try:
            reply = await asyncio.to_thread(_post_sync, url, body, headers, timeout)
        except (OSError, ValueError) as exc:  # URLError, refused, reset, timeout
            why = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
            continue
        if 200 <= reply.status < 300:
            return
        why = f"HTTP {reply.status}"
        if not _retryable(reply.status):
            raise SinkError(f"{sink}: {origin(url)} refused the alerts ({why}), not retrying")
        asked = retry_after_s(reply.retry_after)
        wait = wait if asked is None else asked
    raise SinkError(f"{sink}: {origin(url)} failed after {attempts} attempts ({why})")
