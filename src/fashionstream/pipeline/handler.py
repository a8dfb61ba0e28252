"""The one seam between the model service and a model: a `ModelHandler`.

Modelled on Apache Beam's RunInference `ModelHandler`: a handler says how to load its model,
how to turn a request's image into model input, and how to run a batch. The service owns
everything around that (batching, isolating a failing input by bisection, metrics, dead
letters), so a new kind of model is one new handler class, and tests substitute a fake one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar, runtime_checkable

import numpy as np
import numpy.typing as npt

from fashionstream.classifier.predictor import Prediction
from fashionstream.pipeline.contract import Request

if TYPE_CHECKING:
    from fashionstream.classifier.predictor import Predictor

Pixels = npt.NDArray[np.uint8]  # (28, 28) grey, the model's input for one image
ModelT = TypeVar("ModelT")
ModelT_contra = TypeVar("ModelT_contra", contravariant=True)


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
        """One prediction per input, in order; raise if the batch cannot be processed.

        Called from several threads at once (the service's model threads, and its loop for small
        batches), so it must be thread-safe; an ONNX Runtime session is.
        """
        ...


@runtime_checkable
class ReloadableModelHandler(Protocol[ModelT_contra]):
    """What a handler adds so that the service can replace its model while serving (`pipeline.reload`).

    Optional: a handler without these methods serves one model for the life of the service.
    """

    def model_files(self) -> list[Path]:
        """The files the model is loaded from; a change of any of them asks for a reload."""
        ...

    def check_model(self, model: ModelT_contra) -> None:
        """Raise ValueError, naming the fault, if `model` does not fit the service (input shape, classes)."""
        ...

    def model_info(self, model: ModelT_contra) -> dict[str, str]:
        """Facts about the model for the `fashionstream_model_info` gauge, keyed by `metrics.MODEL_INFO_FIELDS`."""
        ...


class OnnxModelHandler:
    """An exported classifier served by ONNX Runtime through the torch-free `Predictor`."""

    def __init__(self, path: str | Path | None = None, *, threads: int | None = None) -> None:
        self.path = path  # None: the shipped model
        self.threads = threads

    def load_model(self) -> Predictor:
        from fashionstream.classifier.predictor import Predictor

        # No busy-waiting between batches: the service's own thread and the broker need that core.
        return Predictor.load(self.path, threads=self.threads, spin_wait=False)

    def model_id(self, model: Predictor) -> str:
        return model.model_id

    def to_pixels(self, request: Request) -> Pixels:
        from fashionstream.classifier.predictor import Predictor

        # Raises InvalidImageError, an InvalidInput carrying its Reason, for what cannot be an image.
        return Predictor.to_pixels(request.image, raw=request.raw)

    def run_inference(self, batch: Sequence[Pixels], model: Predictor) -> list[Prediction]:
        return model.predict_pixels(np.stack(batch))  # (N, 28, 28) uint8

    def model_files(self) -> list[Path]:
        from fashionstream.classifier.predictor import resolve_model_files

        # Resolved each time: a card may be edited to name another .onnx file.
        return list(resolve_model_files(self.path))

    def check_model(self, model: Predictor) -> None:
        # What the model is served by: its embedded metadata, else its card, else the defaults.
        input_spec, classes = model.input_spec, len(model.class_names)
        inputs, outputs = model.graph_signature()
        # The service feeds (N, 28, 28) uint8 pixels that `model_input` turns into (N, 1, 28, 28).
        if tuple(input_spec.shape[1:]) != (1, 28, 28):
            raise ValueError(f"declared input shape {input_spec.shape} is not (N, 1, 28, 28)")
        if len(inputs) != 1 or inputs[0][0] != input_spec.name:
            raise ValueError(f"graph inputs {inputs} are not the one input {input_spec.name!r} the model declares")
        graph_shape = inputs[0][1]
        if len(graph_shape) != 4 or any(
            isinstance(dim, int) and dim != want for dim, want in zip(graph_shape[1:], (1, 28, 28), strict=True)
        ):
            raise ValueError(f"graph input {input_spec.name!r} has shape {graph_shape}, not (N, 1, 28, 28)")
        scores_shape = outputs[0][1] if len(outputs) == 1 else ()
        if len(scores_shape) != 2 or (isinstance(scores_shape[1], int) and scores_shape[1] != classes):
            raise ValueError(f"graph outputs {outputs} are not one score for each of the model's {classes} classes")

    def model_info(self, model: Predictor) -> dict[str, str]:
        if model.has_card:  # the full record: creation time and quantisation are only there
            card = model.card
            quantization = card.quantization
            return {
                "name": card.name,
                "created_utc": card.created_utc,
                "test_accuracy": f"{card.test.accuracy:.4f}",
                "params": str(card.params),
                "macs": str(card.macs),
                "quantization": f"{quantization.format} {quantization.weight_type}" if quantization else "none",
            }
        described = model.description
        unknown = "unknown"
        return {
            "name": described.name if described else unknown,
            "created_utc": unknown,
            "test_accuracy": f"{described.test_accuracy:.4f}" if described else unknown,
            "params": str(described.params) if described else unknown,
            "macs": str(described.macs) if described else unknown,
            "quantization": unknown,
        }
