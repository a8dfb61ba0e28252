"""The probes of a real `fashionstream serve` tell the truth when its topics vanish under it.

A cluster replaced under a running service (new cluster id, data lost) comes back without the
topics. Nothing then fails loudly: the consumer receives nothing, the producer holds its answers.
So the service checks its topics: while one is missing /readyz answers 503 naming it, and /livez
(= /healthz) fails once input waits without a confirmed answer for --stall-timeout, so that an
orchestrator restarts the replica. With --create-topics the service recreates them and recovers.
Run on real Kafka and on the Pub/Sub emulator.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fashionstream.pipeline import contract
from fashionstream.pipeline.topology import Topology
from fashionstream.pubsub import admin, open_topic
from service_process import ServiceProcess, no_orphans  # noqa: F401 - the fixture is used by name
from topologies import delete_topology, unique_topology

pytestmark = [pytest.mark.usefixtures("no_orphans"), pytest.mark.slow]

CHECK_INTERVAL_S = 1.0
STALL_TIMEOUT_S = 4.0
PROBE_ARGS = ["--topic-check-interval", str(CHECK_INTERVAL_S), "--stall-timeout", str(STALL_TIMEOUT_S)]


@pytest.fixture
def topology(external_backend: Any, unique_name: Any) -> Iterator[Topology]:
    made = unique_topology(external_backend.broker_url, unique_name)
    made.create(ack_deadline_s=10)
    yield made
    delete_topology(made)


def probe(service: ServiceProcess, path: str) -> tuple[int, dict[str, Any]]:
    code, body = service.get(path)
    return code, json.loads(body)


def wait_until(check: Callable[[], bool], timeout: float, what: str, service: ServiceProcess) -> float:
    """Seconds until `check()` holds; fails with the service's log after `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout} s\n{service.logs()}")


def send_requests(topology: Topology, count: int, prefix: str) -> None:
    with open_topic(topology.topic(topology.images)) as publisher:
        for i in range(count):
            image, request_id = bytes(784), f"{prefix}-{i}"
            encoded = contract.encode_request(image, topology.flavour, request_id=request_id, content_type=contract.RAW)
            publisher.send(encoded.data, encoded.attributes, key=encoded.key).result(timeout=30)


def test_missing_topics_fail_readiness_then_liveness_and_are_not_created_unasked(
    external_backend: Any, topology: Topology, tmp_path: Path
) -> None:
    service = ServiceProcess(topology, external_backend.subscriber_options, tmp_path / "serve.log", PROBE_ARGS)
    service.wait_healthy()
    send_requests(topology, 5, "before")
    wait_until(lambda: service.metric("fashionstream_acked_total") >= 5, 60, "5 answered", service)
    assert probe(service, "/readyz")[0] == 200 and probe(service, "/livez")[0] == 200

    admin.delete_topic(topology.topic(topology.predictions))
    took = wait_until(lambda: probe(service, "/readyz")[0] == 503, 30, "/readyz 503", service)
    code, doc = probe(service, "/readyz")
    assert code == 503 and topology.predictions in doc["problems"]["topics"], doc
    assert "--create-topics" in doc["problems"]["topics"]
    assert took < 10 * CHECK_INTERVAL_S + 5
    # Nothing waits yet: a replica without work is not restarted for an outage it cannot cure.
    assert probe(service, "/livez")[0] == 200

    # Input waits and cannot be answered: after the stall timeout the replica reports itself dead.
    send_requests(topology, 3, "stuck")
    wait_until(lambda: probe(service, "/livez")[0] == 503, STALL_TIMEOUT_S + 60, "/livez 503", service)
    assert probe(service, "/healthz")[0] == 503  # the same probe under its older name
    code, doc = probe(service, "/livez")
    assert doc["status"] == "stalled" and doc["no_progress_s"] >= STALL_TIMEOUT_S, doc
    assert not admin.topic_exists(topology.topic(topology.predictions)), "created without --create-topics"
    assert service.proc.poll() is None and service.stop() == 0


def test_with_create_topics_a_vanished_topic_is_recreated_and_answers_flow_again(
    external_backend: Any, topology: Topology, tmp_path: Path
) -> None:
    service = ServiceProcess(
        topology, external_backend.subscriber_options, tmp_path / "serve.log", [*PROBE_ARGS, "--create-topics"]
    )
    service.wait_healthy()
    send_requests(topology, 5, "before")
    wait_until(lambda: service.metric("fashionstream_acked_total") >= 5, 60, "5 answered", service)

    admin.delete_topic(topology.topic(topology.predictions))
    wait_until(
        lambda: admin.topic_exists(topology.topic(topology.predictions)) and probe(service, "/readyz")[0] == 200,
        30,
        "predictions topic recreated and /readyz 200",
        service,
    )
    send_requests(topology, 5, "after")
    wait_until(lambda: service.metric("fashionstream_acked_total") >= 10, 90, "10 answered", service)
    assert probe(service, "/readyz")[0] == 200 and probe(service, "/livez")[0] == 200
    assert "recreated missing topics" in service.logs()
    assert service.stop() == 0
