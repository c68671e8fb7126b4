"""Fuzz POST /v1/commands on a live worker: never a 500, never a crash, and
nothing reaches Kafka for a request that was refused.

Bodies come from hypothesis: arbitrary JSON, near-valid commands with one
field replaced by an arbitrary value, and raw bytes, mostly sent as
application/json and sometimes as another content type or none. Every answer
must be 202 (published) or 400/413/415 (refused; 415 exactly when the content
type is not JSON); afterwards the commands topic holds exactly the 202s, the
dead-letter topic holds nothing, and the worker is healthy.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from confluent_kafka import Consumer
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from streams.api.requests import is_json_media_type
from streams.topics import watermarks

pytestmark = pytest.mark.kafka

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)
valid = st.sampled_from([
    {"command_id": "f-1", "type": "open_account", "account_id": "fz", "currency": "EUR"},
    {"command_id": "f-2", "type": "credit", "account_id": "fz", "amount": 5,
     "currency": "EUR"},
    {"command_id": "f-3", "type": "debit", "account_id": "fz", "amount": 5, "currency": "EUR"},
    {"command_id": "f-4", "type": "transfer", "from_account_id": "fz", "to_account_id": "fy",
     "amount": 5, "currency": "EUR", "metadata": {"k": "v"}},
    {"command_id": "f-5", "type": "close_account", "account_id": "fz"},
])
mutated = st.tuples(valid, st.sampled_from(["command_id", "type", "account_id", "amount",
                                            "currency", "metadata", "from_account_id",
                                            "overdraft_limit", "extra"]),
                    json_values).map(lambda t: {**t[0], t[1]: t[2]})
renamed = st.tuples(valid, st.integers(0, 10**6)).map(
    lambda t: {**t[0], "command_id": f"{t[0]['command_id']}-{t[1]}"})
bodies = st.one_of(json_values.map(lambda v: json.dumps(v).encode()),
                   renamed.map(lambda v: json.dumps(v).encode()),
                   mutated.map(lambda v: json.dumps(v).encode()),
                   st.binary(max_size=200))
content_types = st.one_of(
    st.just("application/json"),
    st.sampled_from(["application/json; charset=utf-8", "APPLICATION/JSON", None,
                     "text/plain", "application/x-www-form-urlencoded",
                     "multipart/form-data; boundary=x", "application/jsonl", "json", ""]))


def post(worker, raw: bytes, content_type: str | None = "application/json") -> int:
    request = urllib.request.Request(worker.url + "/v1/commands", data=raw, method="POST")
    if content_type is not None:
        request.add_header("Content-Type", content_type)
    else:
        # urllib would add application/x-www-form-urlencoded on its own.
        request.add_unredirected_header("Content-Type", "")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code


def test_fuzzed_commands_never_500_and_refusals_publish_nothing(settings, workers):
    worker = workers.start(settings)
    seen = {"accepted": 0, "statuses": set()}

    @hsettings(max_examples=400, deadline=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture,
                                      HealthCheck.too_slow])
    @given(raw=bodies, content_type=content_types)
    def fuzz(raw, content_type):
        status = post(worker, raw, content_type)
        seen["statuses"].add(status)
        if is_json_media_type(content_type):
            assert status in (202, 400, 413), (status, raw)
        else:
            assert status == 415, (status, content_type, raw)
        seen["accepted"] += status == 202

    fuzz()
    assert 200 == worker.get("/v1/health")[0] and worker.process.poll() is None
    probe = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": "fuzz"})
    try:
        published = sum(watermarks(probe, settings.commands_topic, p)[1]
                        for p in range(settings.partitions))
        parked = sum(watermarks(probe, settings.dead_letter_topic, p)[1]
                     for p in range(settings.partitions))
    finally:
        probe.close()
    print(f"statuses seen: {sorted(seen['statuses'])}; accepted {seen['accepted']}")
    assert {202, 400, 415} <= seen["statuses"]
    assert (seen["accepted"], 0) == (published, parked)
