"""CloudEvents 1.0 as the pipeline reads and writes it: attribute spellings, times, structured mode.

A CloudEvent's context attributes (`id`, `type`, `source`, `time`, ...) travel either as message
metadata next to the data (*binary* mode) or inside one JSON document that is the whole body
(*structured* mode, content type `application/cloudevents+json`). In binary mode each protocol
binding spells them its own way: Kafka headers `ce_id`, Pub/Sub attributes `ce-id`. Which
spelling a broker uses is its driver's fact (`fashionstream.pubsub.Broker.cloudevents_prefix`);
this module only knows that there are these two, and reads either, so a message bridged from
one broker to the other still decodes.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

SPEC_VERSION = "1.0"
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
CONTENT_TYPE = "content-type"  # the header carrying `datacontenttype` in binary mode, in both bindings
# The distributed-tracing extension: W3C trace context, passed from a request to its answer.
TRACE_ATTRIBUTES = ("traceparent", "tracestate")


class Flavour(enum.Enum):
    """The two binary-mode spellings of CloudEvents attributes."""

    KAFKA = "ce_"  # Kafka protocol binding: headers `ce_<attribute>`
    PUBSUB = "ce-"  # Google Cloud Pub/Sub binding: attributes `ce-<attribute>`

    @property
    def prefix(self) -> str:
        return self.value

    @classmethod
    def for_broker(cls, broker_url: str) -> Flavour:
        """The spelling the broker's driver uses (its binding)."""
        from fashionstream.pubsub import parse_broker

        return cls(parse_broker(broker_url).cloudevents_prefix)


#: Both bindings' prefixes, in a tuple: iterating the enum itself costs more than the lookups (every
#: request has its attributes read about ten times).
_PREFIXES = tuple(flavour.prefix for flavour in Flavour)


def attribute(attributes: Mapping[str, str], name: str) -> str | None:
    """A CloudEvents attribute under either binding's spelling."""
    for prefix in _PREFIXES:
        value = attributes.get(prefix + name)
        if value is not None:
            return value
    return None


def has_cloudevents(attributes: Mapping[str, str]) -> bool:
    return attribute(attributes, "specversion") is not None or attribute(attributes, "id") is not None


def header(attributes: Mapping[str, str], name: str) -> str | None:
    """A plain header by name in any letter case (`Content-Type`, `content-type`): HTTP-style names are
    case-insensitive, and producers outside this project spell them either way."""
    value = attributes.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, candidate in attributes.items():
        if key.lower() == lowered:
            return candidate
    return None


def media_type(raw_value: str | None) -> str:
    """'Image/PNG; charset=x' -> 'image/png': parameters dropped, case folded (media types ignore case)."""
    return (raw_value or "").split(";", 1)[0].strip().lower()


def content_type(attributes: Mapping[str, str]) -> str:
    """The media type of a binary-mode message's body, '' when it does not say."""
    return media_type(header(attributes, CONTENT_TYPE) or attribute(attributes, "datacontenttype"))


def trace_context(attributes: Mapping[str, str]) -> dict[str, str]:
    """`traceparent` / `tracestate` of a message, as a CloudEvents extension or as plain W3C headers."""
    found = {}
    for name in TRACE_ATTRIBUTES:
        value = attribute(attributes, name) or header(attributes, name)
        if value:
            found[name] = value
    return found


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_time(text: str | None) -> datetime | None:
    """A CloudEvents `time` (RFC 3339); None when absent or unparseable (latency is then unknown)."""
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class StructuredEvent:
    """A structured-mode event: its context attributes (unprefixed, as text) and its binary data."""

    attributes: dict[str, str]
    data: bytes
    extensions: dict[str, Any]  # every other member of the document, as parsed


class StructuredModeError(ValueError):
    """A body that claims structured mode but is not a usable JSON event."""


def parse_structured(body: bytes) -> StructuredEvent:
    """Parse an `application/cloudevents+json` body; StructuredModeError for anything malformed.

    Binary data (an image) travels in `data_base64`, as the JSON event format requires; a `data`
    member holds JSON values, which no image is.
    """
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise StructuredModeError(f"a structured-mode CloudEvent must be a JSON object: {error}") from error
    if not isinstance(document, dict):
        raise StructuredModeError("a structured-mode CloudEvent must be a JSON object")
    if "data_base64" not in document:
        raise StructuredModeError("a structured-mode image request carries the image base64-encoded in data_base64")
    encoded = document.pop("data_base64")
    document.pop("data", None)
    if not isinstance(encoded, str):
        raise StructuredModeError("data_base64 must be a base64 string")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as error:
        raise StructuredModeError(f"data_base64 is not valid base64: {error}") from error
    attributes = {k: v for k, v in document.items() if isinstance(v, str)}
    extensions = {k: v for k, v in document.items() if not isinstance(v, str)}
    return StructuredEvent(attributes, data, extensions)
