"""Scale-out on the broker's own machinery: several `fashionstream serve` replicas share one stream.

On Kafka the replicas join one consumer group and the broker gives each a share of the topic's
partitions; on Pub/Sub they pull from one subscription. One replica is killed with SIGKILL half
way through: its unacknowledged images come back to the survivors (Kafka: after the group's
session timeout; Pub/Sub: after the ack deadline), so every image is answered, some twice.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fashionstream.pipeline.consumer import Tally, read_predictions
from fashionstream.pipeline.producer import ProduceSummary, labelled_test_images, produce
from fashionstream.pipeline.topology import Topology
from fashionstream.pubsub import admin, open_subscription, open_topic
from service_process import ServiceProcess, no_orphans  # noqa: F401 - the fixture is used by name

pytestmark = [pytest.mark.usefixtures("no_orphans"), pytest.mark.slow]

IMAGES = 6000
# Sent at a pace the replicas keep up with on two shared cores, so that the stream is still
# flowing when a replica is killed half way, and the survivors visibly take over its share.
RATE = 400.0


def make_topology(broker_url: str, unique_name: Any, partitions: int) -> Topology:
    topology = Topology(
        broker_url,
        images=unique_name("images"),
        predictions=unique_name("predictions"),
        dead_letters=unique_name("images-dlq"),
        service_subscription=unique_name("model-service"),
        consumer_subscription=unique_name("consumer"),
    )
    # A short ack deadline so that, on Pub/Sub, what the killed replica held comes back within seconds.
    topology.create(partitions=partitions, ack_deadline_s=10)
    return topology


def delete(topology: Topology) -> None:
    for topic, sub in (
        (topology.images, topology.service_subscription),
        (topology.predictions, topology.consumer_subscription),
    ):
        with contextlib.suppress(Exception):
            admin.delete_subscription(topology.subscription(topic, sub))
    for name in (topology.images, topology.predictions, topology.dead_letters):
        with contextlib.suppress(Exception):
            admin.delete_topic(topology.topic(name))


@pytest.fixture
def kafka_topology(kafka_bootstrap: str, unique_name: Any) -> Iterator[Topology]:
    made = make_topology(f"kafka://{kafka_bootstrap}", unique_name, partitions=6)
    yield made
    delete(made)


@pytest.fixture
def pubsub_topology(pubsub_emulator: Any, unique_name: Any) -> Iterator[Topology]:
    made = make_topology(f"gcppubsub://projects/{pubsub_emulator.project}", unique_name, partitions=1)
    yield made
    delete(made)


def kill_one_replica_half_way(
    topology: Topology, replicas: int, subscriber_options: dict[str, object], tmp_path: Path
) -> tuple[Tally, ProduceSummary, list[float], list[float]]:
    """Run `replicas` services on one stream, SIGKILL the first when half is answered; read everything.

    Returns the consumer's tally, what was sent, each replica's answers before the kill, and each
    survivor's answers at the end (from its /metrics).
    """
    # One ONNX Runtime thread each: the replicas share two cores with the producer and the consumer.
    services = [
        ServiceProcess(topology, subscriber_options, tmp_path / f"replica-{i}.log", extra_args=["--threads", "1"])
        for i in range(replicas)
    ]
    for service in services:
        service.wait_healthy()
    summary = ProduceSummary()
    tally = Tally()

    def send() -> None:
        with open_topic(topology.topic(topology.images)) as publisher:
            produce(publisher, labelled_test_images(IMAGES), topology.flavour, rate=RATE, summary=summary)

    producer = threading.Thread(target=send, daemon=True)
    producer.start()
    with open_subscription(topology.predictions_subscription_url, **subscriber_options) as answers:
        read_predictions(answers, tally, until=lambda: len(tally.answered) >= IMAGES // 2, idle_timeout=90)
        before_kill = [service.metric("fashionstream_predictions_out_total") for service in services]
        services[0].proc.kill()
        assert services[0].proc.wait(timeout=10) == -signal.SIGKILL

        def all_answered() -> bool:
            return not producer.is_alive() and set(summary.ids) <= set(tally.answered)

        read_predictions(answers, tally, until=all_answered, idle_timeout=90)
    survivors_at_end = [service.metric("fashionstream_predictions_out_total") for service in services[1:]]
    for service in services[1:]:
        assert service.stop() == 0, service.logs()
    return tally, summary, before_kill, survivors_at_end


def check_everything_answered(
    tally: Tally, summary: ProduceSummary, before_kill: list[float], survivors_at_end: list[float]
) -> None:
    assert summary.confirmed == IMAGES
    missing = set(summary.ids) - set(tally.answered)
    assert not missing, f"{len(missing)} images never answered"
    assert set(tally.answered) == set(summary.ids)
    assert all(n > 0 for n in before_kill), f"a replica had no share of the stream before the kill: {before_kill}"
    gained = [end - start for end, start in zip(survivors_at_end, before_kill[1:], strict=True)]
    assert all(n > 0 for n in gained), f"a survivor served nothing after the kill: {gained}"
    print(
        f"answered {len(tally.answered)} of {IMAGES}; duplicates {tally.duplicates}; "
        f"answers per replica before the kill {before_kill}; survivors' answers after it {gained}"
    )


@pytest.mark.kafka
def test_three_replicas_share_six_partitions_and_survive_a_kill(kafka_topology: Topology, tmp_path: Path) -> None:
    # Short sessions, so the killed replica's partitions move to the survivors within seconds.
    options: dict[str, object] = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000}
    results = kill_one_replica_half_way(kafka_topology, 3, options, tmp_path)
    check_everything_answered(*results)


@pytest.mark.gcp
def test_two_replicas_share_one_subscription_and_survive_a_kill(pubsub_topology: Topology, tmp_path: Path) -> None:
    results = kill_one_replica_half_way(pubsub_topology, 2, {}, tmp_path)
    check_everything_answered(*results)


@pytest.mark.kafka
def test_created_topics_have_enough_partitions_for_replicas(kafka_bootstrap: str, unique_name: Any) -> None:
    """`--create-topics` makes 12 partitions by default (up to 12 replicas get work) at the broker's replication."""
    from confluent_kafka.admin import AdminClient

    from fashionstream.cli import main

    topic = unique_name("images")
    try:
        code = main(["produce", "--broker", f"kafka://{kafka_bootstrap}", "--topic", topic, "--create-topics",
                     "--count", "1", "--no-progress"])  # fmt: skip
        assert code == 0
        metadata = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(topic=topic, timeout=10)
        partitions = metadata.topics[topic].partitions
        assert len(partitions) == 12
        # The broker's default replication factor (1 on this single-broker test cluster) was used.
        assert all(len(p.replicas) == 1 for p in partitions.values())
    finally:
        with contextlib.suppress(Exception):
            admin.delete_topic(Topology(f"kafka://{kafka_bootstrap}").topic(topic))
