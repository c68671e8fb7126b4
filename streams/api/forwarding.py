"""Worker-to-worker forwarding of lookups.

A lookup is answered by the worker that owns the partition of its account.
Any other worker forwards it there, once:

* The target URL is rebuilt from parts the asking worker has already
  validated (:class:`Target`): path segments percent-encoded one by one
  (``/``, ``%`` and ``.`` included, so no segment can climb out of its route
  or be resolved away) and a query made of the route's whitelisted
  parameters in canonical form. ``request.path`` and the client's query
  string are never passed on.
* A forwarded request carries :data:`FORWARDED_HEADER`. Its receiver never
  forwards it again: it answers from its own store or with 503.
  :func:`forwarded_headers` and :func:`is_forwarded` are the only two places
  that know how the mark looks (issue 9 signs it with a worker secret).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

import aiohttp
from yarl import URL

FORWARDED_HEADER = "X-Ledger-Forwarded"
FORWARD_TIMEOUT_S = 5.0
# host:port of a worker: a name, IPv4 or [IPv6] literal, and a port.
_ADDRESS_RE = re.compile(r"(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]):[0-9]{1,5}")


def forwarded_headers() -> dict[str, str]:
    """The headers that mark a request as sent by another worker."""
    return {FORWARDED_HEADER: "1"}


def is_forwarded(request) -> bool:
    """Whether ``request`` was sent by another worker (see forwarded_headers)."""
    return request.headers.get(FORWARDED_HEADER) == "1"


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

    def url(self, address: str) -> URL:
        """The URL on the worker at ``address`` ("host:port", as the consumer
        group tells it; ValueError if it is not one)."""
        if _ADDRESS_RE.fullmatch(address) is None:
            raise ValueError(f"not a worker address: {address!r}")
        return URL.build(scheme="http", authority=address, path=self.raw_path,
                         query_string=urlencode(sorted(self.query.items())), encoded=True)


@dataclass(frozen=True)
class Answer:
    """What the owner said."""

    status: int
    body: dict


async def forward(session: aiohttp.ClientSession, address: str, target: Target,
                  timeout_s: float = FORWARD_TIMEOUT_S) -> Answer | None:
    """GET ``target`` on the worker at ``address``, marked as forwarded.

    None if it cannot be reached, does not answer in time, or answers with
    something that is not a JSON object."""
    try:
        url = target.url(address)
        async with session.get(url, headers=forwarded_headers(), allow_redirects=False,
                               timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            body = await response.json(content_type=None)
            if not isinstance(body, dict):
                return None
            return Answer(response.status, body)
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
        return None
