"""HTTP/1.x requests: Host header, absolute-form targets, CONNECT authorities."""

from __future__ import annotations

import re
from typing import Final

from sensor.decode import NOT_HOST, Sighting, host_name, observed_name

_REQUEST_LINE: Final = re.compile(rb"([A-Z][A-Z_-]{0,19}) (\S{1,8192}) HTTP/1\.[0-9]\r?\n")
_HOST: Final = re.compile(rb"\r?\nhost[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)
_USER_AGENT: Final = re.compile(rb"\nuser-agent[ \t]*:[ \t]*([^\r\n]{1,512})", re.IGNORECASE)
_METHOD_START: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def strip_port(authority: str) -> str:
    """``host:port`` / ``[v6]:port`` / ``host`` -> host."""
    if authority.startswith("["):
        return authority[1 : authority.find("]")] if "]" in authority else authority[1:]
    if authority.count(":") == 1:
        return authority.split(":", 1)[0]
    return authority


def _name(authority: bytes) -> tuple[str | None, bool]:
    """(name, whether it is a host name): a Host that is not one (``[fe80::1%eth0]``, a
    blank inside) is kept, normalised, as an observation (``observed_name``)."""
    try:
        text = authority.decode("ascii")
    except UnicodeDecodeError:
        return None, False
    return authority_name(text)


def authority_name(text: str) -> tuple[str | None, bool]:
    """A Host value or request-target authority (``user@host:port``) as text: (name,
    whether it is a host name), as ``_name``. The peer readers (EVE, Zeek) share it."""
    text = text.strip()
    if "@" in text:  # userinfo in an absolute URI
        text = text.rsplit("@", 1)[1]
    name = host_name(strip_port(text))
    return (name, True) if name is not None else (observed_name(text), False)


def decode_http_request(payload: bytes) -> list[Sighting]:
    """Names in the head of an HTTP/1.x request; [] if the payload is not one."""
    if not payload or payload[0] not in _METHOD_START:
        return []
    m = _REQUEST_LINE.match(payload)
    if m is None:
        return []
    method, target = m.group(1), m.group(2)
    if method == b"CONNECT":
        name, is_host = _name(target)
        return [Sighting("http_connect", name, extra=odd(is_host))] if name else []
    head_end = payload.find(b"\r\n\r\n")
    head = payload if head_end < 0 else payload[: head_end + 2]
    proxy_form = target[:7].lower() == b"http://" or target[:8].lower() == b"https://"
    authority, path = _split_target(target) if proxy_form else (b"", target)
    h = _HOST.search(head, m.end() - 2)
    name, is_host = (
        _name(h.group(1)) if h is not None else _name(authority) if proxy_form else (None, True)
    )
    extra = {**odd(is_host), "proxy_form": True} if proxy_form else odd(is_host)
    text_path = path.decode("ascii", "replace")
    ua = _USER_AGENT.search(head, m.end() - 2)
    agent = ua.group(1).decode("latin-1").strip() if ua is not None else None
    if name is None:  # HTTP/1.0 with no Host (an updater to a bare address): content only
        return [Sighting("http_request", "", path=text_path, user_agent=agent)]
    return [Sighting("http_host", name, extra=extra, path=text_path, user_agent=agent)]


def _split_target(target: bytes) -> tuple[bytes, bytes]:
    """``http://host:port/path?q`` -> (b"host:port", b"/path?q")."""
    rest = target.split(b"//", 1)[1]
    slash = rest.find(b"/")
    return (rest, b"/") if slash < 0 else (rest[:slash], rest[slash:])


def odd(is_host: bool) -> dict[str, bool]:
    """``Sighting.extra`` for a name that is (``{}``) or is not a host name."""
    return {} if is_host else {NOT_HOST: True}
