"""Tests of the local-broker tooling (streams/localkafka.py) and docker-compose.yml."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from streams import localkafka

REPO_ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DEPLOY_DIR = REPO_ROOT / "deploy"
PROMETHEUS_CONFIG = DEPLOY_DIR / "prometheus" / "prometheus.yml"
GRAFANA_DIR = DEPLOY_DIR / "grafana"
DASHBOARD_FILE = GRAFANA_DIR / "dashboards" / "ledger.json"
PROMETHEUS_DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
# The worker's metric names (streams/metrics.py), as exposed on GET /metrics.
LEDGER_METRICS = frozenset({
    "ledger_commands_total", "ledger_command_rejections_total", "ledger_events_appended_total",
    "ledger_dead_letters_total", "ledger_transactions_total", "ledger_transaction_seconds",
    "ledger_batch_commands", "ledger_recovery_seconds", "ledger_recovered_records_total",
    "ledger_assigned_partitions", "ledger_snapshot_fallbacks_total", "ledger_http_requests_total",
    "ledger_http_request_seconds", "ledger_consumer_lag", "ledger_snapshot_age_seconds",
    "ledger_snapshot_bytes", "ledger_money_minor", "ledger_invariant_ok",
    "ledger_read_model_lag_events", "ledger_read_model_events_total",
    "ledger_read_model_recovered_records_total",
})


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.skipif(
    bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS")),
    reason="KAFKA_BOOTSTRAP_SERVERS names an external broker; not starting a private one",
)
def test_private_broker_commits_a_transaction_and_stops(tmp_path):
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    broker = localkafka.start_broker(tmp_path / "kafka")
    try:
        assert localkafka.status(broker.run_dir) == broker

        topic = "localkafka-test"
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        admin.create_topics([NewTopic(topic, num_partitions=1)])[topic].result(30)

        # Transactions need the single-node settings of __transaction_state.
        producer = Producer({"bootstrap.servers": broker.bootstrap,
                             "transactional.id": f"localkafka-test-{uuid.uuid4()}"})
        producer.init_transactions(60)
        producer.begin_transaction()
        producer.produce(topic, key=b"k", value=b"committed")
        producer.commit_transaction(30)

        consumer = Consumer({"bootstrap.servers": broker.bootstrap,
                             "group.id": "localkafka-test",
                             "isolation.level": "read_committed",
                             "enable.auto.commit": False})
        try:
            consumer.assign([TopicPartition(topic, 0, 0)])
            msg = consumer.poll(30)
        finally:
            consumer.close()
        assert msg is not None and msg.error() is None
        assert msg.value() == b"committed"
    finally:
        stopped = localkafka.stop_broker(broker)

    assert stopped
    assert _gone(broker.pid)
    assert localkafka.status(broker.run_dir) is None
    assert not (broker.run_dir / "broker.pid").exists()
    assert localkafka.stop_broker(broker) is False  # stopping again is a no-op


def test_stop_broker_never_signals_an_unrelated_pid(tmp_path):
    # A stale pid file whose pid now belongs to another process (pid reuse).
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "broker.pid").write_text(f"{other.pid}\n")
        (tmp_path / "bootstrap.txt").write_text("127.0.0.1:1\n")
        assert localkafka.status(tmp_path) is None
        assert localkafka.stop_broker(tmp_path) is False
        assert other.poll() is None  # still running
        assert not (tmp_path / "broker.pid").exists()
    finally:
        other.kill()
        other.wait()


def test_docker_compose_file_parses():
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker client on PATH")
    if subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker compose plugin is not installed")
    result = subprocess.run([docker, "compose", "-f", str(COMPOSE_FILE), "config", "-q"],
                            capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr


def test_docker_compose_worker_uses_the_internal_listener():
    # Runs without Docker: the worker must use an address the broker advertises.
    yaml = pytest.importorskip("yaml")
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    advertised = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    bootstrap = services["worker"]["environment"]["KAFKA_BOOTSTRAP_SERVERS"]
    assert f"://{bootstrap}" in advertised


def _yaml():
    return pytest.importorskip("yaml", reason="PyYAML is not installed")


def _bind_mounts(service: dict) -> list[tuple[str, str, bool]]:
    """(host path, container path, read-only) of a compose service's bind mounts."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):  # long syntax
            if volume.get("type") == "bind":
                mounts.append((volume["source"], volume["target"], bool(volume.get("read_only"))))
            continue
        source, target, *mode = volume.split(":")
        if source.startswith((".", "/", "~")):  # otherwise a named volume
            mounts.append((source, target, "ro" in "".join(mode).split(",")))
    return mounts


def test_docker_compose_file_is_yaml_and_its_deploy_mounts_exist():
    # Runs without Docker.
    compose = _yaml().safe_load(COMPOSE_FILE.read_text())
    services = compose["services"]
    assert {"kafka", "worker", "prometheus", "grafana"} <= services.keys()
    deploy_mounts = []
    for name, service in services.items():
        for source, target, read_only in _bind_mounts(service):
            host = (REPO_ROOT / source).resolve()
            if host.is_relative_to(DEPLOY_DIR):
                assert host.exists(), f"{name} mounts {source}, which is not in the repo"
                assert read_only, f"{name} should mount {source} read-only"
                deploy_mounts.append((name, host, target))
    mounted = {(name, host) for name, host, _ in deploy_mounts}
    assert ("prometheus", PROMETHEUS_CONFIG) in mounted
    assert ("grafana", GRAFANA_DIR / "provisioning") in mounted
    assert ("grafana", DASHBOARD_FILE.parent) in mounted
    # Named volumes that services use are declared.
    declared = compose.get("volumes") or {}
    for name, service in services.items():
        for volume in service.get("volumes", []):
            if isinstance(volume, str) and not volume.startswith((".", "/", "~")):
                assert volume.split(":")[0] in declared, f"{name}: undeclared volume {volume}"


def test_prometheus_config_scrapes_the_worker_web_port():
    from streams.config import Settings

    yaml = _yaml()
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    job = jobs["ledger-workers"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job.get("scrape_interval", config.get("global", {}).get("scrape_interval")) == "5s"
    targets = [t for static in job["static_configs"] for t in static["targets"]]
    assert "worker:6066" in targets
    # The target is the compose service and the worker's web port, on all interfaces.
    assert Settings.web_port == 6066
    worker = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["worker"]
    assert worker["environment"]["LEDGER_WEB_HOST"] == "0.0.0.0"
    assert str(worker["environment"].get("LEDGER_WEB_PORT", 6066)) == "6066"


def test_grafana_provisioning_points_at_prometheus_and_the_dashboards():
    yaml = _yaml()
    datasources = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text())
    [prometheus] = [d for d in datasources["datasources"] if d["uid"] == "prometheus"]
    assert prometheus["type"] == "prometheus"
    assert prometheus["url"] == "http://prometheus:9090"
    providers = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "dashboards" / "ledger.yml").read_text())["providers"]
    paths = {p["options"]["path"] for p in providers if p["type"] == "file"}
    assert paths == {"/var/lib/grafana/dashboards"}
    grafana = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["grafana"]
    targets = {target for source, target, _ in _bind_mounts(grafana)
               if (REPO_ROOT / source).resolve() == DASHBOARD_FILE.parent}
    assert targets == paths


def _dashboard_panels(panels: list[dict]):
    for panel in panels:
        yield panel
        yield from _dashboard_panels(panel.get("panels", []))  # collapsed rows


def test_grafana_dashboard_queries_only_known_metrics():
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    assert dashboard["uid"] == "ledger"
    assert dashboard["schemaVersion"] == 39
    panels = [p for p in _dashboard_panels(dashboard["panels"]) if p["type"] != "row"]
    assert panels
    assert len({p["id"] for p in panels}) == len(panels)
    used = set()
    for panel in panels:
        assert panel["datasource"] == PROMETHEUS_DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", PROMETHEUS_DATASOURCE) == PROMETHEUS_DATASOURCE
            names = {re.sub(r"_(bucket|count|sum)$", "", token)
                     for token in re.findall(r"ledger_[a-z_]+", target["expr"])}
            assert names, f"{panel['title']}: {target['expr']} queries no ledger metric"
            assert names <= LEDGER_METRICS, f"{panel['title']}: unknown {names - LEDGER_METRICS}"
            used |= names
    for required in ("ledger_commands_total", "ledger_command_rejections_total",
                     "ledger_events_appended_total", "ledger_transactions_total",
                     "ledger_transaction_seconds", "ledger_consumer_lag",
                     "ledger_dead_letters_total", "ledger_http_requests_total",
                     "ledger_http_request_seconds", "ledger_recovery_seconds",
                     "ledger_snapshot_age_seconds"):
        assert required in used, f"the dashboard has no panel on {required}"


def test_dashboard_metric_list_matches_streams_metrics():
    # Keeps LEDGER_METRICS (and so the dashboard) in step with what workers export.
    from prometheus_client import REGISTRY

    import streams.metrics  # noqa: F401  (registers the metrics)

    exported = set()
    for family in REGISTRY.collect():
        exported.add(family.name + "_total" if family.type == "counter" else family.name)
    assert LEDGER_METRICS <= exported, LEDGER_METRICS - exported


@pytest.mark.kafka
@pytest.mark.skipif(
    bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS")),
    reason="KAFKA_BOOTSTRAP_SERVERS names an external broker; not starting a private one",
)
def test_topic_data_survives_kill_9_and_a_restart_on_the_same_run_dir(tmp_path):
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    port, controller_port = localkafka._free_ports(2)
    run_dir = tmp_path / "kafka"
    broker = localkafka.start_broker(run_dir, port=port, controller_port=controller_port)
    try:
        topic = "survives-kill"
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        admin.create_topics([NewTopic(topic, num_partitions=1)])[topic].result(30)
        producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
        delivered = []
        for i in range(20):
            producer.produce(topic, value=b"m%d" % i,
                             on_delivery=lambda err, msg: delivered.append(err))
        assert producer.flush(30) == 0
        assert delivered == [None] * 20

        assert localkafka.kill_broker(broker)
        assert _gone(broker.pid)
        assert localkafka.status(run_dir) is None
        assert not (run_dir / "broker.pid").exists()
        assert localkafka.kill_broker(broker) is False  # nothing left to kill

        again = localkafka.start_broker(run_dir, port=port, controller_port=controller_port)
        assert again.bootstrap == broker.bootstrap and again.pid != broker.pid
        consumer = Consumer({"bootstrap.servers": again.bootstrap, "group.id": "survives-kill",
                             "enable.auto.commit": False})
        try:
            consumer.assign([TopicPartition(topic, 0, 0)])
            values = []
            deadline = time.monotonic() + 60
            while len(values) < 20 and time.monotonic() < deadline:
                msg = consumer.poll(1)
                if msg is not None and msg.error() is None:
                    values.append(msg.value())
        finally:
            consumer.close()
        assert values == [b"m%d" % i for i in range(20)]
    finally:
        localkafka.stop_broker(run_dir)
    assert localkafka.status(run_dir) is None


def test_read_client_properties(tmp_path):
    path = tmp_path / "client.properties"
    path.write_text(
        "# a comment\n"
        "! another comment\n"
        "\n"
        "  bootstrap.servers = 127.0.0.1:9092,127.0.0.1:9094  \n"
        "sasl.username=ledger-app\n"
        "sasl.password=a=b:c\n"       # only the first separator splits
        "ssl.ca.location: /x/ca.pem\n"
    )
    assert localkafka.read_client_properties(path) == {
        "bootstrap.servers": "127.0.0.1:9092,127.0.0.1:9094",
        "sasl.username": "ledger-app",
        "sasl.password": "a=b:c",
        "ssl.ca.location": "/x/ca.pem",
    }
    path.write_text("ok=1\nsecret-without-separator\n")
    with pytest.raises(ValueError) as err:
        localkafka.read_client_properties(path)
    assert ":2:" in str(err.value) and "secret" not in str(err.value)


def test_cli_help_lists_the_cluster_and_secure_options(capsys):
    for argv in (["--help"], ["start", "--help"]):
        with pytest.raises(SystemExit) as exit_:
            localkafka.main(argv)
        assert exit_.value.code == 0
        out = capsys.readouterr().out
        assert "--brokers" in out and "--secure" in out and "--topic-prefix" in out


def test_default_run_dirs_by_shape_and_nothing_running_in_an_empty_cache(tmp_path):
    assert localkafka.default_run_dir(cache_dir=tmp_path) == tmp_path / "broker"
    assert localkafka.default_run_dir(3, cache_dir=tmp_path) == tmp_path / "cluster"
    assert localkafka.default_run_dir(secure=True, cache_dir=tmp_path) == tmp_path / "broker-secure"
    assert localkafka.find_running(tmp_path) is None


def test_cluster_ports_follow_the_first_node():
    assert localkafka.cluster_ports(9092) == [(9092, 9093), (9094, 9095), (9096, 9097)]


def test_cli_port_picks_what_status_and_stop_act_on(tmp_path, capsys):
    run_dir = tmp_path / "kafka"
    port, controller, other = (localkafka.free_port() for _ in range(3))
    assert 0 == localkafka.main(["start", "--run-dir", str(run_dir), "--port", str(port),
                                 "--controller-port", str(controller)])
    try:
        running = localkafka.status(run_dir)
        assert running is not None and running.bootstrap.endswith(f":{port}")
        assert 0 == localkafka.main(["status", "--run-dir", str(run_dir), "--port", str(port)])
        assert 1 == localkafka.main(["status", "--run-dir", str(run_dir), "--port", str(other)])
        capsys.readouterr()
        assert 0 == localkafka.main(["stop", "--run-dir", str(run_dir), "--port", str(other)])
        assert f"no broker listening on port {other}" in capsys.readouterr().out
        assert localkafka.status(run_dir) == running  # another port's stop left it alone
        assert 0 == localkafka.main(["stop", "--run-dir", str(run_dir), "--port", str(port)])
        assert localkafka.status(run_dir) is None
        assert _gone(running.pid)
    finally:
        localkafka.stop_broker(run_dir)
