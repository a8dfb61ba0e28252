"""The Grafana dashboard and the Prometheus alert rules in deploy/: well formed, loaded by the compose
stack, and naming only metrics that a real `fashionstream serve` exports.

promtool and Grafana are not installed here, so the check is ours: every identifier in an expression
that is not PromQL (a function, an aggregation, a keyword) must be a sample name of the service's
/metrics, read from a service that has classified images over real Kafka (the consumer-lag gauge
only exists there). A renamed metric, or a typo in a query, fails this test instead of showing
"no data" in production.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from fashionstream.pipeline.producer import ProduceSummary, labelled_test_images, produce
from fashionstream.pipeline.topology import Topology
from fashionstream.pubsub import admin, open_topic
from service_process import ServiceProcess, no_orphans  # noqa: F401 - the fixture is used by name
from test_container import compose_config
from topologies import delete_topology, unique_topology

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
ALERTS = DEPLOY / "alerts.yml"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
PROVISIONING = DEPLOY / "grafana" / "provisioning"

# PromQL's functions and aggregations (called with parentheses) and its other keywords.
PROMQL_FUNCTIONS = {
    "abs", "absent", "absent_over_time", "avg", "avg_over_time", "bottomk", "ceil", "changes", "clamp",
    "clamp_max", "clamp_min", "count", "count_over_time", "count_values", "delta", "deriv", "exp", "floor",
    "group", "histogram_quantile", "idelta", "increase", "irate", "label_replace", "last_over_time", "ln",
    "max", "max_over_time", "min", "min_over_time", "predict_linear", "quantile", "quantile_over_time", "rate",
    "resets", "round", "scalar", "sort", "sort_desc", "stddev", "stdvar", "sum", "sum_over_time", "time",
    "timestamp", "topk", "vector",
}  # fmt: skip
PROMQL_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
                   "offset", "bool", "inf", "nan"}  # fmt: skip
# Series Prometheus makes itself for every target.
SCRAPE_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}

pytestmark = pytest.mark.usefixtures("no_orphans")


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads; raises AssertionError on a call of an unknown function."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values may contain anything
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)  # label lists
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery windows
    names = set()
    # Not after a digit or a dot: the "e" of 1e-9 and the "m" of 10m are not names.
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)\s*(\()?", text):
        word, called = match.group(1), match.group(2)
        if called:
            assert word in PROMQL_FUNCTIONS, f"{word}() is not a PromQL function, in: {expr}"
        elif word.lower() not in PROMQL_KEYWORDS:
            names.add(word)
    return names


def test_metric_names_finds_metrics_and_rejects_unknown_functions() -> None:
    expr = (
        'sum by (le) (rate(a_bucket{job="x", le=~"1.*"}[5m])) / clamp_min(sum(rate(b_total[5m])), 1e-9) > 0.01 '
        "and on() c offset 10m"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}
    with pytest.raises(AssertionError, match="rat"):
        metric_names("rat(a_total[5m])")


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def dashboard_exprs() -> list[str]:
    return [
        target["expr"] for board in dashboards().values() for panel in board["panels"] for target in panel["targets"]
    ]


def test_alert_rules_cover_lag_dead_letters_latency_and_progress() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    assert {
        "FashionstreamConsumerLagGrowing",
        "FashionstreamBacklogAgeHigh",
        "FashionstreamDeadLetterRate",
        "FashionstreamLatencyP99OverTarget",
        "FashionstreamNoProgress",
    } <= set(names)
    for rule in rules:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule
        assert rule["labels"]["severity"] in ("warning", "critical"), rule
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["expr"]
        assert metric_names(rule["expr"]), f"{rule['alert']} reads no metric"


def test_dashboard_shows_throughput_latency_batches_dead_letters_lag_and_model() -> None:
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yaml").read_text())["datasources"]
    uids = {source["uid"] for source in datasources}
    boards = dashboards()
    assert list(boards) == ["fashionstream.json"]
    board = boards["fashionstream.json"]
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    titles = {panel["title"] for panel in board["panels"]}
    assert {"Throughput", "End-to-end latency", "Batch size", "Dead letters by reason", "Consumer lag",
            "Backlog age", "Model answering"} <= titles  # fmt: skip
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] in uids and panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] in uids and metric_names(target["expr"]), panel["title"]
        box = panel["gridPos"]
        assert box["x"] + box["w"] <= 24, panel["title"]  # Grafana's grid is 24 columns wide
        mine = {(x, y) for x in range(box["x"], box["x"] + box["w"]) for y in range(box["y"], box["y"] + box["h"])}
        assert not cells & mine, f"{panel['title']} overlaps another panel"
        cells |= mine
    latency = next(p for p in board["panels"] if p["title"] == "End-to-end latency")
    assert [t["legendFormat"] for t in latency["targets"]] == ["p50", "p95", "p99"]


def test_compose_stack_loads_the_alert_rules_and_provisions_grafana() -> None:
    services = compose_config()["services"]
    assert any(
        volume.startswith("./alerts.yml:/etc/prometheus/alerts.yml") for volume in services["prometheus"]["volumes"]
    )
    scrape = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    assert scrape["rule_files"] == ["/etc/prometheus/alerts.yml"]
    grafana = services["grafana"]
    mounts = dict(volume.split(":")[:2] for volume in grafana["volumes"])
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "fashionstream.yaml").read_text())["providers"][0]
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    datasource = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yaml").read_text())["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090" and "prometheus" in services
    assert any(port.endswith("3000:3000") or port == "3000:3000" for port in map(str, grafana["ports"])) or any(
        isinstance(port, dict) and port.get("target") == 3000 for port in grafana["ports"]
    ), grafana["ports"]


@pytest.fixture
def kafka_topology(kafka_bootstrap: str, unique_name: Any) -> Iterator[Topology]:
    made = unique_topology(f"kafka://{kafka_bootstrap}", unique_name)
    for name in (made.images, made.predictions, made.dead_letters):
        admin.create_topic(made.topic(name), partitions=2)
    yield made
    delete_topology(made)


@pytest.mark.kafka
def test_every_metric_in_the_dashboard_and_the_alerts_is_exported_by_the_service(
    kafka_topology: Topology, tmp_path: Path
) -> None:
    service = ServiceProcess(kafka_topology, {"auto.offset.reset": "earliest"}, tmp_path / "serve.log")
    summary = ProduceSummary()
    with open_topic(kafka_topology.topic(kafka_topology.images)) as publisher:
        produce(publisher, labelled_test_images(50), kafka_topology.flavour, summary=summary)
    assert summary.confirmed == 50

    def exported() -> set[str]:
        _, text = service.get("/metrics")
        return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}

    # The lag gauge comes from the Kafka client's statistics, every 5 s.
    deadline = time.monotonic() + 30
    while "fashionstream_consumer_lag_messages" not in exported():
        assert time.monotonic() < deadline, f"no consumer lag in /metrics:\n{service.logs()}"
        time.sleep(0.5)
    assert service.metric("fashionstream_predictions_out_total") == 50
    names = exported() | SCRAPE_SERIES
    wanted = set().union(*(metric_names(expr) for expr in [*dashboard_exprs(), *(r["expr"] for r in alert_rules())]))
    assert wanted - names == set(), f"not exported by the service: {sorted(wanted - names)}"
    # Every dead-letter reason and the process and Python collectors are there before anything fails.
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "python_gc_collections_total",
            "python_info"} <= names  # fmt: skip
    _, text = service.get("/metrics")
    from fashionstream.reasons import Reason

    for reason in Reason:
        assert f'fashionstream_dead_lettered_total{{reason="{reason}"}} 0.0' in text, reason
    assert service.stop() == 0
