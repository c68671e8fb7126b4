"""kill -9 the broker under load, twice: the workers come back by themselves.

Issue 8: after a broker restart every worker was fenced as a static member,
stalled in ``send_offsets_to_transaction`` until a person restarted it, and
answered /v1/health 200 the whole time. Here two workers run on a private
broker (this test kills it) under a paced load of transfers and debits; the
broker is SIGKILLed mid-load and restarted on the same data dir, twice. The
test asserts that commands are applied again within 30 s of the broker being
back, that health said 503 during each outage, that every command has
exactly one outcome equal to an independent model's, that balances and
sequences match, that ``ledger verify`` exits 0, and that SIGTERM stops a
worker within 10 s even while the broker is down.

Payers only send (debits and transfers) and payees only receive, so every
verdict depends on a payer's own ordered commands: the model knows them all.
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import time
import pytest

from streams import localkafka
from streams.processor import LOOP_STALL_S
from streams.topics import ensure_topics
from tests.conftest import ledger_settings, start_workers
from tests.streams.faultload import (HealthWatch, Sender, apply_all, check_against_model,
                                     first_new_event_after, kill9, make_load, model,
                                     wait_for_all_outcomes)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

RATE_PER_S = 250
LOAD_S = 300  # the most the load may last; it stops after the last outage
RECOVERY_LIMIT_S = 30
STOP_LIMIT_S = 10


@pytest.fixture
def broker(tmp_path):
    """A broker of this test's own: it gets killed."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        pytest.skip("kills the broker: needs the local one, not KAFKA_BOOTSTRAP_SERVERS")
    b = localkafka.start_broker(tmp_path / "kafka")
    try:
        yield b
    finally:
        localkafka.stop_broker(b)


def test_broker_killed_twice_under_load(broker, tmp_path, leg_key_file, workers, ledger_cli):
    seed = int(os.environ.get("LEDGER_CRASH_SEED", random.randrange(2**32)))
    print(f"broker restart test seed: {seed} (LEDGER_CRASH_SEED={seed} to replay)")
    rng = random.Random(seed)
    base = ledger_settings(broker.bootstrap, tmp_path, leg_key_file)
    ensure_topics(base)
    w = start_workers(workers, base, tmp_path, 2)
    # More load than the test needs: it is stopped once the last outage is
    # over, so it flows through both however long a broker takes to restart.
    setup, load = make_load(rng, RATE_PER_S * LOAD_S)
    apply_all(base, setup)

    health = HealthWatch([worker.url for worker in w])
    health.start()
    sender = Sender(base, load, RATE_PER_S)
    sender.start()
    outages, recoveries = [], []
    port = int(broker.bootstrap.rsplit(":", 1)[1])
    controller_port = int(
        (broker.run_dir / "server.properties").read_text()
        .split("controller.quorum.bootstrap.servers=")[1].split("\n")[0].rsplit(":", 1)[1])
    for kill_at in (8, 12):
        time.sleep(kill_at)  # load keeps flowing meanwhile (a pace, not a wait for a condition)
        down = time.monotonic()
        kill9(broker)
        time.sleep(LOOP_STALL_S + 3)  # the outage itself, long enough to be noticed
        broker = localkafka.start_broker(broker.run_dir, port=port, controller_port=controller_port)
        back = time.monotonic()
        recoveries.append(first_new_event_after(base, RECOVERY_LIMIT_S))
        outages.append((down, back))
    print(f"applied again {', '.join(f'{s:.1f}' for s in recoveries)} s after the broker "
          f"was back (median {statistics.median(recoveries):.1f} s)")

    sender.stop.set()
    sender.join(400)
    assert sender.error is None, sender.error
    assert sender.count < len(sender.commands), "the load ended before the outages did"
    expected, balances_expected = model(setup, sender.sent())
    records, outcomes = wait_for_all_outcomes(base, expected)
    health.stop.set()
    health.join()

    # Health said 503 (or the worker was unreachable) during each outage, from
    # the moment a worker must have noticed: a Kafka call times out, the
    # statistics (every second) show no broker up, or the loop stalls.
    noticed_s = LOOP_STALL_S + 1
    for down, back in outages:
        during = [(round(t - down, 1), u[-5:], s, r) for t, u, s, r in health.samples
                  if down + noticed_s < t < back]
        assert during and all(s != 200 for _t, _u, s, _r in during), during
    # Both workers become healthy again by themselves (waits for 200).
    for worker in w:
        worker.wait_ready(60)

    check_against_model(records, outcomes, expected, balances_expected)
    result = ledger_cli(base, "verify", "--no-store")
    assert 0 == result.returncode, result.stdout + result.stderr

    # SIGTERM stops a worker within 10 s even while the broker is gone.
    kill9(broker)
    for worker in w:
        started = time.monotonic()
        worker.process.send_signal(signal.SIGTERM)
        worker.process.wait(STOP_LIMIT_S + 5)
        assert time.monotonic() - started < STOP_LIMIT_S
