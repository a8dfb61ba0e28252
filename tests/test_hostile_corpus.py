"""The hostile corpus (tests/hostile_inputs.py): its expectations against the decode path, then every case
through `fashionstream serve` on Kafka and on the Pub/Sub emulator, each getting exactly its outcome.

On the brokers: every request is answered (the answered kinds, a duplicated id twice) or dead-lettered with
the expected reason, none lost and none extra, and the lossless image forms get the label the model gives
their 28×28 grey original.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fashionstream.classifier.predictor import Predictor
from fashionstream.pipeline import contract
from fashionstream.pipeline.cloudevents import Flavour
from fashionstream.pipeline.handler import OnnxModelHandler
from fashionstream.pipeline.topology import Topology
from fashionstream.pubsub import open_subscription, open_topic
from fashionstream.reasons import InvalidInput, Reason
from hostile_inputs import ANSWERED, Case, corpus, expected_counts
from service_process import ServiceProcess, no_orphans  # noqa: F401 - the fixture is used by name
from topologies import delete_topology, unique_topology

# --------------------------------------------------------------------------- the corpus itself


def test_the_corpus_is_large_varied_and_covers_every_reason() -> None:
    for flavour in Flavour:
        cases = corpus(flavour)
        kinds = {case.kind for case in cases}
        assert len(cases) >= 1000 and len(kinds) >= 40, (len(cases), len(kinds))
        # Every reason a request's content can earn: a model failure needs a broken model, and too many
        # attempts needs failures outside the request (tests/test_poison_messages.py), not a bad request.
        earned_elsewhere = {Reason.MODEL_ERROR, Reason.TOO_MANY_ATTEMPTS}
        assert {case.expected for case in cases} == {ANSWERED} | {r.value for r in Reason} - earned_elsewhere
        keys = Counter(case.key for case in cases)
        assert {case.kind for case in cases if keys[case.key] > 1} == {"duplicate_id"}


def _outcome(case: Case) -> str:
    """What the service's path (envelope, then image) makes of `case`, read as its broker would deliver it."""
    attributes = dict(case.attributes)
    if case.raw_id is not None:  # the Kafka driver reads header bytes leniently, as UTF-8 with replacement
        attributes["ce_id"] = case.raw_id.decode("utf-8", "replace")
    try:
        _handler().to_pixels(contract.decode_request(case.body, attributes))
    except InvalidInput as error:
        return error.reason.value
    return ANSWERED


@functools.cache
def _handler() -> OnnxModelHandler:
    return OnnxModelHandler()


@pytest.mark.parametrize("flavour", list(Flavour))
def test_each_expectation_matches_the_decode_path(flavour: Flavour) -> None:
    wrong = {case.key: (case.expected, got) for case in corpus(flavour) if (got := _outcome(case)) != case.expected}
    assert not wrong, wrong


# --------------------------------------------------------------------------- through serve, on real brokers


@pytest.fixture
def topology(external_backend: Any, unique_name: Any) -> Iterator[Topology]:
    made = unique_topology(external_backend.broker_url, unique_name)
    subscriptions = (
        (made.images, made.service_subscription),
        (made.predictions, made.consumer_subscription),
        (made.dead_letters, f"{made.consumer_subscription}-dlq"),
    )
    made.create(subscriptions=subscriptions)
    yield made
    delete_topology(made, subscriptions)


def _send(backend: Any, topology: Topology, cases: list[Case]) -> None:
    if backend.name == "kafka":
        # A raw producer: only it can put header bytes that are not UTF-8 on the wire.
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": backend.kafka_servers, "message.max.bytes": 2 * 1024 * 1024})
        for position, case in enumerate(cases):
            headers = [(name, value.encode()) for name, value in case.attributes.items()]
            if case.raw_id is not None:
                headers = [(name, case.raw_id if name == "ce_id" else value) for name, value in headers]
            producer.produce(topology.images, value=case.body, key=case.key.encode(), headers=headers)
            if position % 50 == 0:
                producer.poll(0)
        assert producer.flush(60) == 0
        return
    with open_topic(topology.topic(topology.images)) as publisher:
        futures = [publisher.send(case.body, case.attributes, key=case.key) for case in cases]
        for future in futures:
            future.result(timeout=60)


def _drain(subscription: Any, outcome_of: Any, want: int, timeout: float) -> list[tuple[str, str, Any]]:
    """(key, outcome, message) for each message read, until `want` are in or nothing came for `timeout` s."""
    got: list[tuple[str, str, Any]] = []
    last = time.monotonic()
    while len(got) < want and time.monotonic() - last < timeout:
        for message in subscription.receive_batch(max_messages=500, timeout=0.5):
            message.ack()
            got.append((message.key, outcome_of(message), message))
            last = time.monotonic()
    return got


@pytest.mark.usefixtures("no_orphans")
def test_serve_gives_every_case_its_outcome(external_backend: Any, topology: Topology, tmp_path: Path) -> None:
    cases = corpus(topology.flavour)
    expected = expected_counts(cases)
    answers_due = sum(counts[ANSWERED] for counts in expected.values())
    service = ServiceProcess(topology, external_backend.subscriber_options, tmp_path / "serve.log")
    _send(external_backend, topology, cases)
    options = external_backend.subscriber_options
    with (
        open_subscription(topology.predictions_subscription_url, **options) as answers,
        open_subscription(
            topology.subscription(topology.dead_letters, f"{topology.consumer_subscription}-dlq"), **options
        ) as letters,
    ):
        answered = _drain(answers, lambda m: ANSWERED, answers_due, timeout=30)
        dead = _drain(letters, lambda m: m.attributes["error"], len(cases) - answers_due, timeout=15)
        time.sleep(1.0)  # anything answered or dead-lettered twice would show up now
        answered += _drain(answers, lambda m: ANSWERED, 10**9, timeout=1)
        dead += _drain(letters, lambda m: m.attributes["error"], 10**9, timeout=1)
    assert service.stop() == 0, service.logs()

    got: dict[str, Counter[str]] = {}
    for key, outcome, _ in answered + dead:
        got.setdefault(key, Counter())[outcome] += 1
    wrong = {key: (dict(want), dict(got.get(key, {}))) for key, want in expected.items() if got.get(key) != want}
    extra = set(got) - set(expected)
    assert not wrong and not extra, f"{len(wrong)} wrong, e.g. {dict(list(wrong.items())[:10])}; extra {extra}"
    # Every dead letter explains itself, and answers name the request they answer.
    assert all(message.attributes.get("error_detail") for _, _, message in dead)
    predictions = {key: contract.decode_prediction(message.data) for key, _, message in answered}
    assert all(prediction.id == key for key, prediction in predictions.items())
    # Lossless forms (16-bit, alpha, palette, raw, JSON, structured ...) are read as their 8-bit original.
    model = Predictor.load()
    mislabelled = {
        case.key: (predictions[case.key].prediction.label, model.predict(case.same_as).label)
        for case in cases
        if case.same_as is not None and predictions[case.key].prediction.label != model.predict(case.same_as).label
    }
    assert not mislabelled, mislabelled
