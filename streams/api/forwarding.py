"""Worker-to-worker forwarding of lookups.

A lookup is answered by the worker that owns the partition of its account.
Any other worker forwards it there, once:

* The target URL is rebuilt from parts the asking worker has already
  validated (:class:`Target`): path segments percent-encoded one by one
  (``/``, ``%`` and ``.`` included, so no segment can climb out of its route
  or be resolved away) and a query made of the route's whitelisted
  parameters in canonical form. ``request.path`` and the client's query
  string are never passed on.
* A forwarded request carries :data:`FORWARDED_HEADER`, signed with the
  workers' forward secret (:func:`streams.api.auth.forward_secrets`):
  ``v1 <unix seconds> <hex HMAC-SHA256>`` over the method, the request
  target exactly as sent (path and canonical query) and the time. The
  receiver checks it (:func:`verify_mark`: any of its secrets, compared in
  constant time, at most :data:`FORWARD_MAX_AGE_S` old or early) and, if it
  holds, answers as to a worker: without a client token, with internal
  fields (``command_hash``), and never forwards it again (its own store or
  503). A mark that does not hold (missing, forged, stale, for another path)
  makes it a client request like any other: client auth, no internal fields.
  The secret itself never crosses the wire, so plain http between workers
  does not give it away, and a captured mark is good for one URL for a minute.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

import aiohttp
from yarl import URL

FORWARDED_HEADER = "X-Ledger-Forwarded"
FORWARD_TIMEOUT_S = 5.0
FORWARD_MAX_AGE_S = 60
MARK_VERSION = "v1"
# Where the endpoint records, per request, that the mark was verified.
FORWARDED_KEY = "ledger.forwarded"
# host:port of a worker: a name, IPv4 or [IPv6] literal, and a port.
_ADDRESS_RE = re.compile(r"(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]):[0-9]{1,5}")


def _mac(secret: bytes, method: str, target: str, timestamp: int) -> bytes:
    message = b"\n".join((b"ledger-forward-" + MARK_VERSION.encode(), method.upper().encode(),
                          target.encode("utf-8", "surrogateescape"), str(timestamp).encode()))
    return hmac.new(secret, message, hashlib.sha256).hexdigest().encode()


def forwarded_headers(secret: bytes, method: str, target: str,
                      now: float | None = None) -> dict[str, str]:
    """The header that marks a request to ``target`` (path and query exactly
    as sent) as sent by a worker holding ``secret``."""
    timestamp = int(time.time() if now is None else now)
    mac = _mac(secret, method, target, timestamp).decode()
    return {FORWARDED_HEADER: f"{MARK_VERSION} {timestamp} {mac}"}


def verify_mark(secrets: list[bytes], method: str, target: str, mark: str | None,
                now: float | None = None) -> bool:
    """Whether ``mark`` (the header's value) was made with one of ``secrets``
    for this method and target, within FORWARD_MAX_AGE_S of ``now``."""
    if not mark or len(mark) > 200:
        return False
    parts = mark.split(" ")
    if len(parts) != 3 or parts[0] != MARK_VERSION or not parts[1].isascii() \
            or not parts[1].isdigit() or len(parts[1]) > 12:
        return False
    timestamp = int(parts[1])
    if abs((time.time() if now is None else now) - timestamp) > FORWARD_MAX_AGE_S:
        return False
    presented = parts[2].encode("utf-8", "surrogateescape")
    valid = False
    for secret in secrets:  # every one, no early exit
        valid = hmac.compare_digest(_mac(secret, method, target, timestamp), presented) or valid
    return valid


def is_forwarded(request) -> bool:
    """Whether ``request`` came from another worker: its mark was verified by
    :func:`streams.api.base.endpoint` (False for any request it did not see)."""
    return request.get(FORWARDED_KEY) is True


def quote_segment(segment: str) -> str:
    """One path segment, every byte but A-Z a-z 0-9 _ - ~ percent-encoded.

    ``.`` is encoded too: ``..`` or ``.`` as a segment would otherwise be
    resolved away by URL normalisation on the way."""
    return quote(segment, safe="").replace(".", "%2E")


@dataclass(frozen=True)
class Target:
    """Where a lookup goes on the owner: path segments and whitelisted query.

    ``allowed`` is the route's whitelist; building a Target with any other
    query parameter is a programming error."""

    segments: tuple[str, ...]
    query: Mapping[str, str] = field(default_factory=dict)
    allowed: frozenset[str] = frozenset()

    def __post_init__(self):
        unexpected = set(self.query) - self.allowed
        if unexpected:
            raise ValueError(f"query parameters not whitelisted: {sorted(unexpected)}")

    @property
    def raw_path(self) -> str:
        return "/" + "/".join(quote_segment(s) for s in self.segments)

    def url(self, address: str, scheme: str = "http") -> URL:
        """The URL on the worker at ``address`` ("host:port", as the consumer
        group tells it; ValueError if it is not one)."""
        if _ADDRESS_RE.fullmatch(address) is None:
            raise ValueError(f"not a worker address: {address!r}")
        return URL.build(scheme=scheme, authority=address, path=self.raw_path,
                         query_string=urlencode(sorted(self.query.items())), encoded=True)


@dataclass(frozen=True)
class Answer:
    """What the owner said."""

    status: int
    body: dict


async def forward(session: aiohttp.ClientSession, address: str, target: Target,
                  timeout_s: float = FORWARD_TIMEOUT_S, *, secret: bytes,
                  scheme: str = "http") -> Answer | None:
    """GET ``target`` on the worker at ``address``, marked as forwarded with
    ``secret``; over https when ``scheme`` says so (the session's connector
    holds what it trusts).

    None if it cannot be reached, does not answer in time, or answers with
    something that is not a JSON object."""
    try:
        url = target.url(address, scheme)
        headers = forwarded_headers(secret, "GET", url.raw_path_qs)
        async with session.get(url, headers=headers, allow_redirects=False,
                               timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            body = await response.json(content_type=None)
            if not isinstance(body, dict):
                return None
            return Answer(response.status, body)
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
        return None
