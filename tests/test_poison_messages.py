"""A request that can never be answered is dead-lettered after --max-delivery-attempts, not retried for ever.

`fashionstream serve` runs as a subprocess on Kafka and on the Pub/Sub emulator, with a
predictions topic that refuses every answer for real: on Kafka the topic's `max.message.bytes`
is smaller than any prediction, on Pub/Sub the topic is deleted once the service has opened it.
Each attempt to answer fails, the request is nacked and comes back; on the third failure it
must go to the dead-letter topic as `too_many_attempts`, with the count and the last error, and
/metrics must show the two redeliveries before it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fashionstream.pipeline.producer import encode, labelled_test_images
from fashionstream.pipeline.topology import Topology
from fashionstream.pubsub import admin, open_subscription, open_topic
from service_process import ServiceProcess, no_orphans  # noqa: F401 - the fixture is used by name

ATTEMPTS = 3


def create_refusing_predictions_topic(backend: Any, topic: str) -> None:
    """A Kafka topic whose size limit no prediction fits under (the broker refuses every answer)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    client = AdminClient({"bootstrap.servers": backend.kafka_servers})
    new = NewTopic(topic, num_partitions=1, replication_factor=1, config={"max.message.bytes": "64"})
    client.create_topics([new])[topic].result(timeout=30)


@pytest.fixture
def topology(external_backend: Any, unique_name: Any) -> Iterator[Topology]:
    made = Topology(
        external_backend.broker_url,
        images=unique_name("images"),
        predictions=unique_name("predictions"),
        dead_letters=unique_name("images-dlq"),
        service_subscription=unique_name("model-service"),
        consumer_subscription=unique_name("dead-letters"),
    )
    if external_backend.name == "kafka":
        create_refusing_predictions_topic(external_backend, made.predictions)
    made.create(
        subscriptions=((made.images, made.service_subscription), (made.dead_letters, made.consumer_subscription)),
        ack_deadline_s=30,
    )
    yield made
    for topic, sub in ((made.images, made.service_subscription), (made.dead_letters, made.consumer_subscription)):
        with contextlib.suppress(Exception):
            admin.delete_subscription(made.subscription(topic, sub))
    for name in (made.images, made.predictions, made.dead_letters):
        with contextlib.suppress(Exception):
            admin.delete_topic(made.topic(name))


@pytest.mark.usefixtures("no_orphans")
def test_an_unanswerable_request_is_dead_lettered_after_max_delivery_attempts(
    external_backend: Any, topology: Topology, tmp_path: Path
) -> None:
    service = ServiceProcess(
        topology,
        external_backend.subscriber_options,
        tmp_path / "serve.log",
        extra_args=["--max-delivery-attempts", str(ATTEMPTS), "--publish-timeout", "10"],
    )
    service.wait_healthy()
    if external_backend.name == "gcp":
        admin.delete_topic(topology.topic(topology.predictions))  # the service holds it open: answers fail
    (image,) = labelled_test_images(1)
    request = encode(image, topology.flavour, "cloudevents", request_id="poison-1")
    with open_topic(topology.topic(topology.images)) as publisher:
        publisher.send(request.data, request.attributes, key=request.key).result(timeout=60)

    dead_url = topology.subscription(topology.dead_letters, topology.consumer_subscription)
    with open_subscription(dead_url, **external_backend.subscriber_options) as dead:
        letters = []
        deadline = time.monotonic() + 90
        while not letters and time.monotonic() < deadline:
            letters = dead.receive_batch(10, timeout=1.0)
        for letter in letters:
            letter.ack()
        letters += dead.receive_batch(10, timeout=3.0)  # and only once
    logs = service.logs()
    assert len(letters) == 1, logs
    attributes = letters[0].attributes
    assert attributes["error"] == "too_many_attempts", attributes
    assert attributes["delivery_attempts"] == str(ATTEMPTS)
    assert "last:" in attributes["error_detail"], attributes
    assert letters[0].data == request.data

    # Counted as it happened: two failed answers nacked and delivered again, the third given up on.
    deadline = time.monotonic() + 10
    while service.metric("fashionstream_acked_total") < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert service.metric("fashionstream_nacked_total") == ATTEMPTS - 1
    assert service.metric("fashionstream_redelivered_total") == ATTEMPTS - 1
    assert service.metric("fashionstream_messages_in_total") == ATTEMPTS
    assert service.metric("fashionstream_acked_total") == 1
    assert service.stop() == 0, service.logs()
