"""The message contract between producer, model service and consumer (version 1).

Three kinds of message, documented for users in docs/pipeline.md:

* **request** on topic ``images``, one of
  - a CloudEvent in *binary* mode: the body is the image itself (PNG/JPEG, or 784 raw grey bytes
    with content type ``application/octet-stream``) and the context attributes are message
    metadata (``ce_id`` on Kafka, ``ce-id`` on Pub/Sub, see `cloudevents`); ``content-type``
    carries ``datacontenttype``;
  - a CloudEvent in *structured* mode: content type ``application/cloudevents+json``, the body a
    JSON event with the image in ``data_base64``;
  - the JSON form ``{"id": ..., "image": "<base64 PNG>"}`` with no CloudEvents attributes.
  The record key is the request id. ``expected_label`` (0-9) may ride along for evaluation.
* **prediction** on topic ``predictions``: a JSON body (`PredictionEvent`) with CloudEvents
  attributes of its own and the request's id as key.
* **dead letter** on topic ``images.dlq``: the original body and attributes, typed as a dead
  letter, plus ``error`` (a `Reason`) and ``error_detail``.

A request's event identity is checked before anything else: a `specversion` other than
`SPEC_VERSION` or a `type` not in `REQUEST_TYPES` is refused (`Reason.UNSUPPORTED_EVENT`), never
classified, because a new contract version changes the type (docs/pipeline.md, "Message
contract"). Request ids must be text a client can match: not over `MAX_ID_CHARS`, and not holding
U+FFFD or a lone surrogate, which is what undecodable (non-UTF-8) header bytes become.

This module turns bytes + attributes into typed values and back. It never decodes images (the
classifier's `Predictor.to_pixels` does, and it alone decides by content which formats are images)
and never unpickles or evaluates anything: JSON and base64 are the only parsers it uses.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from json.encoder import encode_basestring_ascii as _json_text
from typing import Any

from fashionstream.classifier.predictor import Prediction
from fashionstream.pipeline import cloudevents
from fashionstream.pipeline.cloudevents import CONTENT_TYPE, SPEC_VERSION, Flavour, attribute, now_rfc3339
from fashionstream.reasons import InvalidInput, Reason

CONTRACT_VERSION = "1"
REQUEST_TYPE = "dev.fashionstream.image.v1"
# The request types this service answers: a v2 contract adds its type here for the migration.
REQUEST_TYPES = (REQUEST_TYPE,)
SPEC_VERSIONS = (SPEC_VERSION,)  # CloudEvents versions whose attributes this module reads
PREDICTION_TYPE = "dev.fashionstream.prediction.v1"
DEAD_LETTER_TYPE = "dev.fashionstream.deadletter.v1"
DEFAULT_SOURCE = "fashionstream/producer"
SERVICE_SOURCE = "fashionstream/model-service"

EXPECTED_LABEL = "expected_label"  # not a CloudEvents extension: `_` is not allowed in CE attribute names
ERROR = "error"
ERROR_DETAIL = "error_detail"
DELIVERY_ATTEMPTS = "delivery_attempts"  # on a too_many_attempts dead letter: how often answering it failed
ORIGINAL_TYPE = "original_type"  # a dead letter's request `type`, which the dead-letter type replaces
# Pub/Sub caps attribute values at 1024 bytes; detail messages are cut well below that.
MAX_DETAIL_CHARS = 500

PNG = "image/png"
JPEG = "image/jpeg"
RAW = "application/octet-stream"
JSON = "application/json"
ACCEPTED_IMAGE_TYPES = (PNG, JPEG, RAW)

DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024  # a Fashion-MNIST PNG is < 1 KB; anything this big is abuse or a mistake
MAX_ID_CHARS = 256


class InvalidRequest(InvalidInput):
    """A request that can never be answered; it goes to the dead-letter topic with its `reason`."""


def new_request_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True)
class EncodedMessage:
    """What a publisher sends: body, attributes and key."""

    data: bytes
    attributes: dict[str, str]
    key: str | None


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Request:
    """A decoded request: the image bytes still undecoded (the classifier owns image parsing)."""

    id: str
    image: bytes
    content_type: str
    expected_label: int | None = None
    time: str | None = None
    json_form: bool = False  # sent as {"id", "image"} JSON rather than as a CloudEvent
    trace: Mapping[str, str] = field(default_factory=dict)  # traceparent / tracestate, passed to the answer

    @property
    def raw(self) -> bool:
        return self.content_type == RAW


def encode_request(
    image: bytes,
    flavour: Flavour,
    *,
    request_id: str | None = None,
    content_type: str = PNG,
    expected_label: int | None = None,
    source: str = DEFAULT_SOURCE,
    time: str | None = None,
) -> EncodedMessage:
    """A request in CloudEvents binary mode, spelled for `flavour`'s broker."""
    rid = request_id or new_request_id()
    p = flavour.prefix
    attributes = {
        f"{p}specversion": SPEC_VERSION,
        f"{p}id": rid,
        f"{p}type": REQUEST_TYPE,
        f"{p}source": source,
        f"{p}time": time or now_rfc3339(),
        CONTENT_TYPE: content_type,
    }
    if expected_label is not None:
        attributes[EXPECTED_LABEL] = str(int(expected_label))
    return EncodedMessage(image, attributes, rid)


def encode_json_request(image_png: bytes, request_id: str | None = None) -> EncodedMessage:
    """The JSON form: `{"id": ..., "image": "<base64 PNG>"}`, no attributes."""
    rid = request_id or new_request_id()
    body = json.dumps({"id": rid, "image": base64.b64encode(image_png).decode("ascii")}).encode()
    return EncodedMessage(body, {}, rid)


def _expected_label(text: object) -> int | None:
    if isinstance(text, bool):
        return None
    try:
        label = int(text)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None  # evaluation metadata only: a bad value must not cost the request its answer
    return label if 0 <= label <= 9 else None


def _check_id(value: object) -> str:
    if value is not None and not isinstance(value, str):
        raise InvalidRequest(Reason.BAD_ATTRIBUTES, f"the request id must be a string, not a {type(value).__name__}")
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(Reason.BAD_ATTRIBUTES, "the request id is missing or empty")
    if len(value) > MAX_ID_CHARS:
        raise InvalidRequest(Reason.BAD_ATTRIBUTES, f"the request id is longer than {MAX_ID_CHARS} characters")
    if not value.isascii() and ("\ufffd" in value or any("\ud800" <= char <= "\udfff" for char in value)):
        # Header bytes that are not UTF-8 arrive as U+FFFD (or lone surrogates from a JSON "\udc80"): an
        # answer under such an id could never be matched by whoever sent it, nor published on every broker.
        raise InvalidRequest(
            Reason.BAD_ATTRIBUTES, f"the request id {value[:64]!r} is not valid UTF-8 text (it holds undecodable bytes)"
        )
    return value


def _check_event(specversion: str | None, event_type: str | None) -> None:
    """Refuse an event this contract version does not describe; an absent attribute is read as version 1."""
    if specversion is not None and specversion not in SPEC_VERSIONS:
        raise InvalidRequest(
            Reason.UNSUPPORTED_EVENT,
            f"CloudEvents specversion {specversion[:64]!r} is not supported; this service reads "
            f"{', '.join(SPEC_VERSIONS)}",
        )
    if event_type is not None and event_type not in REQUEST_TYPES:
        raise InvalidRequest(
            Reason.UNSUPPORTED_EVENT,
            f"event type {event_type[:128]!r} is not a request this service answers ({', '.join(REQUEST_TYPES)})",
        )


def _json_loads(data: bytes, what: str) -> Any:
    """`json.loads`, with every way it can fail (bad UTF-8, bad syntax, nesting too deep) as BAD_JSON."""
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidRequest(Reason.BAD_JSON, f"{what}: {error}") from error
    except RecursionError as error:  # e.g. [[[[...]]]] 10,000 deep: no request nests more than two levels
        raise InvalidRequest(Reason.BAD_JSON, f"{what}: JSON nested too deeply to parse") from error


def decode_request(
    data: bytes,
    attributes: Mapping[str, str],
    *,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> Request:
    """Validate a request's envelope; raise `InvalidRequest` with a reason for anything unanswerable."""
    if len(data) > max_message_bytes:
        raise InvalidRequest(
            Reason.TOO_LARGE,
            f"message body is {len(data)} bytes; the limit is {max_message_bytes} (--max-message-bytes)",
        )
    content_type = cloudevents.content_type(attributes)
    if content_type == cloudevents.STRUCTURED_CONTENT_TYPE:
        return _decode_structured(data, attributes)
    if cloudevents.has_cloudevents(attributes):
        return _decode_binary(data, attributes, content_type)
    if not data:
        raise InvalidRequest(Reason.EMPTY, "the message body is empty and it has no CloudEvents attributes")
    return _decode_json_form(data, _expected_label(attributes.get(EXPECTED_LABEL)))


def _decode_binary(data: bytes, attributes: Mapping[str, str], content_type: str) -> Request:
    _check_event(attribute(attributes, "specversion"), attribute(attributes, "type"))
    rid = _check_id(attribute(attributes, "id"))
    if not data:
        raise InvalidRequest(Reason.EMPTY, "the message body is empty; expected an image")
    label = _expected_label(attributes.get(EXPECTED_LABEL))
    time, trace = attribute(attributes, "time"), cloudevents.trace_context(attributes)
    if content_type == JSON:
        json_form = _decode_json_form(data)
        return Request(rid, json_form.image, PNG, label, time, json_form=True, trace=trace)
    return Request(rid, data, _image_type(content_type), label, time, trace=trace)


def _decode_structured(data: bytes, attributes: Mapping[str, str]) -> Request:
    try:
        event = cloudevents.parse_structured(data)
    except cloudevents.StructuredModeError as error:
        raise InvalidRequest(Reason.BAD_JSON, str(error)) from error
    except RecursionError as error:
        raise InvalidRequest(Reason.BAD_JSON, "a structured-mode CloudEvent nested too deeply to parse") from error
    _check_event(_structured_text(event, "specversion"), _structured_text(event, "type"))
    rid = _check_id(event.attributes.get("id"))
    if not event.data:
        raise InvalidRequest(Reason.EMPTY, "data_base64 is empty; expected an image")
    label = _expected_label(attributes.get(EXPECTED_LABEL, event.extensions.get(EXPECTED_LABEL)))
    trace = {k: v for k, v in event.attributes.items() if k in cloudevents.TRACE_ATTRIBUTES}
    content_type = cloudevents.media_type(event.attributes.get("datacontenttype"))
    return Request(rid, event.data, _image_type(content_type), label, event.attributes.get("time"), trace=trace)


def _structured_text(event: cloudevents.StructuredEvent, name: str) -> str | None:
    """A structured event's context attribute, None when absent. One that is not a string, as CloudEvents
    requires (`"specversion": 1.0`), becomes a description that matches no accepted value."""
    if name in event.attributes:
        return event.attributes[name]
    value = event.extensions.get(name)
    if value is None:
        return None
    if isinstance(value, bool | int | float):
        return f"<JSON {type(value).__name__} {value!r}>"
    return f"<JSON {type(value).__name__}>"  # not its text: a deeply nested value could not be printed


def _image_type(content_type: str) -> str:
    if content_type and content_type not in ACCEPTED_IMAGE_TYPES:
        raise InvalidRequest(
            Reason.UNSUPPORTED_CONTENT_TYPE,
            f"content type {content_type!r} is not one of {', '.join(ACCEPTED_IMAGE_TYPES)}",
        )
    return content_type or PNG


def _decode_json_form(data: bytes, expected_label: int | None = None) -> Request:
    doc = _json_loads(data, 'no CloudEvents attributes and the body is not the JSON {"id", "image"} form')
    if not isinstance(doc, dict) or "image" not in doc or "id" not in doc:
        raise InvalidRequest(Reason.BAD_JSON, 'the JSON body must be an object with "id" and "image" (base64 PNG)')
    raw_id = doc["id"]
    if isinstance(raw_id, int) and not isinstance(raw_id, bool):
        raw_id = str(raw_id)  # a number is taken as its decimal text; a list or object is no id
    rid = _check_id(raw_id)
    if not isinstance(doc["image"], str):
        raise InvalidRequest(Reason.BAD_JSON, '"image" must be a base64 string')
    try:
        image = base64.b64decode(doc["image"], validate=True)
    except (binascii.Error, ValueError) as error:
        raise InvalidRequest(Reason.BAD_JSON, f'"image" is not valid base64: {error}') from error
    if not image:
        raise InvalidRequest(Reason.EMPTY, '"image" is empty')
    label = expected_label if expected_label is not None else _expected_label(doc.get(EXPECTED_LABEL))
    time = doc.get("time") if isinstance(doc.get("time"), str) else None
    return Request(rid, image, PNG, label, time, json_form=True)


# --------------------------------------------------------------------------- predictions


@dataclass(frozen=True)
class PredictionEvent:
    """The body of a message on `predictions`: the model's `Prediction` for one request, with provenance.

    `expected_label` and `request_time` are copied from the request so that a consumer can score
    accuracy and latency without remembering what was sent.
    """

    id: str
    prediction: Prediction
    model: str
    expected_label: int | None = None
    request_time: str | None = None
    predicted_at: str = field(default_factory=now_rfc3339)
    version: str = CONTRACT_VERSION

    @property
    def correct(self) -> bool | None:
        return None if self.expected_label is None else self.expected_label == self.prediction.label

    def to_json(self) -> bytes:
        return _prediction_json(
            self.id,
            self.prediction,
            _json_text(self.model),
            self.expected_label,
            self.request_time,
            _json_text(self.predicted_at),
            _json_text(self.version),
        )


@lru_cache(maxsize=8)
def _six_decimals(count: int) -> str:
    """A %-format for `count` numbers with six decimals, comma-separated."""
    return ",".join(["%.6f"] * count)


def _prediction_json(
    request_id: str,
    prediction: Prediction,
    model_json: str,
    expected_label: int | None,
    request_time: str | None,
    predicted_at_json: str,
    version_json: str,
) -> bytes:
    """A prediction's JSON body: the one layout (docs/pipeline.md), compact, numbers with six decimals.

    Written with one %-format rather than `json.dumps` of a dict of rounded numbers, which cost about
    four times as much CPU (~30 µs per answer, a tenth of what the model service spends around an
    image). "%.6f" rounds the exact value half to even, as `round(x, 6)` does, so the numbers mean the
    same. The `_json` arguments are JSON strings already, shared by a batch.
    """
    probabilities = prediction.probabilities
    numbers = _six_decimals(len(probabilities) + 1) % (prediction.confidence, *probabilities)
    confidence, _, probabilities_text = numbers.partition(",")
    expected = "null" if expected_label is None else str(int(expected_label))
    time = "null" if request_time is None else _json_text(request_time)
    return (
        f'{{"id":{_json_text(request_id)},"label":{int(prediction.label)},'
        f'"class_name":{_json_text(prediction.class_name)},"confidence":{confidence},'
        f'"probabilities":[{probabilities_text}],"model":{model_json},'
        f'"expected_label":{expected},"request_time":{time},'
        f'"predicted_at":{predicted_at_json},"version":{version_json}}}'
    ).encode()


def answer(request: Request, prediction: Prediction, model: str) -> PredictionEvent:
    """The prediction event that answers `request`."""
    return PredictionEvent(request.id, prediction, model, request.expected_label, request.time)


def encode_prediction(
    event: PredictionEvent, flavour: Flavour, *, trace: Mapping[str, str] | None = None, source: str = SERVICE_SOURCE
) -> EncodedMessage:
    """A prediction event. Its CE id is the request id: with its own `source`, (source, id) is unique
    per request, and a re-sent prediction after a crash is recognisably the same event. `trace`
    (the request's traceparent / tracestate) continues the request's distributed trace."""
    attributes = _prediction_attributes(flavour.prefix, event.id, event.predicted_at, source, trace)
    return EncodedMessage(event.to_json(), attributes, event.id)


def encode_predictions(
    answers: Sequence[tuple[Request, Prediction]], model: str, flavour: Flavour, *, source: str = SERVICE_SOURCE
) -> list[tuple[bytes, dict[str, str], str]]:
    """The messages answering a classified batch, (data, attributes, key) each: the same as
    `encode_prediction(answer(request, prediction, model), flavour, trace=request.trace)` per answer,
    but with one `predicted_at` for the batch (classified together) and no event object per answer."""
    predicted_at = now_rfc3339()
    model_json, predicted_at_json, version_json = (
        _json_text(model),
        _json_text(predicted_at),
        _json_text(CONTRACT_VERSION),
    )
    prefix = flavour.prefix
    out = []
    for request, prediction in answers:
        body = _prediction_json(
            request.id, prediction, model_json, request.expected_label, request.time, predicted_at_json, version_json
        )
        attributes = _prediction_attributes(prefix, request.id, predicted_at, source, request.trace)
        out.append((body, attributes, request.id))
    return out


def _prediction_attributes(
    prefix: str, request_id: str, predicted_at: str, source: str, trace: Mapping[str, str] | None
) -> dict[str, str]:
    attributes = {
        f"{prefix}specversion": SPEC_VERSION,
        f"{prefix}id": request_id,
        f"{prefix}type": PREDICTION_TYPE,
        f"{prefix}source": source,
        f"{prefix}subject": request_id,
        f"{prefix}time": predicted_at,
        CONTENT_TYPE: JSON,
    }
    if trace:
        for name, value in trace.items():
            attributes[f"{prefix}{name}"] = value
    return attributes


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"prediction field {name!r} must be a finite number")
    return float(value)


def decode_prediction(data: bytes) -> PredictionEvent:
    """Parse and validate a prediction body; ValueError with the field name on anything off."""
    try:
        doc = json.loads(data)
    except RecursionError as error:
        raise ValueError("a prediction nested too deeply to parse") from error
    if not isinstance(doc, dict):
        raise ValueError("a prediction must be a JSON object")
    for name in ("id", "label", "class_name", "confidence", "probabilities", "model"):
        if name not in doc:
            raise ValueError(f"prediction lacks {name!r}")
    label = doc["label"]
    if not isinstance(label, int) or not 0 <= label <= 9:
        raise ValueError("prediction field 'label' must be an integer 0-9")
    probabilities = doc["probabilities"]
    if not isinstance(probabilities, list) or len(probabilities) != 10:
        raise ValueError("prediction field 'probabilities' must be a list of 10 numbers")
    expected = doc.get("expected_label")
    prediction = Prediction(
        label=label,
        class_name=str(doc["class_name"]),
        confidence=_number(doc["confidence"], "confidence"),
        probabilities=tuple(_number(p, "probabilities") for p in probabilities),
    )
    return PredictionEvent(
        id=str(doc["id"]),
        prediction=prediction,
        model=str(doc["model"]),
        expected_label=expected if isinstance(expected, int) else None,
        request_time=doc.get("request_time") if isinstance(doc.get("request_time"), str) else None,
        predicted_at=str(doc.get("predicted_at") or ""),
        version=str(doc.get("version") or CONTRACT_VERSION),
    )


# --------------------------------------------------------------------------- dead letters


def encode_dead_letter(
    data: bytes,
    attributes: Mapping[str, str],
    key: str | None,
    reason: Reason,
    detail: str,
    *,
    flavour: Flavour,
    message_id: str = "",
    max_body_bytes: int | None = None,
    attempts: int | None = None,
) -> EncodedMessage:
    """The original body and attributes as a dead-letter event, plus `error` and `error_detail`.

    The dead letter is a CloudEvent of its own type (the request's type moves to `original_type`),
    keeping the request's id (or, for input without one, its key or the broker's message id) so
    that whoever sent it can match it. With `max_body_bytes`, a larger body is cut (and
    `body_truncated` says by how much) so that an oversize request still leaves a trace on brokers
    whose own limit it exceeds. `attempts`, for a request given up on, says how often answering it failed.
    """
    p = flavour.prefix
    out = dict(attributes)
    original_type = attribute(attributes, "type")
    if original_type is not None:
        out[ORIGINAL_TYPE] = original_type
    out[f"{p}type"] = DEAD_LETTER_TYPE
    out.setdefault(f"{p}specversion", SPEC_VERSION)
    if attribute(out, "id") is None:
        out[f"{p}id"] = key or message_id
    if attribute(out, "source") is None:
        out[f"{p}source"] = SERVICE_SOURCE
    out[ERROR] = str(reason)
    out[ERROR_DETAIL] = detail[:MAX_DETAIL_CHARS]
    out["error_time"] = now_rfc3339()
    if attempts is not None:
        out[DELIVERY_ATTEMPTS] = str(attempts)
    body = data
    if max_body_bytes is not None and len(body) > max_body_bytes:
        out["body_truncated"] = f"{len(body)} bytes cut to {max_body_bytes}"
        body = body[:max_body_bytes]
    return EncodedMessage(body, out, key)
