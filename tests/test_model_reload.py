"""Replacing the model of a running `fashionstream serve`: mid-stream over real Kafka, refusals, SIGHUP.

The stream test is the promise of hot reload: 5,000 images stream through the service while its
model file is replaced by another exported model (the int8 copy of the shipped one); every image is
answered exactly once, all answers of the old model come before the first of the new one, and a
corrupt model offered afterwards is refused while the new model keeps answering. The predictions
topic has one partition, so the order the consumer reads is the order the service published in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fashionstream.classifier.card import ModelCard
from fashionstream.classifier.embed import embed
from fashionstream.classifier.predictor import shipped_model_path
from fashionstream.pipeline.consumer import Tally, read_predictions
from fashionstream.pipeline.contract import PredictionEvent
from fashionstream.pipeline.producer import ProduceSummary, labelled_test_images, produce
from fashionstream.pipeline.reload import RELOAD_PATH
from fashionstream.pipeline.topology import Topology
from fashionstream.pubsub import admin, open_subscription, open_topic
from service_process import ServiceProcess, no_orphans  # noqa: F401 - the fixture is used by name
from topologies import delete_topology, unique_topology

IMAGES = 5000
RATE = 400.0  # images/s: a ~12 s stream, so both reloads happen while requests are still arriving
MODELS = shipped_model_path().parent
FP32, INT8 = MODELS / "fashion-cnn.onnx", MODELS / "fashion-cnn-int8.onnx"

pytestmark = pytest.mark.usefixtures("no_orphans")


def card_of(onnx: Path) -> Path:
    return onnx.with_name(onnx.name.removesuffix(".onnx") + ".card.json")


def model_id(onnx: Path) -> str:
    card = json.loads(card_of(onnx).read_text())
    return f"{card['name']}@{card['model_sha256'][:12]}"


def install(onnx_bytes: bytes, card: dict[str, Any], target: Path) -> None:
    """Put a model and its card at `target` the way an operator should: each file written aside, then renamed."""
    for path, data in ((target, onnx_bytes), (card_of(target), (json.dumps(card, indent=2) + "\n").encode())):
        aside = path.with_name(path.name + ".new")
        aside.write_bytes(data)
        os.replace(aside, path)


def install_model(source: Path, target: Path) -> None:
    install(source.read_bytes(), json.loads(card_of(source).read_text()), target)


def install_corrupt_model(target: Path) -> None:
    """A cut-off .onnx file with a card that matches it: only loading the graph can tell it is broken."""
    broken = FP32.read_bytes()[: FP32.stat().st_size // 2]
    card = json.loads(card_of(FP32).read_text())
    card["name"] = "fashion-cnn-broken"
    card["model_sha256"] = hashlib.sha256(broken).hexdigest()
    install(broken, card, target)


def post(port: int, path: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=b"", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=150) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def metric_samples(service: ServiceProcess, name: str) -> list[tuple[str, float]]:
    """(labels text, value) of every sample of `name` in the service's /metrics."""
    _, text = service.get("/metrics")
    samples = []
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            head, value = line.rsplit(" ", 1)
            samples.append((head[len(name) :], float(value)))
    return samples


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def kafka_topology(kafka_bootstrap: str, unique_name: Any) -> Iterator[Topology]:
    made = unique_topology(f"kafka://{kafka_bootstrap}", unique_name)
    # Three partitions of images, so the lag gauge has several; one of predictions, so it keeps order.
    for name, partitions in ((made.images, 3), (made.predictions, 1), (made.dead_letters, 1)):
        admin.create_topic(made.topic(name), partitions=partitions)
    yield made
    delete_topology(made)


@pytest.mark.kafka
def test_model_swapped_mid_stream_answers_every_image_once_in_model_order(
    kafka_topology: Topology, tmp_path: Path
) -> None:
    model = tmp_path / "model.onnx"
    install_model(FP32, model)
    old_id, new_id = model_id(FP32), model_id(INT8)
    service = ServiceProcess(
        kafka_topology,
        {"auto.offset.reset": "earliest"},
        tmp_path / "serve.log",
        ["--model", str(model), "--model-poll-interval", "0.5"],
    )
    assert (old_id, 1.0) in [(labels.split('model="', 1)[1].split('"', 1)[0], value)
                             for labels, value in metric_samples(service, "fashionstream_model_info")]  # fmt: skip

    order: list[str] = []  # the model id of each new answer, in the order read
    corrupt_answer: list[tuple[int, dict[str, Any]]] = []
    answered_at_refusal: list[int] = []
    swap_at, corrupt_at = 1500, 3500

    def operator() -> None:
        """Replaces the model file part-way through the stream, then offers a corrupt one over HTTP."""
        wait_for(lambda: len(order) >= swap_at, 120, f"{swap_at} answers")
        install_model(INT8, model)  # the file watcher notices and swaps
        wait_for(lambda: new_id in order[-50:], 60, "answers of the new model")
        wait_for(lambda: len(order) >= corrupt_at, 120, f"{corrupt_at} answers")
        install_corrupt_model(model)
        corrupt_answer.append(post(service.port, RELOAD_PATH))
        answered_at_refusal.append(len(order))

    summary = ProduceSummary()
    tally = Tally()
    with open_subscription(kafka_topology.predictions_subscription_url, **{"auto.offset.reset": "earliest"}) as answers:
        threads = [threading.Thread(target=operator, daemon=True)]
        publisher = open_topic(kafka_topology.topic(kafka_topology.images))

        def send() -> None:
            with publisher:
                produce(publisher, labelled_test_images(IMAGES), kafka_topology.flavour, rate=RATE, summary=summary)

        threads.append(threading.Thread(target=send, daemon=True))
        for thread in threads:
            thread.start()

        def note(event: PredictionEvent) -> None:
            order.append(event.model)

        read_predictions(answers, tally, until=lambda: len(tally.answered) >= IMAGES, idle_timeout=120, on_new=note)
        for thread in threads:
            thread.join(timeout=150)
        # Anything more (a duplicate) would be here within a second or two of the last answer.
        read_predictions(answers, tally, until=lambda: False, idle_timeout=3)

    # Every image answered exactly once in this service life, nothing lost.
    assert summary.failed == 0 and len(summary.ids) == IMAGES
    assert set(tally.answered) == set(summary.ids), service.logs()
    assert tally.duplicates == 0 and tally.invalid == 0
    assert service.metric("fashionstream_duplicates_total") == 0
    assert service.metric("fashionstream_predictions_out_total") == IMAGES

    # Both models answered, the old one strictly before the new one.
    first_new = order.index(new_id)
    assert set(order[:first_new]) == {old_id} and set(order[first_new:]) == {new_id}
    assert swap_at <= first_new < corrupt_at, f"swapped after {first_new} answers"

    # The corrupt model was refused, and the int8 model kept answering after it.
    assert corrupt_answer and corrupt_answer[0][0] == 422, corrupt_answer
    assert corrupt_answer[0][1]["result"] == "refused" and corrupt_answer[0][1]["model"] == new_id
    assert answered_at_refusal[0] < IMAGES, "the refusal came after the stream: nothing shows serving continued"
    reloads = dict(metric_samples(service, "fashionstream_model_reloads_total"))
    assert reloads['{result="swapped"}'] == 1 and reloads['{result="refused"}'] >= 1, reloads
    info = metric_samples(service, "fashionstream_model_info")
    assert len(info) == 1 and f'model="{new_id}"' in info[0][0] and 'quantization="QDQ QInt8"' in info[0][0]
    assert "model reload refused" in service.logs()

    # The lag gauge: one series per partition of images assigned here, back to 0 once all is committed.
    wait_for(
        lambda: (
            {labels for labels, _ in metric_samples(service, "fashionstream_consumer_lag_messages")}
            == {'{partition="0"}', '{partition="1"}', '{partition="2"}'}
            and sum(v for _, v in metric_samples(service, "fashionstream_consumer_lag_messages")) == 0
        ),
        30,
        "a lag of 0 on each of the 3 partitions",
    )
    assert service.stop() == 0
    print(
        f"\n{IMAGES} images at {RATE:.0f}/s: {first_new} answered by {old_id}, {IMAGES - first_new} by {new_id} "
        f"(file replaced after {swap_at}); corrupt model refused after {answered_at_refusal[0]} answers; "
        f"0 duplicates, 0 lost"
    )


def test_sighup_reloads_and_a_model_that_fails_its_check_is_refused(tmp_path: Path) -> None:
    """SIGHUP with file polling off; the embedded broker is enough, no message has to flow."""
    model = tmp_path / "model.onnx"
    install_model(FP32, model)
    topology = Topology("mem://")
    service = ServiceProcess(
        topology,
        {},
        tmp_path / "serve.log",
        ["--model", str(model), "--model-poll-interval", "0", "--create-topics"],
    )
    service.wait_healthy()

    def serving() -> str:
        ((labels, _),) = metric_samples(service, "fashionstream_model_info")
        return labels.split('model="', 1)[1].split('"', 1)[0]

    assert serving() == model_id(FP32)
    install_model(INT8, model)
    time.sleep(1.0)
    assert serving() == model_id(FP32), "polling is off: only a signal or a POST reloads"
    service.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: serving() == model_id(INT8), 30, "the SIGHUP reload")
    assert service.get("/healthz")[0] == 200 and json.loads(service.get("/healthz")[1])["model"] == model_id(INT8)

    # The same files again: nothing to swap.
    assert post(service.port, RELOAD_PATH) == (200, {"result": "unchanged", "model": model_id(INT8)})

    # A model whose card does not fit the service (3 classes): refused by the check, int8 serves on.
    # Its file carries the same 3 classes in its metadata, so the pair is consistent and loads.
    three = tmp_path / "three-classes.onnx"
    shutil.copy(FP32, three)
    card = ModelCard.read(card_of(FP32))
    card = embed(three, dataclasses.replace(card, class_names=card.class_names[:3]))
    install(three.read_bytes(), card.to_dict(), model)
    code, answer = post(service.port, RELOAD_PATH)
    assert code == 422 and answer["model"] == model_id(INT8) and "3 classes" in answer["error"], answer
    assert serving() == model_id(INT8)

    # A card that no longer matches its model file: refused at load.
    shutil.copy(card_of(INT8), card_of(model))
    code, answer = post(service.port, RELOAD_PATH)
    assert code == 422 and "does not match its card" in answer["error"], answer
    assert service.proc.poll() is None and service.stop() == 0
