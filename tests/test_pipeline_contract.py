"""The message contract: CloudEvents binary and structured mode per broker, the JSON form, dead-letter reasons."""

from __future__ import annotations

import base64
import dataclasses
import json

import pytest

from fashionstream.classifier.predictor import Prediction
from fashionstream.pipeline import cloudevents, contract
from fashionstream.pipeline.cloudevents import Flavour
from fashionstream.pipeline.contract import InvalidRequest, PredictionEvent
from fashionstream.reasons import Reason

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
    assert cloudevents.parse_time(request.time) is not None
    assert not request.json_form


def test_raw_pixels_and_content_type_parameters() -> None:
    attrs = dict(contract.encode_request(bytes(784), Flavour.KAFKA).attributes)
    attrs["content-type"] = "Application/Octet-Stream; foo=bar"
    request = contract.decode_request(bytes(784), attrs)
    assert request.raw


def test_json_form_round_trips() -> None:
    message = contract.encode_json_request(PNG_MAGIC, request_id="json-42")
    assert message.attributes == {}
    assert json.loads(message.data) == {"id": "json-42", "image": base64.b64encode(PNG_MAGIC).decode()}
    request = contract.decode_request(message.data, message.attributes)
    assert (request.id, request.image, request.json_form) == ("json-42", PNG_MAGIC, True)


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
    prediction = PredictionEvent(
        "r-9", Prediction(9, "Ankle boot", 0.91, (0.01,) * 9 + (0.91,)), "fashion-cnn@abc", 9, "2026-01-01T00:00:00Z"
    )
    encoded = contract.encode_prediction(prediction, Flavour.KAFKA)
    assert encoded.key == "r-9"
    assert encoded.attributes["ce_id"] == "r-9"
    assert encoded.attributes["ce_type"] == contract.PREDICTION_TYPE
    assert encoded.attributes["content-type"] == "application/json"
    body = json.loads(encoded.data)
    assert {"id", "label", "class_name", "confidence", "probabilities", "model"} <= set(body)
    decoded = contract.decode_prediction(encoded.data)
    assert (decoded.id, decoded.prediction.label, decoded.prediction.class_name, decoded.expected_label) == (
        "r-9", 9, "Ankle boot", 9
    )  # fmt: skip
    assert decoded.correct is True
    assert len(decoded.prediction.probabilities) == 10


def _model_answers(count: int) -> list[tuple[contract.Request, Prediction]]:
    """Requests and predictions as the model service has them: float32 softmax scores, odd ids, traces."""
    import numpy as np

    rng = np.random.default_rng(7)
    answers = []
    for i in range(count):
        scores = rng.dirichlet(np.full(10, 0.2)).astype(np.float32)  # many near 0, one near 1
        label = int(scores.argmax())
        prediction = Prediction(label, f'class "{label}" \u00e9', float(scores[label]), tuple(scores.tolist()))
        trace = {"traceparent": f"00-{i:032x}-{i:016x}-01"} if i % 2 else {}
        request = contract.Request(
            f'id-{i}-\u00fc"',
            b"png",
            contract.PNG,
            i % 10 if i % 3 else None,
            None if i % 4 else "2026-01-01T00:00:00Z",
            trace=trace,
        )
        answers.append((request, prediction))
    return answers


@pytest.mark.parametrize("flavour", [Flavour.KAFKA, Flavour.PUBSUB])
def test_a_batch_of_answers_is_encoded_as_each_answer_alone_would_be(flavour: Flavour) -> None:
    answers = _model_answers(50)
    encoded = contract.encode_predictions(answers, "fashion-cnn@abc", flavour)
    assert len(encoded) == len(answers)
    predicted_at = json.loads(encoded[0][0])["predicted_at"]  # one time for the batch, classified together
    for (request, prediction), (data, attributes, key) in zip(answers, encoded, strict=True):
        event = dataclasses.replace(contract.answer(request, prediction, "fashion-cnn@abc"), predicted_at=predicted_at)
        alone = contract.encode_prediction(event, flavour, trace=request.trace)
        assert (data, attributes, key) == (alone.data, alone.attributes, alone.key)
    assert contract.encode_predictions([], "m", flavour) == []


def test_a_prediction_body_carries_its_numbers_rounded_to_six_decimals() -> None:
    """The body is built by hand for speed: it must parse as the JSON a dict of rounded numbers would be."""
    for request, prediction in _model_answers(200):
        event = contract.answer(request, prediction, "fashion-cnn@abc")
        body = json.loads(event.to_json())
        assert body == {
            "id": request.id,
            "label": prediction.label,
            "class_name": prediction.class_name,
            "confidence": round(prediction.confidence, 6),
            "probabilities": [round(p, 6) for p in prediction.probabilities],
            "model": "fashion-cnn@abc",
            "expected_label": request.expected_label,
            "request_time": request.time,
            "predicted_at": event.predicted_at,
            "version": contract.CONTRACT_VERSION,
        }
        assert all(isinstance(p, float) for p in body["probabilities"])
        assert contract.decode_prediction(event.to_json()) == event.__class__(
            event.id,
            dataclasses.replace(
                prediction,
                confidence=round(prediction.confidence, 6),
                probabilities=tuple(round(p, 6) for p in prediction.probabilities),
            ),
            event.model,
            event.expected_label,
            event.request_time,
            event.predicted_at,
        )


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
        original.data,
        original.attributes,
        original.key,
        Reason.NOT_AN_IMAGE,
        "cannot identify image file" * 100,
        flavour=Flavour.PUBSUB,
    )
    assert letter.data == b"garbage"
    assert letter.key == "bad-1"
    assert letter.attributes["error"] == "not_an_image"
    assert len(letter.attributes["error_detail"]) <= contract.MAX_DETAIL_CHARS
    # A dead letter is an event of its own type; the request's type is kept beside it.
    assert letter.attributes["ce-type"] == contract.DEAD_LETTER_TYPE
    assert letter.attributes["original_type"] == contract.REQUEST_TYPE
    for name, value in original.attributes.items():
        if name != "ce-type":
            assert letter.attributes[name] == value
    cut = contract.encode_dead_letter(
        b"y" * 1000, {}, None, Reason.TOO_LARGE, "big", flavour=Flavour.KAFKA, message_id="t/0/7", max_body_bytes=10
    )
    assert cut.data == b"y" * 10 and "1000" in cut.attributes["body_truncated"]
    # Input without an envelope still becomes a complete CloudEvent, named by the broker's message id.
    assert cut.attributes["ce_id"] == "t/0/7" and cut.attributes["ce_specversion"] == "1.0"
    assert cut.attributes["ce_type"] == contract.DEAD_LETTER_TYPE and "original_type" not in cut.attributes


def structured(document: dict[str, object]) -> bytes:
    return json.dumps(document).encode()


def test_structured_mode_requests_are_accepted() -> None:
    body = structured(
        {"specversion": "1.0", "id": "s-1", "type": contract.REQUEST_TYPE, "source": "camera/7",
         "time": "2026-01-01T00:00:00Z", "datacontenttype": "image/png",
         "data_base64": base64.b64encode(PNG_MAGIC).decode(), "traceparent": TRACEPARENT}
    )  # fmt: skip
    for content_type in ("application/cloudevents+json", "Application/CloudEvents+JSON; charset=utf-8"):
        request = contract.decode_request(body, {"content-type": content_type, "expected_label": "4"})
        assert (request.id, request.image, request.content_type, request.expected_label) == ("s-1", PNG_MAGIC,
                                                                                           "image/png", 4)  # fmt: skip
        assert request.time == "2026-01-01T00:00:00Z" and request.trace == {"traceparent": TRACEPARENT}


def test_hostile_structured_events_get_their_reasons() -> None:
    header = {"content-type": "application/cloudevents+json"}
    png = base64.b64encode(PNG_MAGIC).decode()
    assert _reason(b"{not json", header) == "bad_json"
    assert _reason(b"[1, 2]", header) == "bad_json"
    assert _reason(structured({"id": "a", "data": "not binary"}), header) == "bad_json"
    assert _reason(structured({"id": "a", "data_base64": "@@@"}), header) == "bad_json"
    assert _reason(structured({"data_base64": png}), header) == "bad_attributes"
    assert _reason(structured({"id": "a", "data_base64": ""}), header) == "empty"
    assert _reason(structured({"id": "a", "data_base64": png, "datacontenttype": "text/html"}), header) == (
        "unsupported_content_type"
    )


@pytest.mark.parametrize("name", ["content-type", "Content-Type", "CONTENT-TYPE"])
def test_the_content_type_header_is_read_in_any_case(name: str) -> None:
    attrs = dict(contract.encode_request(bytes(784), Flavour.KAFKA).attributes)
    del attrs["content-type"]
    attrs[name] = "application/octet-stream"
    assert contract.decode_request(bytes(784), attrs).raw


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize("header", ["ce_traceparent", "ce-traceparent", "traceparent"])
def test_traceparent_passes_from_the_request_to_its_prediction(header: str) -> None:
    attrs = {**contract.encode_request(b"img", Flavour.KAFKA, request_id="t-1").attributes, header: TRACEPARENT}
    request = contract.decode_request(b"img", attrs)
    assert request.trace == {"traceparent": TRACEPARENT}
    event = contract.answer(request, Prediction(1, "Trouser", 0.8, (0.1,) * 10), "m@1")
    encoded = contract.encode_prediction(event, Flavour.PUBSUB, trace=request.trace)
    assert encoded.attributes["ce-traceparent"] == TRACEPARENT
    untraced = contract.encode_prediction(event, Flavour.PUBSUB)
    assert not any("traceparent" in name for name in untraced.attributes)
