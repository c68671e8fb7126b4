"""The HTTP API against a real worker: commands in, outcomes, as-of queries, errors."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request

import pytest

from confluent_kafka import Consumer

from streams.topics import watermarks

pytestmark = pytest.mark.kafka


def call(worker, method: str, path: str, body=None, raw: bytes | None = None,
         content_type: str = "application/json"):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(worker.url + path, data=data, method=method,
                                     headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        text = exc.read()
        try:
            return exc.code, json.loads(text)
        except ValueError:
            return exc.code, text.decode(errors="replace")


@pytest.fixture
def worker(settings, workers):
    return workers.start(settings)


def post(worker, body, wait=True):
    return call(worker, "POST", "/v1/commands" + ("?wait=1&timeout_ms=20000" if wait else ""),
                body)


def test_commands_over_http_with_outcomes_and_idempotency(worker):
    """Open, credit, a transfer, a retry and a reused id, all through POST /v1/commands."""
    assert (200, "applied") == pick(post(worker, {"command_id": "o-a", "type": "open_account",
                                                  "account_id": "a", "currency": "EUR"}))
    post(worker, {"command_id": "o-b", "type": "open_account", "account_id": "b",
                  "currency": "EUR", "overdraft_limit": 100})
    status, body = post(worker, {"command_id": "c-1", "type": "credit", "account_id": "a",
                                 "amount": 500, "currency": "EUR"})
    assert (200, "applied", None) == (status, body["status"], body["reason"])
    assert [("credited", 500, 500)] == [(e["type"], e["amount"], e["balance_after"])
                                        for e in body["events"]]
    # The same command again: the original outcome, applied once, marked duplicate.
    again_status, again = post(worker, {"command_id": "c-1", "type": "credit",
                                        "account_id": "a", "amount": 500, "currency": "EUR"})
    assert (False, True) == (body.pop("duplicate"), again.pop("duplicate"))
    assert (status, body) == (again_status, again)
    # Same id, other body: refused, changes nothing.
    status, reused = post(worker, {"command_id": "c-1", "type": "credit", "account_id": "a",
                                   "amount": 1, "currency": "EUR"})
    assert (200, "rejected", "command_id_reused") == (status, reused["status"], reused["reason"])
    status, body = post(worker, {"command_id": "d-1", "type": "debit", "account_id": "b",
                                 "amount": 101, "currency": "EUR"})
    assert ("rejected", "insufficient_funds") == (body["status"], body["reason"])
    status, body = post(worker, {"command_id": "t-1", "type": "transfer", "from_account_id": "a",
                                 "to_account_id": "b", "amount": 200, "currency": "EUR",
                                 "metadata": {"order": "17"}})
    assert (200, "applied") == (status, body["status"])
    for _ in range(100):
        status, transfer = call(worker, "GET", "/v1/transfers/t-1?account_id=a")
        if transfer.get("status") == "completed":
            break
        time.sleep(0.05)
    assert {"transfer_id": "t-1", "status": "completed", "reason": None, "from_account_id": "a",
            "to_account_id": "b", "amount": 200, "currency": "EUR"} == {
        k: v for k, v in transfer.items() if k != "events"}
    assert ["transfer_debited", "transfer_completed"] == [e["type"] for e in transfer["events"]]
    assert {"order": "17"} == transfer["events"][0]["metadata"]
    assert (200, 300) == pick(call(worker, "GET", "/v1/accounts/a"), "balance")
    assert (200, 200) == pick(call(worker, "GET", "/v1/accounts/b"), "balance")
    status, outcome = call(worker, "GET", "/v1/commands/c-1?account_id=a")
    assert (200, "applied", 1) == (status, outcome["status"], len(outcome["events"]))
    assert "command_hash" not in outcome  # only for other workers
    assert (404, "unknown_command") == pick(
        call(worker, "GET", "/v1/commands/never-sent?account_id=a"), "error")
    assert (404, "unknown_transfer") == pick(
        call(worker, "GET", "/v1/transfers/never-sent?account_id=a"), "error")
    # Ids are scoped per account: c-1 was sent to a, not to b; t-1 is from a, not b.
    assert (404, "unknown_command") == pick(
        call(worker, "GET", "/v1/commands/c-1?account_id=b"), "error")
    assert (404, "unknown_transfer") == pick(
        call(worker, "GET", "/v1/transfers/t-1?account_id=b"), "error")
    # d-1 was rejected: an outcome, with no events.
    status, rejected = call(worker, "GET", "/v1/commands/d-1?account_id=b")
    assert (200, "rejected", "insufficient_funds", []) == (
        status, rejected["status"], rejected["reason"], rejected["events"])
    for path in ("/v1/commands/c-1", "/v1/transfers/t-1"):
        status, answer = call(worker, "GET", path)
        assert (400, "invalid_request", "account_id", "missing") == (
            status, answer["error"], answer["field"], answer["reason"])
    # 202 without wait
    status, body = post(worker, {"command_id": "c-2", "type": "credit", "account_id": "a",
                                 "amount": 1, "currency": "EUR"}, wait=False)
    assert (202, {"command_id": "c-2", "status": "accepted"}) == (status, body)


def pick(answer, key="status"):
    status, body = answer
    return status, body[key]


@pytest.mark.parametrize("body, field, reason", [
    ({"type": "credit", "account_id": "a", "amount": 1, "currency": "EUR"},
     "command_id", "missing"),
    ({"command_id": "x", "type": "steal", "account_id": "a"}, "type", "unknown_type"),
    ({"command_id": "x", "type": "credit", "account_id": "a", "amount": 1.0,
      "currency": "EUR"}, "amount", "not_an_integer"),
    ({"command_id": "x", "type": "credit", "account_id": "a", "amount": "1",
      "currency": "EUR"}, "amount", "wrong_type"),
    ({"command_id": "x", "type": "credit", "account_id": "a", "amount": 0,
      "currency": "EUR"}, "amount", "must_be_positive"),
    ({"command_id": "x", "type": "credit", "account_id": "a", "amount": 2**63,
      "currency": "EUR"}, "amount", "too_large"),
    ({"command_id": "x", "type": "credit", "account_id": "a", "amount": 1,
      "currency": "euro"}, "currency", "malformed"),
    ({"command_id": "x" * 129, "type": "credit", "account_id": "a", "amount": 1,
      "currency": "EUR"}, "command_id", "too_long"),
    ({"command_id": "x", "type": "transfer", "from_account_id": "a", "to_account_id": "b",
      "amount": 1, "currency": "EUR", "metadata": {"k": "v" * 300}}, "metadata.k", "too_long"),
    ({"command_id": "x", "type": "open_account", "account_id": "a", "currency": "EUR",
      "amount": 5}, "amount", "not_allowed_for_type"),
    ([1, 2], "body", "wrong_type"),
])
def test_invalid_commands_are_400_and_nothing_is_published(settings, worker, body, field, reason):
    """Each bad request names its field and reason, and the commands topic stays empty."""
    status, answer = post(worker, body)
    assert (400, "invalid_request", field, reason) == (
        status, answer["error"], answer["field"], answer["reason"])
    probe = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": "probe"})
    try:
        assert [0] * settings.partitions == [
            watermarks(probe, settings.commands_topic, p)[1] for p in range(settings.partitions)]
    finally:
        probe.close()


def test_http_edge_errors(worker):
    """Broken JSON, oversize bodies, bad query parameters, unknown accounts."""
    status, answer = call(worker, "POST", "/v1/commands", raw=b"{not json")
    assert (400, "body") == (status, answer["field"])
    assert 413 == call(worker, "POST", "/v1/commands", raw=b" " * (70 * 1024))[0]
    assert (400, "wait") == pick(call(worker, "POST", "/v1/commands?wait=yes", {}), "field")
    assert (404, "unknown_account") == pick(call(worker, "GET", "/v1/accounts/nobody"), "error")
    assert (400, "as_of") == pick(call(worker, "GET", "/v1/accounts/a?as_of=yesterday"), "field")
    assert (400, "version") == pick(call(worker, "GET", "/v1/accounts/a?version=0"), "field")
    assert (400, "limit") == pick(call(worker, "GET", "/v1/accounts/a/events?limit=5000"),
                                  "field")
    assert (400, "cursor") == pick(call(worker, "GET", "/v1/accounts/a/events?cursor=%%%"),
                                   "field")
    status, answer = call(worker, "GET", "/v1/accounts/a?as_of=-62135596800001")
    assert (400, "as_of", "out_of_range") == (status, answer["field"], answer["reason"])
    status, answer = call(worker, "GET", "/v1/accounts/a%2Fb")
    assert (400, "account_id", "malformed") == (status, answer["field"], answer["reason"])
    # Not JSON: 415 before the body is read.
    status, answer = call(worker, "POST", "/v1/commands", raw=b"{}", content_type="text/plain")
    assert (415, "unsupported_media_type") == (status, answer["error"])
    status, health = call(worker, "GET", "/v1/health")
    assert (200, "ok", "consuming", True) == (
        status, health["status"], health["reason"], health["caught_up"])
    assert list(range(6)) == health["partitions"]
    status, doc = call(worker, "GET", "/v1/openapi.json")
    assert (200, "3.0.3") == (status, doc["openapi"])


def test_as_of_queries_and_event_pages(worker):
    """State as of a time or version, and events paged by cursor, after each of 150 credits."""
    post(worker, {"command_id": "open", "type": "open_account", "account_id": "h",
                  "currency": "EUR"})
    times = []
    for i in range(1, 151):
        status, body = post(worker, {"command_id": f"c{i}", "type": "credit",
                                     "account_id": "h", "amount": i, "currency": "EUR"})
        times.append(body["events"][0]["recorded_at"])
    status, first = call(worker, "GET", "/v1/accounts/h?version=1")
    assert (200, 0, 1) == (status, first["balance"], first["version"])
    assert (404, "unknown_version") == pick(call(worker, "GET", "/v1/accounts/h?version=152"),
                                            "error")
    for i in (1, 2, 63, 64, 65, 128, 150):
        status, state = call(worker, "GET", f"/v1/accounts/h?version={i + 1}")
        assert (200, i * (i + 1) // 2) == (status, state["balance"])
        status, by_time = call(worker, "GET", f"/v1/accounts/h?as_of={times[i - 1]}")
        # Several credits can share a millisecond: as of that instant, all are in.
        last = max(j for j in range(1, 151) if times[j - 1] <= times[i - 1])
        assert (200, last + 1, last * (last + 1) // 2) == (
            status, by_time["version"], by_time["balance"])
    assert (404, "unknown_account") == pick(
        call(worker, "GET", "/v1/accounts/h?as_of=2000-01-01T00:00:00Z"), "error")
    pages, cursor = [], None
    while True:
        status, page = call(worker, "GET", "/v1/accounts/h/events?limit=40"
                            + (f"&cursor={cursor}" if cursor else ""))
        pages.append(page["events"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [40, 40, 40, 31] == [len(p) for p in pages]
    assert list(range(1, 152)) == [e["sequence"] for p in pages for e in p]
    # Bounds: the largest version is a 404, a cursor's end is clamped to the last event.
    assert (404, "unknown_version") == pick(
        call(worker, "GET", f"/v1/accounts/h?version={2**63 - 1}"), "error")
    forged = base64.urlsafe_b64encode(f"150:{2**63 - 1}".encode()).decode()
    status, page = call(worker, "GET", f"/v1/accounts/h/events?cursor={forged}")
    assert (200, [150, 151], None) == (
        status, [e["sequence"] for e in page["events"]], page["next_cursor"])
    # A time-bounded page is answered once final: `to` is an instant already recorded.
    status, page = call(worker, "GET", f"/v1/accounts/h/events?from=0&to={times[-1]}&limit=5")
    assert (200, [1, 2, 3, 4, 5]) == (status, [e["sequence"] for e in page["events"]])
