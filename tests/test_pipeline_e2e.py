"""The whole pipeline over each broker with the shipped model: producer -> service -> consumer.

Real brokers (mem, Kafka, the Pub/Sub emulator via the `backend` fixture), the
real Fashion-MNIST test set and the real exported model. Topic names are unique
per test, so tests do not see each other's messages.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest

from fashionstream.classifier.predictor import Prediction, Predictor
from fashionstream.pipeline import cloudevents, contract
from fashionstream.pipeline.cloudevents import Flavour
from fashionstream.pipeline.config import DemoConfig, ServiceConfig
from fashionstream.pipeline.demo import run_demo
from fashionstream.pipeline.handler import OnnxModelHandler, Pixels
from fashionstream.pipeline.metrics import Health, MetricsServer, ServiceMetrics
from fashionstream.pipeline.producer import labelled_test_images, png_bytes
from fashionstream.pipeline.service import ModelService
from fashionstream.pipeline.topology import Topology
from fashionstream.pubsub import admin, open_subscription, open_topic
from hostile_inputs import huge_dimension_png


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """The commands point the root logger at the (captured) stderr; put it back so later tests' threads
    do not log into a closed capture stream."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="module")
def model() -> Predictor:
    """The shipped model (fashion-cnn.onnx + card): its id and card, which the served copy must match."""
    return Predictor.load()


@pytest.fixture
def topology(backend: Any, unique_name: Any) -> Iterator[Topology]:
    """Unique topic and subscription names on the backend; deleted afterwards."""
    made = Topology(
        backend.broker_url,
        images=unique_name("images"),
        predictions=unique_name("predictions"),
        dead_letters=unique_name("images-dlq"),
        service_subscription=unique_name("model-service"),
        consumer_subscription=unique_name("consumer"),
    )
    yield made
    for topic, sub in ((made.images, made.service_subscription),):
        with contextlib.suppress(Exception):
            admin.delete_subscription(made.subscription(topic, sub))
    for name in (made.images, made.predictions, made.dead_letters):
        with contextlib.suppress(Exception):
            admin.delete_topic(made.topic(name))


def card_accuracy(model: Predictor) -> float:
    return model.card.test.accuracy


# --------------------------------------------------------------------------- 2,000 images end to end


def test_two_thousand_test_images_end_to_end(backend: Any, topology: Topology, model: Predictor) -> None:
    config = DemoConfig(
        broker=topology.broker, source="test", count=2000, subscriber_option=backend.subscriber_options, timeout=180
    )
    result = run_demo(config, topology=topology)
    assert result.sent == 2000
    assert result.answered == 2000, f"lost {result.lost}"
    assert result.lost == 0 and result.dead_lettered == 0
    # one to one: every sent id answered, no answer for anything not sent
    assert set(result.tally.answered) == set(result.sent_ids)
    assert len(set(result.sent_ids)) == 2000
    for event in result.tally.answered.values():
        assert event.model == model.model_id
        assert len(event.prediction.probabilities) == 10
        assert abs(sum(event.prediction.probabilities) - 1.0) < 1e-3
    assert result.accuracy is not None
    assert abs(result.accuracy - card_accuracy(model)) <= 0.015, (result.accuracy, card_accuracy(model))
    summary = result.as_dict()
    assert set(summary) == {
        "sent", "answered", "lost", "duplicates", "dead_lettered", "accuracy", "throughput_img_s", "latency_ms"
    }  # fmt: skip
    assert set(summary["latency_ms"]) == {"p50", "p95", "p99"}
    assert summary["latency_ms"]["p50"] is not None and summary["throughput_img_s"] > 0


@pytest.mark.kafka
def test_json_form_round_trips_over_kafka(kafka_bootstrap: str, unique_name: Any, model: Predictor) -> None:
    topology = Topology(
        f"kafka://{kafka_bootstrap}",
        images=unique_name("images"),
        predictions=unique_name("predictions"),
        dead_letters=unique_name("images-dlq"),
        service_subscription=unique_name("model-service"),
    )
    result = run_demo(DemoConfig(broker=topology.broker, count=300, format="json", timeout=120), topology=topology)
    assert result.answered == 300 and result.lost == 0 and result.dead_lettered == 0
    assert set(result.tally.answered) == set(result.sent_ids)
    assert result.accuracy is not None and result.accuracy > card_accuracy(model) - 0.05
    # What went over the wire really was the JSON form {id, image}, no CloudEvents attributes.
    with open_subscription(topology.subscription(topology.images, unique_name("inspect"))) as inspect:
        message = inspect.receive(timeout=30)
        message.ack()
    assert message.attributes == {}
    body = json.loads(message.data)
    assert set(body) == {"id", "image"} and body["id"] in set(result.sent_ids)
    assert base64.b64decode(body["image"]).startswith(b"\x89PNG")
    for name in (topology.images, topology.predictions, topology.dead_letters):
        with contextlib.suppress(Exception):
            admin.delete_topic(topology.topic(name))


def test_demo_command_prints_exactly_the_promised_keys(capsys: pytest.CaptureFixture[str]) -> None:
    from fashionstream.pipeline.cli import demo_main

    assert demo_main(["--count", "200", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {
        "sent", "answered", "lost", "duplicates", "dead_lettered", "accuracy", "throughput_img_s", "latency_ms"
    }  # fmt: skip
    assert (doc["sent"], doc["answered"], doc["lost"], doc["dead_lettered"]) == (200, 200, 0, 0)


# --------------------------------------------------------------------------- hostile input


def hostile_messages(flavour: Flavour) -> list[tuple[str, contract.EncodedMessage]]:
    # Noise compresses badly: a long IDAT chunk, so the cut lands inside the pixel data, past the header.
    noisy_png = png_bytes(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8))
    ce = contract.encode_request
    return [
        ("empty", ce(b"", flavour)),
        ("not_an_image", ce(b"this is not an image at all", flavour)),
        ("truncated", ce(noisy_png[: len(noisy_png) * 2 // 3], flavour)),
        ("too_large", ce(huge_dimension_png(), flavour)),
        ("bad_json", contract.EncodedMessage(b'{"id": "x", "image": ', {}, "bad-json-key")),
        ("too_large", ce(b"\x89PNG" + bytes(300 * 1024), flavour)),
        ("bad_shape", ce(bytes(100), flavour, content_type=contract.RAW)),
        ("unsupported_content_type", ce(b"<html></html>", flavour, content_type="text/html")),
    ]


def collect(subscription: Any, want: int, timeout: float) -> list[Any]:
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        for message in subscription.receive_batch(max_messages=500, timeout=0.5):
            message.ack()
            got.append(message)
    return got


def scrape(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def metric(text: str, name: str, labels: str = "") -> float:
    for line in text.splitlines():
        if line.startswith(f"{name}{labels} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.split()[-1])
    return 0.0


def test_hostile_messages_go_to_the_dead_letter_topic_and_the_service_stays_up(
    backend: Any, topology: Topology, unique_name: Any
) -> None:
    checker_sub = unique_name("checker")
    dlq_sub = unique_name("dlq-reader")
    topology.create(
        subscriptions=(
            (topology.images, topology.service_subscription),
            (topology.predictions, checker_sub),
            (topology.dead_letters, dlq_sub),
        )
    )
    flavour = topology.flavour
    valid = list(labelled_test_images(60))
    hostile = hostile_messages(flavour)
    metrics, health = ServiceMetrics(), Health()
    server = MetricsServer(metrics.registry, health, "127.0.0.1", 0).start()
    stop = threading.Event()
    opts = backend.subscriber_options
    config = ServiceConfig(
        broker=topology.broker,
        images_topic=topology.images,
        predictions_topic=topology.predictions,
        dead_letter_topic=topology.dead_letters,
        subscription=topology.service_subscription,
        max_batch_size=16,
    )
    with (
        open_subscription(topology.images_subscription_url, **opts) as service_in,
        open_topic(topology.topic(topology.predictions)) as predictions_out,
        open_topic(topology.topic(topology.dead_letters)) as dead_out,
        open_subscription(topology.subscription(topology.predictions, checker_sub), **opts) as predictions_in,
        open_subscription(topology.subscription(topology.dead_letters, dlq_sub), **opts) as dead_in,
        open_topic(topology.topic(topology.images)) as images_out,
    ):
        service = ModelService(
            config, OnnxModelHandler(), service_in, predictions_out, dead_out, metrics=metrics, health=health
        )
        worker = threading.Thread(target=service.run, args=(stop,), daemon=True)
        worker.start()
        sent_valid: list[str] = []
        expected_reason: dict[str, str] = {}
        futures = []
        # Interleave: hostile messages between valid ones, so they share batches with good neighbours.
        for index, image in enumerate(valid):
            encoded = contract.encode_request(image.data, flavour, expected_label=image.expected_label)
            assert encoded.key is not None
            sent_valid.append(encoded.key)
            futures.append(images_out.send(encoded.data, encoded.attributes, key=encoded.key))
            if index % 7 == 3 and hostile:
                reason, bad = hostile.pop()
                assert bad.key is not None
                expected_reason[bad.key] = reason
                futures.append(images_out.send(bad.data, bad.attributes, key=bad.key))
        assert not hostile
        # Raw grey pixels (784 bytes, application/octet-stream) are a valid request too.
        from fashionstream.classifier.fashion_mnist_files import load_split

        pixels, _ = load_split("test")
        for raw in pixels[100:103]:
            encoded = contract.encode_request(raw.tobytes(), flavour, content_type=contract.RAW)
            assert encoded.key is not None
            sent_valid.append(encoded.key)
            futures.append(images_out.send(encoded.data, encoded.attributes, key=encoded.key))
        for future in futures:
            future.result(timeout=30)

        predictions = collect(predictions_in, len(sent_valid), timeout=90)
        letters = collect(dead_in, len(expected_reason), timeout=60)
        assert worker.is_alive(), "the service died on hostile input"
        ok, doc = health.status()
        assert ok and doc["status"] == "ok"
        status, body = scrape(server.port, "/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"
        # Counters agree with what was sent (scraped while the service still runs).
        deadline = time.monotonic() + 10
        text = ""
        while time.monotonic() < deadline:
            status, raw = scrape(server.port, "/metrics")
            text = raw.decode()
            if metric(text, "fashionstream_acked_total") >= len(futures):
                break
            time.sleep(0.1)
        stop.set()
        worker.join(timeout=10)
    server.close()

    answered = {contract.decode_prediction(m.data).id for m in predictions}
    assert answered == set(sent_valid)
    got_reasons = {}
    for letter in letters:
        key = letter.key
        got_reasons[key] = letter.attributes["error"]
        assert letter.attributes["error_detail"]
        assert cloudevents.attribute(letter.attributes, "id") == key  # the request's id, or its key without one
        assert cloudevents.attribute(letter.attributes, "type") == contract.DEAD_LETTER_TYPE
    assert got_reasons == expected_reason
    empty_letter = next(m for m in letters if m.attributes["error"] == "empty")
    assert empty_letter.data == b""
    truncated = next(m for m in letters if m.attributes["error"] == "truncated")
    assert truncated.data.startswith(b"\x89PNG")  # the original body, unchanged

    assert status == 200
    total = len(sent_valid) + len(expected_reason)
    assert metric(text, "fashionstream_messages_in_total") == total
    assert metric(text, "fashionstream_predictions_out_total") == len(sent_valid)
    assert metric(text, "fashionstream_acked_total") == total
    for reason in set(expected_reason.values()):
        count = sum(1 for r in expected_reason.values() if r == reason)
        assert metric(text, "fashionstream_dead_lettered_total", f'{{reason="{reason}"}}') == count
    assert metric(text, "fashionstream_batch_size_count") >= 1
    assert metric(text, "fashionstream_end_to_end_latency_seconds_count") == len(sent_valid)


class PoisonedHandler(OnnxModelHandler):
    """The real model, except that it raises whenever a batch holds an all-white image.

    A stand-in for an input that crashes the runtime: the service must isolate
    it by bisection and still answer its neighbours with real predictions.
    """

    calls = 0

    def run_inference(self, batch: Sequence[Pixels], model: Predictor) -> list[Prediction]:
        self.calls += 1
        if any(int(p.min()) == 255 for p in batch):
            raise RuntimeError("runtime crashed on this input")
        return super().run_inference(batch, model)


def test_a_model_failure_is_isolated_to_its_input(unique_name: Any) -> None:
    topology = Topology("mem://", images=unique_name("images"), predictions=unique_name("predictions"),
                        dead_letters=unique_name("dlq"))  # fmt: skip
    topology.create(
        subscriptions=((topology.images, "svc"), (topology.predictions, "out"), (topology.dead_letters, "dl"))
    )
    poisoned = PoisonedHandler()
    config = ServiceConfig(broker="mem://", images_topic=topology.images, predictions_topic=topology.predictions,
                           dead_letter_topic=topology.dead_letters, subscription="svc", max_batch_size=32,
                           max_wait_ms=200)  # fmt: skip
    images = [png_bytes(np.full((28, 28), 30 * i % 250, dtype=np.uint8)) for i in range(31)]
    images.insert(13, png_bytes(np.full((28, 28), 255, dtype=np.uint8)))
    stop = threading.Event()
    with (
        open_subscription(topology.subscription(topology.images, "svc")) as service_in,
        open_topic(topology.topic(topology.predictions)) as out,
        open_topic(topology.topic(topology.dead_letters)) as dead,
        open_subscription(topology.subscription(topology.predictions, "out")) as answers,
        open_subscription(topology.subscription(topology.dead_letters, "dl")) as letters_in,
        open_topic(topology.topic(topology.images)) as images_out,
    ):
        ids = []
        for data in images:
            encoded = contract.encode_request(data, Flavour.PUBSUB)
            ids.append(encoded.key)
            images_out.send(encoded.data, encoded.attributes, key=encoded.key)
        images_out.flush(10)
        service = ModelService(config, poisoned, service_in, out, dead)
        worker = threading.Thread(target=service.run, args=(stop,), daemon=True)
        worker.start()
        predictions = collect(answers, 31, timeout=30)
        letters = collect(letters_in, 1, timeout=30)
        stop.set()
        worker.join(timeout=10)
    assert {contract.decode_prediction(m.data).id for m in predictions} == set(ids) - {ids[13]}
    assert [(m.key, m.attributes["error"]) for m in letters] == [(ids[13], "model_error")]
    assert "runtime crashed" in letters[0].attributes["error_detail"]
    assert poisoned.calls < 32  # bisection, not one model call per image
