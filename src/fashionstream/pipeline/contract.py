"""The message contract between producer, model service and consumer (version 1).

Three kinds of message, documented for users in docs/pipeline.md:

* **request** on topic ``images`` -- CloudEvents 1.0 *binary* content mode: the
  body is the image itself (PNG/JPEG, or 784 raw grey bytes with content type
  ``application/octet-stream``) and the event's context attributes travel as
  message metadata: Kafka headers ``ce_id``, ``ce_type`` ... (Kafka protocol
  binding) or Pub/Sub attributes ``ce-id``, ``ce-type`` ... (Google Cloud Pub/Sub
  binding); ``content-type`` carries ``datacontenttype`` in both. The record key
  is the request id. ``expected_label`` (0-9) may ride along for evaluation.
  Clients of the original system may instead send a JSON body
  ``{"id": ..., "image": "<base64 PNG>"}`` with no CloudEvents attributes.
* **prediction** on topic ``predictions`` -- a JSON body (see `Prediction`), with
  CloudEvents attributes of its own and the request's id as key.
* **dead letter** on topic ``images.dlq`` -- the original body and attributes plus
  ``error`` (a short machine-readable reason) and ``error_detail``.

This module only turns bytes + attributes into typed values and back. It never
decodes images (that is the classifier's `Predictor.to_pixels`) and never
unpickles or evaluates anything: JSON and base64 are the only parsers used.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

CONTRACT_VERSION = "1"
SPEC_VERSION = "1.0"
REQUEST_TYPE = "dev.fashionstream.image.v1"
PREDICTION_TYPE = "dev.fashionstream.prediction.v1"
DEAD_LETTER_TYPE = "dev.fashionstream.deadletter.v1"
DEFAULT_SOURCE = "fashionstream/producer"
SERVICE_SOURCE = "fashionstream/model-service"

CONTENT_TYPE = "content-type"  # the datacontenttype header/attribute name in both bindings
EXPECTED_LABEL = "expected_label"  # not a CloudEvents extension: `_` is not allowed in CE attribute names
ERROR = "error"
ERROR_DETAIL = "error_detail"
# Pub/Sub caps attribute values at 1024 bytes; detail messages are cut well below that.
MAX_DETAIL_CHARS = 500

PNG = "image/png"
JPEG = "image/jpeg"
RAW = "application/octet-stream"
JSON = "application/json"
ACCEPTED_IMAGE_TYPES = (PNG, JPEG, RAW)

DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024  # a Fashion-MNIST PNG is < 1 KB; anything this big is abuse or a mistake
MAX_ID_CHARS = 256


class Flavour(enum.Enum):
    """How CloudEvents attributes are spelled on a broker: the one thing that differs."""

    KAFKA = "ce_"  # Kafka protocol binding: headers `ce_<attribute>`
    PUBSUB = "ce-"  # Google Cloud Pub/Sub binding: attributes `ce-<attribute>`

    @property
    def prefix(self) -> str:
        return self.value

    @classmethod
    def for_broker(cls, broker_url: str) -> Flavour:
        """kafka:// speaks the Kafka binding; gcppubsub:// and the embedded mem:// the Pub/Sub one."""
        return cls.KAFKA if broker_url.lower().startswith("kafka:") else cls.PUBSUB


class Reason(enum.StrEnum):
    """Machine-readable reasons a request goes to the dead-letter topic."""

    EMPTY = "empty"
    TOO_LARGE = "too_large"
    BAD_JSON = "bad_json"
    BAD_ATTRIBUTES = "bad_attributes"
    UNSUPPORTED_CONTENT_TYPE = "unsupported_content_type"
    NOT_AN_IMAGE = "not_an_image"
    TRUNCATED = "truncated"
    BAD_SHAPE = "bad_shape"
    MODEL_ERROR = "model_error"


class InvalidRequest(ValueError):
    """A request that can never be answered; it goes to the dead-letter topic with `reason`."""

    def __init__(self, reason: Reason | str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = str(reason)
        self.detail = detail


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_time(text: str | None) -> datetime | None:
    """Parse a CloudEvents `time` (RFC 3339); None when absent or unparseable (latency is then unknown)."""
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def ce_get(attributes: Mapping[str, str], name: str) -> str | None:
    """A CloudEvents attribute under either binding's spelling (inputs may come from anywhere)."""
    for prefix in ("ce_", "ce-"):
        value = attributes.get(prefix + name)
        if value is not None:
            return value
    return None


def has_cloudevents(attributes: Mapping[str, str]) -> bool:
    return ce_get(attributes, "specversion") is not None or ce_get(attributes, "id") is not None


def new_request_id() -> str:
    return str(uuid.uuid4())


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class EncodedMessage:
    """What a publisher sends: body, attributes and key."""

    data: bytes
    attributes: dict[str, str]
    key: str | None


@dataclass(frozen=True)
class Request:
    """A decoded request: the image bytes still undecoded (the classifier owns image parsing)."""

    id: str
    image: bytes
    content_type: str
    expected_label: int | None = None
    time: str | None = None
    source: str | None = None
    legacy_json: bool = False

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
    """A request in CloudEvents binary mode for `flavour`'s broker."""
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


def encode_legacy_request(image_png: bytes, request_id: str | None = None) -> EncodedMessage:
    """The original system's format: `{"id": ..., "image": "<base64 PNG>"}`, no attributes."""
    rid = request_id or new_request_id()
    body = json.dumps({"id": rid, "image": base64.b64encode(image_png).decode("ascii")}).encode()
    return EncodedMessage(body, {}, rid)


def _content_type(raw_value: str | None) -> str:
    # "image/png; charset=..." -> "image/png"; media types are case-insensitive.
    return (raw_value or "").split(";", 1)[0].strip().lower()


def _expected_label(attributes: Mapping[str, str]) -> int | None:
    text = attributes.get(EXPECTED_LABEL)
    if text is None:
        return None
    try:
        label = int(text)
    except ValueError:
        return None  # evaluation metadata only: a bad value must not cost the request its answer
    return label if 0 <= label <= 9 else None


def _check_id(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(Reason.BAD_ATTRIBUTES, "the request id is missing or empty")
    if len(value) > MAX_ID_CHARS:
        raise InvalidRequest(Reason.BAD_ATTRIBUTES, f"the request id is longer than {MAX_ID_CHARS} characters")
    return value


def decode_request(
    data: bytes,
    attributes: Mapping[str, str],
    *,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> Request:
    """Validate a request's envelope; raise `InvalidRequest` with a reason for anything unanswerable.

    CloudEvents attributes are accepted under both spellings (`ce_` and `ce-`), so a
    message bridged from one broker to the other still decodes.
    """
    if len(data) > max_message_bytes:
        raise InvalidRequest(
            Reason.TOO_LARGE,
            f"message body is {len(data)} bytes; the limit is {max_message_bytes} (--max-message-bytes)",
        )
    if has_cloudevents(attributes):
        rid = _check_id(ce_get(attributes, "id"))
        content_type = _content_type(attributes.get(CONTENT_TYPE) or ce_get(attributes, "datacontenttype"))
        if not data:
            raise InvalidRequest(Reason.EMPTY, "the message body is empty; expected an image")
        if content_type == JSON:
            legacy = _decode_legacy(data)
            return Request(
                rid,
                legacy.image,
                PNG,
                _expected_label(attributes),
                ce_get(attributes, "time"),
                ce_get(attributes, "source"),
                legacy_json=True,
            )
        if content_type and content_type not in ACCEPTED_IMAGE_TYPES:
            raise InvalidRequest(
                Reason.UNSUPPORTED_CONTENT_TYPE,
                f"content type {content_type!r} is not one of {', '.join(ACCEPTED_IMAGE_TYPES)}",
            )
        return Request(
            rid,
            data,
            content_type or PNG,
            _expected_label(attributes),
            ce_get(attributes, "time"),
            ce_get(attributes, "source"),
        )
    if not data:
        raise InvalidRequest(Reason.EMPTY, "the message body is empty and it has no CloudEvents attributes")
    return _decode_legacy(data, _expected_label(attributes))


def _decode_legacy(data: bytes, expected_label: int | None = None) -> Request:
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidRequest(
            Reason.BAD_JSON,
            f'no CloudEvents attributes and the body is not the JSON {{"id", "image"}} form: {error}',
        ) from error
    if not isinstance(doc, dict) or "image" not in doc or "id" not in doc:
        raise InvalidRequest(Reason.BAD_JSON, 'the JSON body must be an object with "id" and "image" (base64 PNG)')
    rid = _check_id(doc["id"]) if isinstance(doc["id"], str) else _check_id(str(doc["id"]))
    if not isinstance(doc["image"], str):
        raise InvalidRequest(Reason.BAD_JSON, '"image" must be a base64 string')
    try:
        image = base64.b64decode(doc["image"], validate=True)
    except (binascii.Error, ValueError) as error:
        raise InvalidRequest(Reason.BAD_JSON, f'"image" is not valid base64: {error}') from error
    if not image:
        raise InvalidRequest(Reason.EMPTY, '"image" is empty')
    label = expected_label
    if label is None and isinstance(doc.get("expected_label"), int) and 0 <= doc["expected_label"] <= 9:
        label = doc["expected_label"]
    return Request(
        rid, image, PNG, label, doc.get("time") if isinstance(doc.get("time"), str) else None, legacy_json=True
    )


def fallback_id(data: bytes, attributes: Mapping[str, str], key: str | None, message_id: str) -> str:
    """Best id for a message that could not be decoded: its CE id, key, or the broker's id."""
    return ce_get(attributes, "id") or key or message_id


# --------------------------------------------------------------------------- predictions


@dataclass(frozen=True)
class Prediction:
    """The body of a message on `predictions` (JSON).

    `expected_label` and `request_time` are copied from the request so that a
    consumer can score accuracy and latency without remembering what was sent.
    """

    id: str
    label: int
    class_name: str
    confidence: float
    probabilities: list[float]
    model: str
    expected_label: int | None = None
    request_time: str | None = None
    predicted_at: str = field(default_factory=now_rfc3339)
    version: str = CONTRACT_VERSION

    @property
    def correct(self) -> bool | None:
        return None if self.expected_label is None else self.expected_label == self.label

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "id": self.id,
                "label": self.label,
                "class_name": self.class_name,
                "confidence": round(self.confidence, 6),
                "probabilities": [round(p, 6) for p in self.probabilities],
                "model": self.model,
                "expected_label": self.expected_label,
                "request_time": self.request_time,
                "predicted_at": self.predicted_at,
                "version": self.version,
            },
            separators=(",", ":"),
        ).encode()


def encode_prediction(prediction: Prediction, flavour: Flavour, source: str = SERVICE_SOURCE) -> EncodedMessage:
    """A prediction event. Its CE id is the request id: with its own `source`, (source, id) is unique
    per request, and a re-sent prediction after a crash is recognisably the same event."""
    p = flavour.prefix
    attributes = {
        f"{p}specversion": SPEC_VERSION,
        f"{p}id": prediction.id,
        f"{p}type": PREDICTION_TYPE,
        f"{p}source": source,
        f"{p}subject": prediction.id,
        f"{p}time": prediction.predicted_at,
        CONTENT_TYPE: JSON,
    }
    return EncodedMessage(prediction.to_json(), attributes, prediction.id)


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"prediction field {name!r} must be a finite number")
    return float(value)


def decode_prediction(data: bytes) -> Prediction:
    """Parse and validate a prediction body; ValueError with the field name on anything off."""
    doc = json.loads(data)
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
    return Prediction(
        id=str(doc["id"]),
        label=label,
        class_name=str(doc["class_name"]),
        confidence=_number(doc["confidence"], "confidence"),
        probabilities=[_number(p, "probabilities") for p in probabilities],
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
    reason: str,
    detail: str,
    *,
    max_body_bytes: int | None = None,
) -> EncodedMessage:
    """The original body and attributes plus `error` and `error_detail`.

    With `max_body_bytes`, a body larger than that is cut (and `body_truncated`
    says by how much) so that an oversize request still leaves a trace on
    brokers whose own limit it exceeds.
    """
    out = dict(attributes)
    out[ERROR] = reason
    out[ERROR_DETAIL] = detail[:MAX_DETAIL_CHARS]
    out["error_time"] = now_rfc3339()
    body = data
    if max_body_bytes is not None and len(body) > max_body_bytes:
        out["body_truncated"] = f"{len(body)} bytes cut to {max_body_bytes}"
        body = body[:max_body_bytes]
    return EncodedMessage(body, out, key)


@dataclass(frozen=True)
class DeadLetter:
    data: bytes
    attributes: dict[str, str]
    key: str | None

    @property
    def reason(self) -> str:
        return self.attributes.get(ERROR, "")

    @property
    def detail(self) -> str:
        return self.attributes.get(ERROR_DETAIL, "")

    @property
    def request_id(self) -> str | None:
        return ce_get(self.attributes, "id") or self.key
