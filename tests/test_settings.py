"""Settings (streams/config.py) is the one reader of the environment."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from streams.config import Settings

REPO = Path(__file__).resolve().parent.parent
# Reading a variable; passing the whole environment on to a subprocess
# ({**os.environ, **settings.to_env()}) is not reading a setting.
READS = re.compile(r"os\.environ\.get\(|os\.environ\[|os\.getenv\(|environ\.get\(")


def test_nothing_outside_config_reads_the_environment():
    readers = []
    for package in ("ledger", "streams", "schemas"):
        for path in sorted((REPO / package).rglob("*.py")):
            if path.name == "config.py" and path.parent.name == "streams":
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if READS.search(line):
                    readers.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert readers == []


def test_settings_survive_the_round_trip_through_the_environment(monkeypatch, tmp_path):
    given = Settings(
        bootstrap_servers="a:1,b:2", kafka_properties=(("security.protocol", "SASL_SSL"),),
        topic_prefix="t-x", partitions=3, worker_id="w-9", data_dir=tmp_path / "d",
        web_host="0.0.0.0", web_port=7001, batch_size_max=17, transaction_timeout_ms=12_345,
        session_timeout_ms=7_000, snapshot_root=tmp_path / "s", leg_key_file=tmp_path / "k",
        leg_auth=False, create_topics=False, replication_factor=3, min_insync_replicas=2,
        api_tokens_file=tmp_path / "tokens", api_token="secret-token", api_insecure=True,
        web_tls_cert=tmp_path / "c.pem", web_tls_key=tmp_path / "k.pem",
        web_tls_ca=tmp_path / "ca.pem", forward_secret_file=tmp_path / "f",
        read_models=False, statement_tz="Europe/Paris", tick_ms=250, clock_offset_ms=-5,
        snapshot_every=8)
    for name in list(__import__("os").environ):
        if name.startswith("LEDGER_") or name == "KAFKA_BOOTSTRAP_SERVERS":
            monkeypatch.delenv(name)
    for name, value in given.to_env().items():
        monkeypatch.setenv(name, value)
    back = Settings.from_env()
    assert {f.name: getattr(back, f.name) for f in fields(Settings)} == {
        f.name: getattr(given, f.name) for f in fields(Settings)}
