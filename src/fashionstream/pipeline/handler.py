"""The one seam between the model service and a model: a `ModelHandler`.

Modelled on Apache Beam's RunInference `ModelHandler`: a handler says how to load its model,
how to turn a request's image into model input, and how to run a batch. The service owns
everything around that (batching, isolating a failing input by bisection, metrics, dead
letters), so a new kind of model is one new handler class, and tests substitute a fake one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from fashionstream.classifier.predictor import Prediction
from fashionstream.pipeline.contract import Request

if TYPE_CHECKING:
    from fashionstream.classifier.predictor import Predictor

Pixels = npt.NDArray[np.uint8]  # (28, 28) grey, the model's input for one image
ModelT = TypeVar("ModelT")


class ModelHandler(Protocol[ModelT]):
    """What the service needs of a model."""

    def load_model(self) -> ModelT:
        """Load the model; the service calls this once at start."""
        ...

    def model_id(self, model: ModelT) -> str:
        """The id every prediction carries, e.g. "fashion-cnn@4c192976c25d" (name@content hash)."""
        ...

    def to_pixels(self, request: Request) -> Pixels:
        """The request's image as model input; raise `fashionstream.reasons.InvalidInput` if impossible."""
        ...

    def run_inference(self, batch: Sequence[Pixels], model: ModelT) -> Sequence[Prediction]:
        """One prediction per input, in order; raise if the batch cannot be processed."""
        ...


class OnnxModelHandler:
    """An exported classifier served by ONNX Runtime through the torch-free `Predictor`."""

    def __init__(self, path: str | Path | None = None, *, threads: int | None = None) -> None:
        self.path = path  # None: the shipped model
        self.threads = threads

    def load_model(self) -> Predictor:
        from fashionstream.classifier.predictor import Predictor

        return Predictor.load(self.path, threads=self.threads)

    def model_id(self, model: Predictor) -> str:
        return model.model_id

    def to_pixels(self, request: Request) -> Pixels:
        from fashionstream.classifier.predictor import Predictor

        # Raises InvalidImageError, an InvalidInput carrying its Reason, for what cannot be an image.
        return Predictor.to_pixels(request.image, raw=request.raw)

    def run_inference(self, batch: Sequence[Pixels], model: Predictor) -> list[Prediction]:
        return model.predict_pixels(np.stack(batch))  # (N, 28, 28) uint8
