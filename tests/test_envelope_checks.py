"""Envelope checks: unknown event types and spec versions, JSON nested too deep, image formats decided by
content, and request ids that are not UTF-8; each refused with its reason, never answered.

Contract-level unit tests first, then one end-to-end run of `fashionstream serve` on Kafka (the only
broker whose headers can carry bytes that are not UTF-8) with one request of each hostile kind.
"""

from __future__ import annotations

import base64
import io
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from fashionstream.classifier.fashion_mnist_files import load_split
from fashionstream.classifier.predictor import Predictor
from fashionstream.pipeline import contract
from fashionstream.pipeline.cloudevents import Flavour
from fashionstream.pipeline.contract import InvalidRequest
from fashionstream.pipeline.handler import OnnxModelHandler
from fashionstream.pipeline.producer import png_bytes
from fashionstream.pipeline.topology import Topology
from fashionstream.pubsub import open_subscription
from fashionstream.reasons import InvalidInput, Reason
from service_process import ServiceProcess, no_orphans  # noqa: F401 - the fixture is used by name
from topologies import delete_topology, unique_topology

DEEP = 10_000
NOT_OURS = "com.example.not-an-image.v9"


def _reason(data: bytes, attributes: dict[str, str]) -> Reason:
    with pytest.raises(InvalidRequest) as caught:
        contract.decode_request(data, attributes)
    assert caught.value.detail  # every reason comes with a human explanation
    return caught.value.reason


def _request_path_reason(data: bytes, attributes: dict[str, str]) -> Reason | None:
    """What the service does with a request: decode the envelope, then the image; None when it would answer."""
    try:
        OnnxModelHandler().to_pixels(contract.decode_request(data, attributes))
    except InvalidInput as error:
        return error.reason
    return None


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def garment() -> np.ndarray:
    first: np.ndarray = load_split("test")[0][0]
    return first


def structured(**members: object) -> bytes:
    document = {"specversion": "1.0", "id": "s-1", "type": contract.REQUEST_TYPE, "source": "test"}
    document.update({"data_base64": base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()}, **members)
    return json.dumps({k: v for k, v in document.items() if v is not None}).encode()


STRUCTURED = {"content-type": "application/cloudevents+json"}


# --------------------------------------------------------------------------- unknown type or spec version


@pytest.mark.parametrize("flavour", list(Flavour))
def test_unknown_event_types_and_spec_versions_are_refused(flavour: Flavour) -> None:
    p = flavour.prefix
    ok = contract.encode_request(b"img", flavour, request_id="r").attributes
    assert contract.decode_request(b"img", ok).id == "r"
    for name, value in (("type", NOT_OURS), ("type", "dev.fashionstream.image.v2"), ("type", ""),
                        ("specversion", "0.3"), ("specversion", "2.0")):  # fmt: skip
        assert _reason(b"img", {**ok, f"{p}{name}": value}) is Reason.UNSUPPORTED_EVENT, (name, value)
    # An unknown event is refused as such before anything else about it is judged.
    assert _reason(b"", {**ok, f"{p}type": NOT_OURS, f"{p}id": ""}) is Reason.UNSUPPORTED_EVENT
    # A request that omits type and specversion is read as version 1, as before.
    minimal = {f"{p}id": "m", "content-type": "image/png"}
    assert contract.decode_request(b"img", minimal).id == "m"


def test_structured_events_are_checked_alike() -> None:
    assert contract.decode_request(structured(), STRUCTURED).id == "s-1"
    assert _reason(structured(type=NOT_OURS), STRUCTURED) is Reason.UNSUPPORTED_EVENT
    assert _reason(structured(specversion="0.3"), STRUCTURED) is Reason.UNSUPPORTED_EVENT
    for not_text in (0.3, 1.0, 1, ["1.0"], {"v": "1.0"}):  # CloudEvents attributes are strings
        assert _reason(structured(specversion=not_text), STRUCTURED) is Reason.UNSUPPORTED_EVENT, not_text
    assert _reason(structured(type=["a" * 900]), STRUCTURED) is Reason.UNSUPPORTED_EVENT
    assert contract.decode_request(structured(type=None, specversion=None), STRUCTURED).id == "s-1"


def test_a_new_contract_version_is_accepted_once_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    attributes = {**contract.encode_request(b"img", Flavour.KAFKA).attributes, "ce_type": "dev.fashionstream.image.v2"}
    assert _reason(b"img", attributes) is Reason.UNSUPPORTED_EVENT
    monkeypatch.setattr(contract, "REQUEST_TYPES", (contract.REQUEST_TYPE, "dev.fashionstream.image.v2"))
    assert contract.decode_request(b"img", attributes).image == b"img"


# --------------------------------------------------------------------------- JSON nested too deep


def test_json_nested_too_deep_is_bad_json() -> None:
    nested = b"[" * DEEP + b"]" * DEEP
    ce = contract.encode_request(b"x", Flavour.KAFKA, request_id="r").attributes
    assert _reason(b'{"id": "d", "image": ' + nested + b"}", {}) is Reason.BAD_JSON  # the JSON form
    assert _reason(nested, {}) is Reason.BAD_JSON
    assert _reason(b'{"id": "d", "image": ' + nested + b"}", {**ce, "content-type": "application/json"}) is (
        Reason.BAD_JSON
    )
    assert _reason(b'{"id": "d", "data_base64": ' + nested + b"}", STRUCTURED) is Reason.BAD_JSON
    with pytest.raises(ValueError):  # a consumer reading a hostile prediction gets a ValueError, not a crash
        contract.decode_prediction(nested)


# --------------------------------------------------------------------------- image formats, by content


@pytest.mark.parametrize("fmt", ["GIF", "BMP"])
def test_an_image_format_is_judged_by_content_whatever_its_label(garment: np.ndarray, fmt: str) -> None:
    data = _encode(Image.fromarray(garment), fmt)
    honest = f"image/{fmt.lower()}"
    reasons = {
        label: _request_path_reason(
            data, dict(contract.encode_request(data, Flavour.KAFKA, content_type=label).attributes)
        )
        for label in (honest, contract.PNG, contract.JPEG)
    }
    reasons["json form"] = _request_path_reason(contract.encode_json_request(data).data, {})
    assert set(reasons.values()) == {Reason.UNSUPPORTED_CONTENT_TYPE}, reasons


def test_png_and_jpeg_are_answered_under_either_label(garment: np.ndarray) -> None:
    for data in (
        png_bytes(garment),
        _encode(Image.fromarray(garment), "PNG"),
        _encode(Image.fromarray(garment), "JPEG"),
    ):
        for label in (contract.PNG, contract.JPEG):
            attributes = dict(contract.encode_request(data, Flavour.PUBSUB, content_type=label).attributes)
            assert _request_path_reason(data, attributes) is None, label


# --------------------------------------------------------------------------- ids that are not UTF-8


def test_request_ids_that_are_not_utf8_are_refused() -> None:
    ce = contract.encode_request(b"img", Flavour.KAFKA, request_id="r").attributes
    as_kafka_decodes_it = b"\xff\xfe-id".decode("utf-8", "replace")  # how undecodable header bytes arrive
    assert "\ufffd" in as_kafka_decodes_it
    assert _reason(b"img", {**ce, "ce_id": as_kafka_decodes_it}) is Reason.BAD_ATTRIBUTES
    assert _reason(b"img", {**ce, "ce_id": "a\udcff"}) is Reason.BAD_ATTRIBUTES  # a lone surrogate
    image = base64.b64encode(b"\x89PNG").decode()
    assert _reason(json.dumps({"id": "\udc80x", "image": image}).encode(), {}) is Reason.BAD_ATTRIBUTES
    assert _reason(structured(id="\ufffd"), STRUCTURED) is Reason.BAD_ATTRIBUTES
    assert _reason(json.dumps({"id": ["a", ["b"]], "image": image}).encode(), {}) is Reason.BAD_ATTRIBUTES
    assert contract.decode_request(json.dumps({"id": 42, "image": image}).encode(), {}).id == "42"
    assert contract.decode_request(b"img", {**ce, "ce_id": "größe-✓"}).id == "größe-✓"  # any valid UTF-8 is fine


# --------------------------------------------------------------------------- end to end


def dead_letter_reader(topology: Topology) -> str:
    return f"{topology.consumer_subscription}-dlq"


@pytest.fixture
def topology(external_backend: Any, unique_name: Any) -> Iterator[Topology]:
    made = unique_topology(external_backend.broker_url, unique_name)
    made.create(
        subscriptions=(
            (made.images, made.service_subscription),
            (made.predictions, made.consumer_subscription),
            (made.dead_letters, dead_letter_reader(made)),
        )
    )
    yield made
    delete_topology(made, [(made.dead_letters, dead_letter_reader(made))])


Headers = list[tuple[str, str | bytes | None]]  # what a Kafka producer takes


def _kafka_headers(attributes: dict[str, str]) -> Headers:
    return [(name, value.encode()) for name, value in attributes.items()]


def _collect(subscription: Any, keys: set[str], timeout: float) -> dict[str, Any]:
    got: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    while not keys <= set(got) and time.monotonic() < deadline:
        for message in subscription.receive_batch(max_messages=100, timeout=0.5):
            message.ack()
            got[message.key] = message
    return got


@pytest.mark.usefixtures("no_orphans")
@pytest.mark.parametrize("external_backend", [pytest.param("kafka", marks=pytest.mark.kafka)], indirect=True)
def test_serve_dead_letters_each_hostile_envelope_and_answers_the_rest(
    external_backend: Any, topology: Topology, tmp_path: Path
) -> None:
    from confluent_kafka import Producer

    images, labels = load_split("test")
    flavour = Flavour.KAFKA
    ce = contract.encode_request
    garment = Image.fromarray(images[0])
    sixteen_bit = _encode(Image.fromarray(images[0].astype(np.uint16) * 257), "PNG")
    nested = b"[" * DEEP + b"]" * DEEP
    hostile: dict[str, tuple[str, bytes, Headers]] = {}  # key -> (reason, body, headers)

    def add(key: str, reason: str, body: bytes, attributes: dict[str, str], raw_id: bytes | None = None) -> None:
        headers = _kafka_headers(attributes)
        if raw_id is not None:  # header bytes no text encoding produces: only a raw Kafka producer sends them
            headers = [(name, raw_id if name == "ce_id" else value) for name, value in headers]
        hostile[key] = (reason, body, headers)

    def attrs(body: bytes, key: str, **kw: Any) -> dict[str, str]:
        return dict(ce(body, flavour, request_id=key, **kw).attributes)

    png = png_bytes(images[1])
    add("h-type", "unsupported_event", png, {**attrs(png, "h-type"), "ce_type": NOT_OURS})
    add("h-specversion", "unsupported_event", png, {**attrs(png, "h-specversion"), "ce_specversion": "0.3"})
    add("h-deep-json", "bad_json", b'{"id": "h-deep-json", "image": ' + nested + b"}", {})
    add("h-deep-structured", "bad_json", b'{"id": "x", "data_base64": ' + nested + b"}", dict(STRUCTURED))
    gif, bmp = _encode(garment, "GIF"), _encode(garment, "BMP")
    add("h-gif-as-png", "unsupported_content_type", gif, attrs(gif, "h-gif-as-png"))
    add("h-gif-as-gif", "unsupported_content_type", gif, attrs(gif, "h-gif-as-gif", content_type="image/gif"))
    add("h-bmp-as-png", "unsupported_content_type", bmp, attrs(bmp, "h-bmp-as-png"))
    add("h-id-not-utf8", "bad_attributes", png, attrs(png, "h-id-not-utf8"), raw_id=b"\xff\xfe-not-utf8")
    tiny = _encode(Image.new("L", (1, 1), 255), "PNG")
    add("h-one-pixel", "bad_shape", tiny, attrs(tiny, "h-one-pixel"))

    valid: dict[str, tuple[bytes, Headers]] = {}
    for index in range(20):
        body = png_bytes(images[index])
        valid[f"ok-{index}"] = (body, _kafka_headers(attrs(body, f"ok-{index}", expected_label=int(labels[index]))))
    valid["ok-16-bit"] = (sixteen_bit, _kafka_headers(attrs(sixteen_bit, "ok-16-bit")))

    service = ServiceProcess(topology, external_backend.subscriber_options, tmp_path / "serve.log")
    producer = Producer({"bootstrap.servers": external_backend.kafka_servers})
    requests = [(key, body, headers) for key, (body, headers) in valid.items()]
    requests += [(key, body, headers) for key, (_, body, headers) in hostile.items()]
    random.Random(0).shuffle(requests)  # hostile requests between valid ones, sharing their batches
    for position, (key, body, headers) in enumerate(requests):
        producer.produce(topology.images, value=body, key=key.encode(), headers=headers)
        if position % 5 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0

    options = external_backend.subscriber_options
    with (
        open_subscription(topology.predictions_subscription_url, **options) as answers,
        open_subscription(
            topology.subscription(topology.dead_letters, dead_letter_reader(topology)), **options
        ) as letters,
    ):
        answered = _collect(answers, set(valid), timeout=90)
        dead = _collect(letters, set(hostile), timeout=30)
        time.sleep(1.0)  # anything wrongly answered or dead-lettered late would show up now
        answered.update(_collect(answers, set(), timeout=0))
        dead.update(_collect(letters, set(), timeout=0))
    assert service.stop() == 0, service.log_path.read_text()[-4000:]

    assert set(answered) == set(valid), f"answered {sorted(answered)}, expected {sorted(valid)}"
    assert {key: message.attributes["error"] for key, message in dead.items()} == {
        key: reason for key, (reason, _, _) in hostile.items()
    }, service.log_path.read_text()[-4000:]
    assert dead["h-gif-as-png"].data == gif  # the original body, for whoever looks into it
    predictions = {key: contract.decode_prediction(message.data) for key, message in answered.items()}
    right = sum(predictions[f"ok-{index}"].correct is True for index in range(20))
    assert right >= 17, right
    # The 16-bit image is answered as its 8-bit twin is, not as a silhouette.
    assert predictions["ok-16-bit"].prediction.label == Predictor.load().predict(images[0]).label
