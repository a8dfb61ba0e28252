"""Why an input is refused: the one list of machine-readable reasons, and the error that carries one.

The classifier refuses images it cannot turn into 28×28 grey pixels; the pipeline refuses
messages it cannot answer and sends them to the dead-letter topic. Both raise `InvalidInput`
with a `Reason`, so a reason is written once and travels unchanged from where it is found to
the dead letter's `error` attribute. This module imports nothing from the package, so every
part may use it without breaking the layering (pubsub and classifier below, pipeline on top).
"""

from __future__ import annotations

import enum


class Reason(enum.StrEnum):
    """A refused input's reason; the value is what the dead letter's `error` attribute says."""

    EMPTY = "empty"  # no bytes, or an empty image field
    TOO_LARGE = "too_large"  # over the message-size limit, or image dimensions over the pixel limit
    BAD_JSON = "bad_json"  # a JSON body that is not a request
    BAD_ATTRIBUTES = "bad_attributes"  # the CloudEvents envelope is missing or malformed (e.g. a non-UTF-8 id)
    UNSUPPORTED_EVENT = "unsupported_event"  # a CloudEvents specversion or event type this contract does not serve
    UNSUPPORTED_CONTENT_TYPE = "unsupported_content_type"  # a content type, or image content, not accepted
    NOT_AN_IMAGE = "not_an_image"  # bytes no image decoder recognises
    TRUNCATED = "truncated"  # an image file cut short
    BAD_SHAPE = "bad_shape"  # pixels that cannot become a 28×28 grey image (incl. < 8 px a side, beyond 4:1)
    MODEL_ERROR = "model_error"  # the model failed on this input even when run alone
    TOO_MANY_ATTEMPTS = "too_many_attempts"  # answering it failed --max-delivery-attempts times (a poison message)


class InvalidInput(ValueError):
    """An input that can never be answered: `reason` for machines, `detail` for people."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = Reason(reason)
        self.detail = detail
