"""Two workers give the same answer to the same request, whichever one is asked.

Each worker owns half of the partitions. A table of requests (most of them bad:
traversal attempts, ids with '/', instants before year 1 or after 9999,
forged cursors, non-JSON bodies, lookups without their account) is sent,
byte for byte, to both workers: one of them owns the account's partition and
answers from its store, the other validates the same way and forwards or
refuses the same way. Both answers must be equal, be the expected status,
error, field and reason, and match the OpenAPI document. Then a hypothesis
fuzz over path ids and query strings of every GET route: never a 500. Last,
with one worker just killed, a lookup on its partitions is a 503
partition_unavailable with Retry-After, never a 404.
"""

from __future__ import annotations

import base64
import json
from urllib.parse import quote, urlencode

import pytest
from confluent_kafka import Consumer
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from streams import legauth
from streams.api import auth, forwarding
from streams.partitioner import partition_for
from streams.topics import watermarks
from tests.streams.httpkit import owner_of, send, start_pair, validate, wait_split

pytestmark = pytest.mark.kafka

ACCOUNTS = [f"acct-{i}" for i in range(8)]


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


def post_json(worker, body: dict, query: str = "?wait=1&timeout_ms=20000"):
    return send(worker, "POST", "/v1/commands" + query, json.dumps(body).encode(),
                {"Content-Type": "application/json"})


@pytest.fixture
def pair(settings, workers):
    """Two workers, each serving half of the partitions, and some data."""
    w1, w2 = start_pair(workers, settings)
    owners = wait_split(w1, w2)
    for i, account in enumerate(ACCOUNTS):
        status, body, _ = post_json(w1 if i % 2 else w2, {
            "command_id": f"open-{account}", "type": "open_account", "account_id": account,
            "currency": "EUR"})
        assert (200, "applied") == (status, body["status"]), body
    status, body, _ = post_json(w1, {"command_id": "fund", "type": "credit",
                                     "account_id": ACCOUNTS[0], "amount": 500,
                                     "currency": "EUR"})
    assert (200, "applied") == (status, body["status"]), body
    status, body, _ = post_json(w2, {"command_id": "t-1", "type": "transfer",
                                     "from_account_id": ACCOUNTS[0],
                                     "to_account_id": ACCOUNTS[1], "amount": 200,
                                     "currency": "EUR"})
    assert (200, "applied") == (status, body["status"]), body
    return w1, w2, owners


def published(settings) -> int:
    probe = Consumer(settings.kafka(**{"group.id": "probe"}))
    try:
        return sum(watermarks(probe, settings.commands_topic, p)[1] for p in range(6))
    finally:
        probe.close()


A = ACCOUNTS[0]
LEG = ACCOUNTS[1]
ERR = "invalid_request"

# (method, raw path, body, content type, route template, status, error, field, reason)
# A field or reason of None is not checked (the answer is not a 400).
GET_TABLE = [
    # Path ids: decoded by the server, then validated; never routed anywhere.
    ("/v1/accounts/..%2F..%2Fv1%2Fhealth", "acc", 400, ERR, "account_id", "malformed"),
    ("/v1/accounts/..%2F..%2Fv1%2Fhealth/events", "ev", 400, ERR, "account_id", "malformed"),
    ("/v1/accounts/a%2Fb", "acc", 400, ERR, "account_id", "malformed"),
    ("/v1/accounts/a%2Fb/events", "ev", 400, ERR, "account_id", "malformed"),
    ("/v1/accounts/..", "acc", 400, ERR, "account_id", "malformed"),
    ("/v1/accounts/%2E%2E", "acc", 400, ERR, "account_id", "malformed"),
    ("/v1/accounts/.", "acc", 400, ERR, "account_id", "malformed"),
    ("/v1/accounts/../events", "ev", 400, ERR, "account_id", "malformed"),
    ("/v1/accounts/a%20b", "acc", 400, ERR, "account_id", "malformed"),
    ("/v1/accounts/a%00", "acc", 400, ERR, "account_id", "malformed"),
    ("/v1/accounts/%ff", "acc", 400, ERR, "account_id", "malformed"),
    ("/v1/accounts/%C3%A5", "acc", 400, ERR, "account_id", "malformed"),
    ("/v1/accounts/" + "x" * 65, "acc", 400, ERR, "account_id", "too_long"),
    ("/v1/accounts/a%3Fas_of%3D1", "acc", 400, ERR, "account_id", "malformed"),
    # Instants: years 1970..9999 only.
    (f"/v1/accounts/{A}?as_of=-62135596800001", "acc", 400, ERR, "as_of", "out_of_range"),
    (f"/v1/accounts/{A}?as_of=-1", "acc", 400, ERR, "as_of", "out_of_range"),
    (f"/v1/accounts/{A}?as_of=253402300800000", "acc", 400, ERR, "as_of", "out_of_range"),
    (f"/v1/accounts/{A}?as_of=9999999999999999", "acc", 400, ERR, "as_of", "out_of_range"),
    (f"/v1/accounts/{A}?as_of=99999999999999999999", "acc", 400, ERR, "as_of", "malformed"),
    (f"/v1/accounts/{A}?as_of=0001-01-01T00:00:00Z", "acc", 400, ERR, "as_of",
     "out_of_range"),
    (f"/v1/accounts/{A}?as_of=9999-12-31T23:59:59-01:00", "acc", 400, ERR, "as_of",
     "out_of_range"),
    (f"/v1/accounts/{A}?as_of=1&version=1", "acc", 400, ERR, "as_of", "not_allowed_for_type"),
    (f"/v1/accounts/{A}?version=0", "acc", 400, ERR, "version", "must_be_positive"),
    (f"/v1/accounts/{A}?version=9223372036854775808", "acc", 400, ERR, "version",
     "too_large"),
    (f"/v1/accounts/{A}?version=-1", "acc", 400, ERR, "version", "not_an_integer"),
    # Cursors and pages.
    (f"/v1/accounts/{A}/events?cursor={b64('-1:3')}", "ev", 400, ERR, "cursor", "malformed"),
    (f"/v1/accounts/{A}/events?cursor={b64('1:99999999999999999999999')}", "ev", 400, ERR,
     "cursor", "malformed"),
    (f"/v1/accounts/{A}/events?cursor={b64('0:1')}", "ev", 400, ERR, "cursor", "malformed"),
    (f"/v1/accounts/{A}/events?cursor={b64('5:3')}", "ev", 400, ERR, "cursor", "malformed"),
    (f"/v1/accounts/{A}/events?cursor=%%%", "ev", 400, ERR, "cursor", "malformed"),
    (f"/v1/accounts/{A}/events?from=-1", "ev", 400, ERR, "from", "out_of_range"),
    (f"/v1/accounts/{A}/events?to=253402300800000", "ev", 400, ERR, "to", "out_of_range"),
    (f"/v1/accounts/{A}/events?limit=0", "ev", 400, ERR, "limit", "must_be_positive"),
    (f"/v1/accounts/{A}/events?limit=1001", "ev", 400, ERR, "limit", "too_large"),
    # Lookups by id name their account.
    ("/v1/commands/fund", "cmd", 400, ERR, "account_id", "missing"),
    ("/v1/transfers/t-1", "tr", 400, ERR, "account_id", "missing"),
    ("/v1/commands/fund?account_id=", "cmd", 400, ERR, "account_id", "empty"),
    ("/v1/commands/fund?account_id=a%2Fb", "cmd", 400, ERR, "account_id", "malformed"),
    ("/v1/commands/fund?account_id=..", "cmd", 400, ERR, "account_id", "malformed"),
    ("/v1/transfers/t-1?account_id=..%2Fx", "tr", 400, ERR, "account_id", "malformed"),
    (f"/v1/commands/a%2Fb?account_id={A}", "cmd", 400, ERR, "command_id", "malformed"),
    (f"/v1/commands/t%231?account_id={A}", "cmd", 400, ERR, "command_id", "malformed"),
    (f"/v1/transfers/..%2F..%2Fv1%2Fhealth?account_id={A}", "tr", 400, ERR, "transfer_id",
     "malformed"),
    (f"/v1/commands/{'c' * 129}?account_id={A}", "cmd", 400, ERR, "command_id", "too_long"),
    # Answered by the owner (relayed by the other): 404 and 200.
    ("/v1/accounts/nobody", "acc", 404, "unknown_account", None, None),
    ("/v1/accounts/nobody/events", "ev", 404, "unknown_account", None, None),
    (f"/v1/accounts/{A}?version=99", "acc", 404, "unknown_version", None, None),
    (f"/v1/accounts/{A}?as_of=2000-01-01T00:00:00Z", "acc", 404, "unknown_account", None,
     None),
    (f"/v1/commands/fund?account_id={LEG}", "cmd", 404, "unknown_command", None, None),
    (f"/v1/commands/never?account_id={A}", "cmd", 404, "unknown_command", None, None),
    (f"/v1/transfers/t-1?account_id={LEG}", "tr", 404, "unknown_transfer", None, None),
    (f"/v1/commands/%2E%2E?account_id={A}", "cmd", 404, "unknown_command", None, None),
    (f"/v1/accounts/{A}", "acc", 200, None, None, None),
    (f"/v1/accounts/{A}?version=1&ignored=x", "acc", 200, None, None, None),
    # An instant not final yet (issue 15): never a state that may change.
    (f"/v1/accounts/{A}?as_of=253402300799999", "acc", 503, "as_of_not_final", None, None),
    (f"/v1/accounts/{A}/events?limit=1", "ev", 200, None, None, None),
    (f"/v1/accounts/{A}/events?cursor={b64('2:3')}", "ev", 200, None, None, None),
    (f"/v1/accounts/{A}/events?from=0&to=253402300799999", "ev", 503, "as_of_not_final",
     None, None),
    (f"/v1/commands/fund?account_id={A}", "cmd", 200, None, None, None),
    (f"/v1/commands/t-1?account_id={A}", "cmd", 200, None, None, None),
    (f"/v1/transfers/t-1?account_id={A}", "tr", 200, None, None, None),
]
TEMPLATES = {"acc": "/v1/accounts/{account_id}", "ev": "/v1/accounts/{account_id}/events",
             "cmd": "/v1/commands/{command_id}", "tr": "/v1/transfers/{transfer_id}"}

MULTIPART = (b"--XyZ\r\nContent-Disposition: form-data; name=\"command\"\r\n\r\n"
             b"{}\r\n--XyZ--\r\n")
VALID = json.dumps({"command_id": "never-published", "type": "credit", "account_id": A,
                    "amount": 1, "currency": "EUR"}).encode()
# (content type or None, body, status, error, field, reason): nothing is published.
POST_TABLE = [
    ("text/plain", VALID, 415, "unsupported_media_type", None, None),
    ("application/x-www-form-urlencoded", VALID, 415, "unsupported_media_type", None, None),
    ("application/x-www-form-urlencoded", b"command_id=x&type=credit", 415,
     "unsupported_media_type", None, None),
    ("multipart/form-data; boundary=XyZ", MULTIPART, 415, "unsupported_media_type", None,
     None),
    (None, VALID, 415, "unsupported_media_type", None, None),
    ("application/jsonp", VALID, 415, "unsupported_media_type", None, None),
    ("text/plain", b" " * (70 * 1024), 415, "unsupported_media_type", None, None),
    ("application/json", b" " * (70 * 1024), 413, "body_too_large", None, None),
    ("application/json; charset=utf-8", b"{not json", 400, ERR, "body", "malformed"),
    ("application/json", VALID[:-1] + b', "x": 1}', 400, ERR, "x", "unexpected_field"),
    ("application/json", json.dumps({"command_id": "x", "type": "open_account",
                                     "account_id": "..", "currency": "EUR"}).encode(),
     400, ERR, "account_id", "malformed"),
]


def check(expected, answer, label):
    status, error, field, reason = expected
    got_status, body, _ = answer
    assert got_status == status, (label, answer[:2])
    if error is not None:
        assert body["error"] == error, (label, body)
    if field is not None:
        assert (body["field"], body["reason"]) == (field, reason), (label, body)
        assert body["message"], label


def same(answer):
    """What two workers' answers must share: all of it, but of a 503
    as_of_not_final only the status and error (its complete_up_to is the
    owner's watermark at that moment)."""
    status, body = answer[:2]
    if isinstance(body, dict) and body.get("error") == "as_of_not_final":
        return status, body["error"]
    return status, body


def test_bad_requests_get_the_same_answer_from_owner_and_non_owner(settings, workers, pair):
    w1, w2, owners = pair
    assert {"w1", "w2"} == {w.settings.worker_id for w in owners.values()}
    # Each row goes to both workers: the owner of its account's partition and
    # the other one.
    for raw_path, template, *expected in GET_TABLE:
        answers = [send(w, "GET", raw_path) for w in (w1, w2)]
        assert same(answers[0]) == same(answers[1]), (raw_path, answers[0][:2], answers[1][:2])
        check(expected, answers[0], raw_path)
        for answer in answers:
            validate(TEMPLATES[template], "get", answer[0], answer[1], answer[2])
            if isinstance(answer[1], dict):
                assert "command_hash" not in answer[1], raw_path  # workers only

    before = published(settings)
    for content_type, body, *expected in POST_TABLE:
        headers = {"Content-Type": content_type} if content_type else {}
        answers = [send(w, "POST", "/v1/commands?wait=1", body, headers) for w in (w1, w2)]
        label = (content_type, body[:40])
        assert answers[0][:2] == answers[1][:2], (label, answers[0][:2], answers[1][:2])
        check(expected, answers[0], label)
        for answer in answers:
            validate("/v1/commands", "post", answer[0], answer[1], answer[2])
    assert before == published(settings)  # nothing refused reached Kafka

    # A JSON content type with parameters is JSON.
    status, body, _ = post_json(w2, {"command_id": "c-utf8", "type": "credit",
                                     "account_id": A, "amount": 1, "currency": "EUR"},
                                query="")
    assert (202, "accepted") == (status, body["status"])
    status, body, _ = send(w1, "POST", "/v1/commands?wait=1&timeout_ms=20000", VALID.replace(
        b"never-published", b"c-charset"), {"Content-Type": "application/json; charset=UTF-8"})
    assert (200, "applied") == (status, body["status"]), body
    validate("/v1/commands", "post", status, body, {})

    # Forwarded requests (signed with the workers' forward secret, by default
    # derived from the leg key) are answered locally or refused, never
    # forwarded again; only they see the command hash. A client's own mark
    # makes no difference (tests/streams/test_http_auth.py has the rest).
    owner = owner_of(owners, A)
    other = w2 if owner is w1 else w1
    path = f"/v1/commands/fund?account_id={A}"
    secret = auth.derive_forward_secret(legauth.load_keys(settings.leg_key_file)[0])
    marked = forwarding.forwarded_headers(secret, "GET", path)
    status, body, _ = send(owner, "GET", path, headers=marked)
    assert (200, True) == (status, "command_hash" in body)
    status, body, _ = send(owner, "GET", path, headers={"X-Ledger-Forwarded": "1"})
    assert (200, False) == (status, "command_hash" in body)
    status, body, headers = send(other, "GET", path, headers=marked)
    assert (503, "partition_unavailable", "1") == (status, body["error"],
                                                   headers["Retry-After"])
    assert partition_for(A.encode(), 6) == body["partition"]
    validate("/v1/commands/{command_id}", "get", status, body, headers)

    # ?wait=1 on the non-owner polls the owner (with the hash): a retry gets the
    # original outcome, the same id with another body command_id_reused.
    fund = {"command_id": "fund", "type": "credit", "account_id": A, "amount": 500,
            "currency": "EUR"}
    status, original, _ = post_json(owner, fund)
    status, again, _ = post_json(other, fund)
    assert (200, original) == (status, again)
    assert "command_hash" not in again
    status, reused, _ = post_json(other, {**fund, "amount": 501})
    assert (200, "rejected", "command_id_reused") == (status, reused["status"],
                                                      reused["reason"])
    # The same id on another account is another command.
    status, body, _ = post_json(other, {**fund, "account_id": LEG})
    assert (200, "applied") == (status, body["status"])

    # Health: the documented shape.
    for worker in (w1, w2):
        status, body, headers = send(worker, "GET", "/v1/health")
        assert (200, "ok", "consuming") == (status, body["status"], body["reason"])
        validate("/v1/health", "get", status, body, headers)

    # One worker dies: until its partitions move (the session timeout, 6 s in
    # tests), a lookup there is a 503 partition_unavailable, never a 404.
    lost = next(a for a in ACCOUNTS if owner_of(owners, a) is other)
    workers.kill(other)
    for raw_path, template in ((f"/v1/accounts/{lost}", "acc"),
                               (f"/v1/accounts/{lost}/events", "ev"),
                               (f"/v1/commands/open-{lost}?account_id={lost}", "cmd"),
                               (f"/v1/transfers/t-1?account_id={lost}", "tr")):
        status, body, headers = send(owner, "GET", raw_path)
        assert (503, "partition_unavailable", "1") == (
            status, body["error"], headers["Retry-After"]), (raw_path, body)
        validate(TEMPLATES[template], "get", status, body, headers)
    # Validation still comes first.
    status, body, _ = send(owner, "GET", f"/v1/accounts/{lost}?as_of=-1")
    assert (400, "as_of") == (status, body["field"])


# --------------------------------------------------------------------------
# Fuzz: path ids and query strings of every GET route, never a 500
# --------------------------------------------------------------------------

TRICKY = ["..", ".", "...", "%2E%2E", "a/b", "a%2Fb", "../../v1/health", "", " ", "%", "%ff",
          "%00", "a?b", "a#b", "\\", "\u00e5", "x" * 65, "x" * 129, "-1", "0", A, LEG]
ids = st.one_of(st.sampled_from(TRICKY),
                st.text(st.characters(blacklist_categories=("Cs",)), max_size=70))
# How a client might write an id into a path: encoded, or with some bytes raw.
SAFE_SETS = ["", "/", "/%", ".%", "%:@"]
PARAMS = ["as_of", "version", "from", "to", "limit", "cursor", "account_id", "wait", "x"]
values = st.one_of(
    st.sampled_from(["-1", "0", "1", "-62135596800001", "253402300800000",
                     "99999999999999999999", str(2**63), str(2**64), b64("-1:3"),
                     b64("1:99999999999999999999999"), b64("1:1"), "0001-01-01T00:00:00Z",
                     "9999-12-31T23:59:59Z", "2026-11-26T10:00:00+14:00", "%", "", A, ".."]),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=40))
queries = st.one_of(
    st.lists(st.tuples(st.sampled_from(PARAMS), values), max_size=4).map(urlencode),
    st.sampled_from(["%%%", "as_of=%ff", "as_of", "=1", "&&", "cursor=%", "as_of=1&as_of=x",
                     "account_id=%2E%2E", "account_id=a%2Fb"]))
routes = st.sampled_from(["/v1/accounts/{}", "/v1/accounts/{}/events", "/v1/commands/{}",
                          "/v1/transfers/{}"])


def test_fuzzed_get_routes_never_500(pair):
    w1, w2, _owners = pair
    seen, sent = set(), []

    @hsettings(max_examples=150, deadline=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture,
                                      HealthCheck.too_slow])
    @given(route=routes, path_id=ids, safe=st.sampled_from(SAFE_SETS), query=queries,
           to_w1=st.booleans())
    def fuzz(route, path_id, safe, query, to_w1):
        raw_path = route.format(quote(path_id, safe=safe)) + (f"?{query}" if query else "")
        status, body, _ = send(w1 if to_w1 else w2, "GET", raw_path)
        seen.add(status)
        sent.append(raw_path)
        assert status < 500 or (status == 503 and body["error"] == "partition_unavailable"), \
            (raw_path, status, body)
        if status == 400:
            assert body["error"] == "invalid_request" and body["field"], (raw_path, body)

    fuzz()
    print(f"{len(sent)} requests; statuses seen: {sorted(seen)}")
    assert {400, 404} <= seen
    for worker in (w1, w2):
        assert worker.process.poll() is None
        assert 200 == send(worker, "GET", "/v1/health")[0]


def test_forwarded_urls_are_rebuilt_from_validated_parts():
    """No segment can climb out of its route, and only whitelisted parameters pass."""
    from streams.api.forwarding import Target

    target = Target(("v1", "commands", ".."), {"account_id": "a"}, frozenset({"account_id"}))
    url = target.url("127.0.0.1:6066")
    assert ("/v1/commands/%2E%2E", "account_id=a") == (url.raw_path, url.raw_query_string)
    assert "/v1/accounts/a%2Fb%3F%23%25/events" == Target(
        ("v1", "accounts", "a/b?#%", "events")).raw_path
    with pytest.raises(ValueError):
        Target(("v1", "accounts", "a"), {"forwarded": "1"}, frozenset({"as_of"}))
    for address in ("h:1/x", "h:1?x=", "h", "user@h:1"):
        with pytest.raises(ValueError):
            target.url(address)
