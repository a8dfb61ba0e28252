"""The served model: the classifier's `Predictor` behind the `ModelHandler` contract.

The service sees only `ServingModel`: turn a request's bytes into pixels (or a
reason to dead-letter it) and classify batches of pixels. Tests of the service
logic can substitute anything with the same shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from fashionstream.pipeline.batcher import BatchInference, Failed
from fashionstream.pipeline.contract import InvalidRequest, Reason, Request

if TYPE_CHECKING:
    from fashionstream.classifier.predictor import Predictor

Pixels = npt.NDArray[np.uint8]  # (28, 28)


@dataclass(frozen=True)
class Classified:
    """One model answer, independent of the classifier's own types."""

    label: int
    class_name: str
    confidence: float
    probabilities: list[float]


class ServingModel(Protocol):
    model_id: str
    card: dict[str, Any]

    def decode(self, request: Request) -> Pixels:
        """The request's image as (28, 28) uint8 pixels; InvalidRequest with a reason if impossible."""
        ...

    def classify(self, batch: Sequence[Pixels]) -> list[Classified | Failed]:
        """One outcome per input; an input that fails alone comes back as `Failed`."""
        ...


class PredictorHandler:
    """`ModelHandler[(28,28) uint8, Classified, Predictor]` over ONNX Runtime."""

    def __init__(self, path: str | Path | None = None, *, threads: int | None = None) -> None:
        self.path = path
        self.threads = threads

    def load_model(self) -> Predictor:
        from fashionstream.classifier.predictor import Predictor

        return Predictor.load(self.path, threads=self.threads)

    def run_inference(self, batch: Sequence[Pixels], model: Predictor) -> list[Classified]:
        stacked = np.stack(batch)  # (N, 28, 28) uint8
        return [
            Classified(int(p.label), str(p.class_name), float(p.confidence), [float(x) for x in p.probabilities])
            for p in model.predict_pixels(stacked)
        ]


class PredictorModel:
    """The shipped (or a given) ONNX model, ready to serve."""

    def __init__(self, path: str | Path | None = None, *, threads: int | None = None) -> None:
        self._inference: BatchInference[Pixels, Classified, Predictor] = BatchInference(
            PredictorHandler(path, threads=threads)
        )
        predictor = self._inference.model
        self.predictor = predictor
        self.model_id: str = str(predictor.model_id)
        self.card: dict[str, Any] = dict(predictor.card)

    def decode(self, request: Request) -> Pixels:
        from fashionstream.classifier.predictor import InvalidImageError

        try:
            pixels = self.predictor.to_pixels(request.image, raw=request.raw)
        except InvalidImageError as error:
            reason = str(getattr(error, "reason", Reason.NOT_AN_IMAGE))
            detail = str(getattr(error, "detail", "") or error)
            raise InvalidRequest(reason, detail) from error
        return np.asarray(pixels, dtype=np.uint8)

    def classify(self, batch: Sequence[Pixels]) -> list[Classified | Failed]:
        return self._inference.run(batch)

    @property
    def model_calls(self) -> int:
        return self._inference.model_calls
