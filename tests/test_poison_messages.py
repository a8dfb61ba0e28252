"""Poison messages are dead-lettered after --max-delivery-attempts; an outage makes no poison message.

`fashionstream serve` runs as a subprocess on Kafka and on the Pub/Sub emulator.

* A request whose answer the broker refuses for real (on Kafka the predictions topic's
  `max.message.bytes` is smaller than any prediction: InvalidArgument) fails each attempt; on
  the third it must go to the dead-letter topic as `too_many_attempts`, with the count and the
  last error, and /metrics must show the two redeliveries before it.
* On Pub/Sub the broker counts deliveries: a request nacked that often by another consumer of
  the service's subscription before the service starts is dead-lettered without an answer.
* A predictions topic deleted for many more nack rounds than the budget, then created again,
  is an outage, not the requests' fault: every request is answered and none is dead-lettered.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fashionstream.pipeline.producer import encode, labelled_test_images
from fashionstream.pipeline.topology import Topology
from fashionstream.pubsub import admin, open_subscription, open_topic
from service_process import ServiceProcess, no_orphans  # noqa: F401 - the fixture is used by name

ATTEMPTS = 3
KAFKA_ONLY = [pytest.param("kafka", id="kafka", marks=pytest.mark.kafka)]
GCP_ONLY = [pytest.param("gcp", id="gcp", marks=pytest.mark.gcp)]

pytestmark = pytest.mark.usefixtures("no_orphans")


def create_refusing_predictions_topic(backend: Any, topic: str) -> None:
    """A Kafka topic whose size limit no prediction fits under (the broker refuses every answer)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    client = AdminClient({"bootstrap.servers": backend.kafka_servers})
    new = NewTopic(topic, num_partitions=1, replication_factor=1, config={"max.message.bytes": "64"})
    client.create_topics([new])[topic].result(timeout=30)


@pytest.fixture
def make_topology(external_backend: Any, unique_name: Any) -> Iterator[Callable[..., Topology]]:
    """Topics and subscriptions of one test: the service's on `images`, a reader's on the dead-letter topic."""
    made: list[Topology] = []

    def make(*, refusing: bool = False) -> Topology:
        topology = Topology(
            external_backend.broker_url,
            images=unique_name("images"),
            predictions=unique_name("predictions"),
            dead_letters=unique_name("images-dlq"),
            service_subscription=unique_name("model-service"),
            consumer_subscription=unique_name("dead-letters"),
        )
        made.append(topology)
        if refusing:
            create_refusing_predictions_topic(external_backend, topology.predictions)
        topology.create(
            subscriptions=(
                (topology.images, topology.service_subscription),
                (topology.dead_letters, topology.consumer_subscription),
            ),
            ack_deadline_s=30,
        )
        return topology

    yield make
    for topology in made:
        pairs = (
            (topology.images, topology.service_subscription),
            (topology.dead_letters, topology.consumer_subscription),
        )
        for topic, sub in pairs:
            with contextlib.suppress(Exception):
                admin.delete_subscription(topology.subscription(topic, sub))
        for name in (topology.images, topology.predictions, topology.dead_letters):
            with contextlib.suppress(Exception):
                admin.delete_topic(topology.topic(name))


def send_requests(topology: Topology, count: int, prefix: str) -> list[bytes]:
    """`count` real test images as requests `prefix-0`...; returns their bodies."""
    bodies = []
    with open_topic(topology.topic(topology.images)) as publisher:
        for i, image in enumerate(labelled_test_images(count)):
            request = encode(image, topology.flavour, "cloudevents", request_id=f"{prefix}-{i}")
            publisher.send(request.data, request.attributes, key=request.key).result(timeout=60)
            bodies.append(request.data)
    return bodies


def read_dead_letters(backend: Any, topology: Topology, first_within: float, then: float = 3.0) -> list[Any]:
    """Dead letters that arrive within `first_within` s (once one has come, those within `then` s more), acked."""
    url = topology.subscription(topology.dead_letters, topology.consumer_subscription)
    with open_subscription(url, **backend.subscriber_options) as dead:
        letters: list[Any] = []
        deadline = time.monotonic() + first_within
        while not letters and time.monotonic() < deadline:
            letters = dead.receive_batch(10, timeout=1.0)
        letters += dead.receive_batch(10, timeout=then)  # and only once
        for letter in letters:
            letter.ack()
    return letters


def wait_for_metric(service: ServiceProcess, name: str, at_least: float, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while (value := service.metric(name)) < at_least and time.monotonic() < deadline:
        time.sleep(0.2)
    return value


@pytest.mark.parametrize("external_backend", KAFKA_ONLY, indirect=True)
def test_an_answer_the_broker_refuses_is_dead_lettered_after_max_delivery_attempts(
    external_backend: Any, make_topology: Callable[..., Topology], tmp_path: Path
) -> None:
    topology = make_topology(refusing=True)
    service = ServiceProcess(
        topology,
        external_backend.subscriber_options,
        tmp_path / "serve.log",
        extra_args=["--max-delivery-attempts", str(ATTEMPTS), "--publish-timeout", "10"],
    )
    service.wait_healthy()
    (body,) = send_requests(topology, 1, "poison")

    letters = read_dead_letters(external_backend, topology, first_within=90)
    logs = service.logs()
    assert len(letters) == 1, logs
    attributes = letters[0].attributes
    assert attributes["error"] == "too_many_attempts", attributes
    assert attributes["delivery_attempts"] == str(ATTEMPTS)
    assert "InvalidArgument" in attributes["error_detail"], attributes
    assert letters[0].data == body

    # Counted as it happened: two failed answers nacked and delivered again, the third given up on.
    wait_for_metric(service, "fashionstream_acked_total", 1, timeout=10)
    assert service.metric("fashionstream_nacked_total") == ATTEMPTS - 1
    assert service.metric("fashionstream_redelivered_total") == ATTEMPTS - 1
    assert service.metric("fashionstream_messages_in_total") == ATTEMPTS
    assert service.metric("fashionstream_acked_total") == 1
    assert service.stop() == 0, service.logs()


@pytest.mark.parametrize("external_backend", GCP_ONLY, indirect=True)
def test_a_request_the_broker_delivered_too_often_is_dead_lettered_unanswered(
    external_backend: Any, make_topology: Callable[..., Topology], tmp_path: Path
) -> None:
    """Pub/Sub counts every delivery that ended without an ack; the service believes its count."""
    topology = make_topology()
    (body,) = send_requests(topology, 1, "poison")
    # Another consumer of the service's subscription fails the request ATTEMPTS times: the broker counts.
    attempts: list[int | None] = []
    url = topology.subscription(topology.images, topology.service_subscription)
    with open_subscription(url) as failing:
        deadline = time.monotonic() + 30
        while len(attempts) < ATTEMPTS and time.monotonic() < deadline:
            for message in failing.receive_batch(10, timeout=1.0):
                attempts.append(message.delivery_attempt)
                message.nack()
    assert attempts == list(range(1, ATTEMPTS + 1))

    service = ServiceProcess(
        topology,
        external_backend.subscriber_options,
        tmp_path / "serve.log",
        extra_args=["--max-delivery-attempts", str(ATTEMPTS)],
    )
    letters = read_dead_letters(external_backend, topology, first_within=60)
    assert len(letters) == 1, service.logs()
    attributes = letters[0].attributes
    assert attributes["error"] == "too_many_attempts", attributes
    assert attributes["delivery_attempts"] == str(ATTEMPTS)
    assert letters[0].data == body
    wait_for_metric(service, "fashionstream_acked_total", 1, timeout=10)
    assert service.metric("fashionstream_acked_total") == 1
    assert service.metric("fashionstream_predictions_out_total") == 0  # never given to the model
    assert service.stop() == 0, service.logs()


def test_a_predictions_topic_gone_for_many_rounds_makes_no_dead_letters(
    external_backend: Any, make_topology: Callable[..., Topology], tmp_path: Path
) -> None:
    """Every failure is an infrastructure failure (NotFound, timeouts): none counts against the requests."""
    count = 5
    topology = make_topology()
    predictions = topology.topic(topology.predictions)
    service = ServiceProcess(
        topology,
        external_backend.subscriber_options,
        tmp_path / "serve.log",
        extra_args=[
            *["--max-delivery-attempts", str(ATTEMPTS)],
            *["--publisher-option", "send_timeout=2"],  # Kafka holds answers for a missing topic until then
        ],
    )
    service.wait_healthy()
    admin.delete_topic(predictions)  # the service holds its publisher open: answers fail
    send_requests(topology, count, "outage")

    # Each request nacked more than twice the budget before the topic comes back.
    rounds = 2 * ATTEMPTS + 1
    nacked = wait_for_metric(service, "fashionstream_nacked_total", count * rounds, timeout=45)
    assert nacked >= count * rounds, service.logs()
    assert service.metric("fashionstream_acked_total") == 0
    admin.create_topic(predictions)

    answered = wait_for_metric(service, "fashionstream_predictions_out_total", count, timeout=45)
    assert answered >= count, service.logs()
    assert wait_for_metric(service, "fashionstream_acked_total", count, timeout=10) == count
    assert read_dead_letters(external_backend, topology, first_within=2, then=0.5) == []
    assert service.metric('fashionstream_dead_lettered_total{reason="too_many_attempts"}') == 0
    assert service.stop() == 0, service.logs()
