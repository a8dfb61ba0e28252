"""The message contract: CloudEvents binary mode per broker, the original JSON form, dead-letter reasons."""

from __future__ import annotations

import base64
import json

import pytest

from fashionstream.pipeline import contract
from fashionstream.pipeline.contract import Flavour, InvalidRequest, Prediction

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("broker", "flavour", "prefix"),
    [
        ("kafka://127.0.0.1:9092", Flavour.KAFKA, "ce_"),
        ("gcppubsub://projects/p", Flavour.PUBSUB, "ce-"),
        ("mem://", Flavour.PUBSUB, "ce-"),
    ],
)
def test_request_uses_the_binding_of_its_broker(broker: str, flavour: Flavour, prefix: str) -> None:
    assert Flavour.for_broker(broker) is flavour
    message = contract.encode_request(PNG_MAGIC + b"x", flavour, request_id="r-1", expected_label=7)
    assert message.key == "r-1"
    assert message.data == PNG_MAGIC + b"x"
    for name in ("id", "type", "source", "specversion", "time"):
        assert f"{prefix}{name}" in message.attributes
    assert message.attributes[f"{prefix}id"] == "r-1"
    assert message.attributes[f"{prefix}specversion"] == "1.0"
    assert message.attributes["content-type"] == "image/png"
    assert message.attributes["expected_label"] == "7"
    other = "ce-" if prefix == "ce_" else "ce_"
    assert not any(k.startswith(other) for k in message.attributes)


@pytest.mark.parametrize("flavour", list(Flavour))
def test_decoder_accepts_both_spellings(flavour: Flavour) -> None:
    message = contract.encode_request(b"img", flavour, request_id="abc", expected_label=3, content_type="image/jpeg")
    request = contract.decode_request(message.data, message.attributes)
    assert (request.id, request.image, request.content_type, request.expected_label) == ("abc", b"img", "image/jpeg", 3)
    assert contract.parse_time(request.time) is not None
    assert not request.legacy_json


def test_raw_pixels_and_content_type_parameters() -> None:
    attrs = dict(contract.encode_request(bytes(784), Flavour.KAFKA).attributes)
    attrs["content-type"] = "Application/Octet-Stream; foo=bar"
    request = contract.decode_request(bytes(784), attrs)
    assert request.raw


def test_original_json_format_round_trips() -> None:
    message = contract.encode_legacy_request(PNG_MAGIC, request_id="seed-42")
    assert message.attributes == {}
    assert json.loads(message.data) == {"id": "seed-42", "image": base64.b64encode(PNG_MAGIC).decode()}
    request = contract.decode_request(message.data, message.attributes)
    assert (request.id, request.image, request.legacy_json) == ("seed-42", PNG_MAGIC, True)


def test_unique_ids() -> None:
    ids = {contract.encode_request(b"x", Flavour.PUBSUB).key for _ in range(1000)}
    assert len(ids) == 1000


def _reason(data: bytes, attributes: dict[str, str], **kw: int) -> str:
    with pytest.raises(InvalidRequest) as caught:
        contract.decode_request(data, attributes, **kw)
    assert caught.value.detail  # every reason comes with a human explanation
    return caught.value.reason


def test_hostile_envelopes_get_their_reasons() -> None:
    ce = contract.encode_request(b"x", Flavour.KAFKA, request_id="r").attributes
    assert _reason(b"", ce) == "empty"
    assert _reason(b"", {}) == "empty"
    assert _reason(b"x" * 101, ce, max_message_bytes=100) == "too_large"
    assert _reason(b"not json at all", {}) == "bad_json"
    assert _reason(b"\xff\xfe\x00", {}) == "bad_json"
    assert _reason(b'{"id": "a"}', {}) == "bad_json"
    assert _reason(b'["id", "image"]', {}) == "bad_json"
    assert _reason(b'{"id": "a", "image": "@@@not base64@@@"}', {}) == "bad_json"
    assert _reason(b'{"id": "a", "image": 5}', {}) == "bad_json"
    assert _reason(b'{"id": "", "image": "AAAA"}', {}) == "bad_attributes"
    assert _reason(b"x", {**ce, "ce_id": ""}) == "bad_attributes"
    assert _reason(b"x", {**ce, "ce_id": "i" * 300}) == "bad_attributes"
    assert _reason(b"x", {**ce, "content-type": "text/html"}) == "unsupported_content_type"


def test_bad_expected_label_does_not_cost_the_answer() -> None:
    attrs = {**contract.encode_request(b"x", Flavour.PUBSUB).attributes, "expected_label": "eleven"}
    assert contract.decode_request(b"x", attrs).expected_label is None


def test_prediction_round_trip_and_attributes() -> None:
    prediction = Prediction(
        "r-9", 9, "Ankle boot", 0.91, [0.01] * 9 + [0.91], "fashion-cnn@abc", 9, "2026-01-01T00:00:00Z"
    )
    encoded = contract.encode_prediction(prediction, Flavour.KAFKA)
    assert encoded.key == "r-9"
    assert encoded.attributes["ce_id"] == "r-9"
    assert encoded.attributes["ce_type"] == contract.PREDICTION_TYPE
    assert encoded.attributes["content-type"] == "application/json"
    body = json.loads(encoded.data)
    assert {"id", "label", "class_name", "confidence", "probabilities", "model"} <= set(body)
    decoded = contract.decode_prediction(encoded.data)
    assert (decoded.id, decoded.label, decoded.class_name, decoded.expected_label) == ("r-9", 9, "Ankle boot", 9)
    assert decoded.correct is True
    assert len(decoded.probabilities) == 10


@pytest.mark.parametrize(
    "body",
    [
        b'{"id": "a"}',
        b'{"id":"a","label":12,"class_name":"x","confidence":1,"probabilities":[],"model":"m"}',
        b'{"id":"a","label":1,"class_name":"x","confidence":"NaN","probabilities":[0,0,0,0,0,0,0,0,0,0],"model":"m"}',
        b"[]",
    ],
)
def test_invalid_predictions_are_rejected(body: bytes) -> None:
    with pytest.raises(ValueError):
        contract.decode_prediction(body)


def test_dead_letter_keeps_the_original_and_adds_the_reason() -> None:
    original = contract.encode_request(b"garbage", Flavour.PUBSUB, request_id="bad-1")
    letter = contract.encode_dead_letter(
        original.data, original.attributes, original.key, "not_an_image", "cannot identify image file" * 100
    )
    assert letter.data == b"garbage"
    assert letter.key == "bad-1"
    assert letter.attributes["error"] == "not_an_image"
    assert len(letter.attributes["error_detail"]) <= contract.MAX_DETAIL_CHARS
    for name, value in original.attributes.items():
        assert letter.attributes[name] == value
    cut = contract.encode_dead_letter(b"y" * 1000, {}, None, "too_large", "big", max_body_bytes=10)
    assert cut.data == b"y" * 10 and "1000" in cut.attributes["body_truncated"]
