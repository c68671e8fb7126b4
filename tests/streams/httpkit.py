"""Shared by the HTTP tests that run two real workers: raw requests, health,
waiting for the two to split the partitions, and checking an answer against
the served OpenAPI document."""

from __future__ import annotations

import http.client
import json
import ssl
import time

from streams.api.openapi import openapi_document
from streams.partitioner import partition_for
from tests.conftest import free_port

try:
    from openapi_schema_validator import OAS30Validator
except ImportError:  # pragma: no cover - depends on the environment
    OAS30Validator = None

DOC = openapi_document()
PARTITIONS = 6


def send(worker, method: str, raw_path: str, body: bytes | None = None,
         headers: dict | None = None, context: ssl.SSLContext | None = None,
         timeout_s: float = 30):
    """(status, JSON body or text, headers) of one request, the path sent
    exactly as given; over https when ``context`` is given."""
    host, port = worker.settings.web_host, worker.settings.web_port
    host = "127.0.0.1" if host == "0.0.0.0" else host
    conn = (http.client.HTTPSConnection(host, port, timeout=timeout_s, context=context)
            if context is not None else http.client.HTTPConnection(host, port, timeout=timeout_s))
    try:
        conn.request(method, raw_path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        try:
            parsed = json.loads(data)
        except ValueError:
            parsed = data.decode(errors="replace")
        return response.status, parsed, response.headers
    finally:
        conn.close()


def health(worker, context: ssl.SSLContext | None = None) -> dict | None:
    """The worker's /v1/health body, or None while it does not answer one."""
    try:
        body = send(worker, "GET", "/v1/health", context=context, timeout_s=5)[1]
        return body if isinstance(body, dict) else None
    except (OSError, http.client.HTTPException):
        return None


def start_pair(workers, base):
    """Start w1 and w2 on ``base``'s ledger (own data dirs and ports) without
    waiting; follow with :func:`wait_split`."""
    w1 = workers.start(base.with_(worker_id="w1"), wait=False)
    w2 = workers.start(base.with_(worker_id="w2", data_dir=base.data_dir.parent / "w2",
                                  web_port=free_port()), wait=False)
    return w1, w2


def wait_split(*workers_, context: ssl.SSLContext | None = None,
               timeout_s: float = 90) -> dict:
    """Wait until the workers are all healthy and serve every partition
    exactly once, twice in a row; returns partition -> worker."""
    deadline, stable, owners = time.monotonic() + timeout_s, 0, {}
    while stable < 2:
        for w in workers_:
            assert w.process.poll() is None, w.log_tail()
        bodies = [health(w, context) for w in workers_]
        assert time.monotonic() < deadline, bodies
        owners = {}
        split = all(b and b["status"] == "ok" and b["partitions"] for b in bodies)
        if split:
            for w, b in zip(workers_, bodies):
                for p in b["partitions"]:
                    split = split and p not in owners
                    owners[p] = w
            split = split and sorted(owners) == list(range(PARTITIONS))
        stable = stable + 1 if split else 0
        time.sleep(0.3)
    return owners


def owner_of(owners: dict, account_id: str):
    return owners[partition_for(account_id.encode(), PARTITIONS)]


def validate(template: str, method: str, status: int, body, headers) -> None:
    """The answer is one the OpenAPI document lists for this operation: its
    status, its documented headers and, for JSON, its schema."""
    response = DOC["paths"][template][method]["responses"].get(str(status))
    assert response is not None, (template, method, status)
    for name in response.get("headers", {}):
        assert name in headers, (template, status, name)
    if OAS30Validator is None or "application/json" not in response.get("content", {}):
        return
    schema = response["content"]["application/json"]["schema"]
    problems = list(OAS30Validator({**schema, "components": DOC["components"]})
                    .iter_errors(body))
    assert problems == [], (template, status, [p.message for p in problems])
