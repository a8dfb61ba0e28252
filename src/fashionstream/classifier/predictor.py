"""Classify images with an exported model: ONNX Runtime + the model card, no torch.

    >>> from fashionstream.classifier.predictor import Predictor
    >>> predictor = Predictor.load()                  # the shipped fashion-cnn.onnx + its card
    >>> predictor.predict(open("shoe.png", "rb").read())
    Prediction(label=7, class_name='Sneaker', confidence=0.97, probabilities=(...))

Inputs and how they are converted to the model's 28×28 grey pixels (`to_pixels`):

- encoded image bytes (PNG, JPEG, anything Pillow reads) or a `PIL.Image.Image` of any size or
  mode: alpha is composited onto black, colour converted to grey (ITU-R 601 luma), and the image
  resized to 28×28 *without* keeping the aspect ratio (area averaging when shrinking,
  bilinear when enlarging);
- raw pixels: `bytes` of length 784 with ``raw=True`` (row-major uint8), or a numpy array of shape
  (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); uint8 is taken as is, float arrays with values in
  [0, 1] are scaled by 255, other float/integer arrays are clipped to [0, 255];
- the model was trained on Fashion-MNIST: a light garment on a black background. A photo of a dark
  item on white should be inverted by the caller (`255 - pixels`).

Bad input raises `InvalidImageError`, a `fashionstream.reasons.InvalidInput` whose `reason` is a
`Reason` (EMPTY, NOT_AN_IMAGE, TRUNCATED, TOO_LARGE or BAD_SHAPE), so the model service dead-letters it
with that reason unchanged. Image dimensions are checked from the header *before* any pixel is
decoded, so a 20,000×20,000 PNG is refused in microseconds without using memory.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import io
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from fashionstream.classifier.card import InputSpec, ModelCard, ModelCardError
from fashionstream.reasons import InvalidInput, Reason

DEFAULT_MODEL_NAME = "fashion-cnn"
MAX_SIDE = 4096  # pixels per side an input image may have
MAX_PIXELS = 16 * 1024 * 1024  # and in total (a 4096×4096 image is exactly this)
_CHUNK = 1024  # images per ONNX Runtime call: bounds memory for huge batches


class InvalidImageError(InvalidInput):
    """An input that cannot be turned into a 28×28 grey image; `reason` is a `Reason`, `detail` says why."""


class ModelNotFoundError(FileNotFoundError):
    """No model file or card where one was expected."""


@dataclass(frozen=True)
class Prediction:
    """One image's class: the package's prediction type, from the Predictor to the pipeline's messages."""

    label: int
    class_name: str
    confidence: float
    probabilities: tuple[float, ...]


def shipped_model_path() -> Path:
    """The default model shipped inside the package (`fashionstream/models/`, see its docstring)."""
    resource = importlib.resources.files("fashionstream.models") / f"{DEFAULT_MODEL_NAME}.onnx"
    # ONNX Runtime and the card's relative file names need a real file: installed from a wheel or run
    # from a checkout the package is a folder, so the resource is one; a zipped install is not.
    if not isinstance(resource, Path) or not resource.is_file():
        raise ModelNotFoundError(
            f"the shipped model {DEFAULT_MODEL_NAME}.onnx is not a file in this installation ({resource}); "
            "reinstall fashionstream from its wheel, or pass a model path or set $FASHIONSTREAM_MODEL"
        )
    return resource


def default_model_path() -> Path:
    """$FASHIONSTREAM_MODEL if set, else the model shipped inside the package."""
    if env := os.environ.get("FASHIONSTREAM_MODEL"):
        return Path(env).expanduser()
    return shipped_model_path()


def resolve_model_files(path: str | Path | None) -> tuple[Path, Path]:
    """(onnx file, card file) from an .onnx path, a .card.json path, or None (the default model)."""
    path = default_model_path() if path is None else Path(path).expanduser()
    if path.name.endswith(".json"):
        card_path = path
        if not card_path.is_file():
            raise ModelNotFoundError(f"model card {card_path} does not exist")
        onnx_path = card_path.parent / ModelCard.read(card_path).onnx_file
    else:
        onnx_path = path
        card_path = path.with_name(path.name.removesuffix(".onnx") + ".card.json")
    if not onnx_path.is_file():
        raise ModelNotFoundError(f"model file {onnx_path} does not exist")
    if not card_path.is_file():
        raise ModelNotFoundError(
            f"model card {card_path} does not exist; export writes it next to the .onnx file "
            "(it holds class names and input normalisation)"
        )
    return onnx_path, card_path


def _check_size(width: int, height: int) -> None:
    if width <= 0 or height <= 0:
        raise InvalidImageError(Reason.BAD_SHAPE, f"image is {width}×{height} pixels")
    if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
        raise InvalidImageError(
            Reason.TOO_LARGE,
            f"image is {width}×{height} pixels; at most {MAX_SIDE} per side and {MAX_PIXELS:,d} in total",
        )


def _open_image(data: bytes) -> Image.Image:
    """Decode image bytes, checking the header's dimensions before decoding pixels."""
    if not data:
        raise InvalidImageError(Reason.EMPTY, "no bytes")
    with warnings.catch_warnings():
        # Our own limit is stricter than Pillow's decompression-bomb warning; silence the latter.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))  # lazy: reads the header only
        except UnidentifiedImageError as exc:
            detail = f"{len(data)} bytes not recognised as an image format"
            raise InvalidImageError(Reason.NOT_AN_IMAGE, detail) from exc
        except Image.DecompressionBombError as exc:
            raise InvalidImageError(Reason.TOO_LARGE, str(exc)) from exc
        except (OSError, SyntaxError, ValueError) as exc:  # some plugins raise these on a broken header
            raise InvalidImageError(Reason.TRUNCATED, f"cannot read the image header: {exc}") from exc
        _check_size(*image.size)
        try:
            image.load()  # decode now, so that truncation is reported here and not later
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise InvalidImageError(
                Reason.TRUNCATED, f"{image.format} image of {len(data)} bytes cannot be decoded: {exc}"
            ) from exc
    return image


def _image_to_pixels(image: Image.Image) -> np.ndarray:
    _check_size(*image.size)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))  # transparent = the black background
        image = Image.alpha_composite(background, rgba)
    if image.mode not in ("L",):
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            array = np.asarray(image, dtype=np.float64)
            image = Image.fromarray(_to_uint8(array))
        else:
            image = image.convert("L")
    if image.size != (28, 28):
        # Shrinking: BOX averages every source pixel into its target (no aliasing, exact for integer
        # factors); enlarging a small image: bilinear.
        shrinking = image.size[0] >= 28 and image.size[1] >= 28
        image = image.resize((28, 28), Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8).copy()  # (28, 28)


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise InvalidImageError(Reason.BAD_SHAPE, "array contains NaN or infinity")
        if array.size and array.min() >= 0.0 and array.max() <= 1.0:
            array = array * 255.0
        return np.clip(np.rint(array), 0, 255).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        return np.clip(array, 0, 255).astype(np.uint8)
    raise InvalidImageError(Reason.BAD_SHAPE, f"array dtype {array.dtype} is not a number type")


def _array_to_pixels(array: np.ndarray) -> np.ndarray:
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise InvalidImageError(Reason.BAD_SHAPE, f"array of shape {array.shape}; expected (H, W) or (H, W, 1|3|4)")
    height, width = array.shape[:2]
    _check_size(width, height)
    pixels = _to_uint8(array)
    if pixels.shape == (28, 28):
        return np.ascontiguousarray(pixels)
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    # uint8 (H, W) -> mode L, (H, W, 3) -> RGB, (H, W, 4) -> RGBA
    return _image_to_pixels(Image.fromarray(np.ascontiguousarray(pixels)))


def model_input(pixels: np.ndarray, spec: InputSpec) -> np.ndarray:
    """uint8 pixels (n, 28, 28) → the model's float32 input (n, 1, 28, 28), normalised as its card says.

    Serving and quantisation calibration both use it, so an int8 model is calibrated on exactly the
    values it will be served.
    """
    x = (pixels.astype(np.float32) / 255.0 - spec.mean) / spec.std  # (n, 28, 28)
    return x[:, None, :, :]


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


class Predictor:
    """An exported classifier: ONNX Runtime session + model card. Thread-safe for concurrent `predict` calls."""

    def __init__(self, session: Any, card: ModelCard, model_id: str) -> None:
        self._session = session
        self._card = card
        self._model_id = model_id

    @classmethod
    def load(cls, path: str | Path | None = None, *, threads: int | None = None) -> Predictor:
        """Load the .onnx model and its .card.json (either path works; None = the shipped model).

        threads: ONNX Runtime intra-op threads; default min(2, CPU count) — on a 2-core box more
        threads only contend with the broker client and the batcher.
        """
        import onnxruntime as ort

        onnx_path, card_path = resolve_model_files(path)
        card = ModelCard.read(card_path)
        model_bytes = onnx_path.read_bytes()
        digest = hashlib.sha256(model_bytes).hexdigest()
        if card.model_sha256 != digest:
            raise ModelCardError(
                f"{onnx_path} does not match its card {card_path}: SHA-256 {digest[:12]}…, "
                f"card says {card.model_sha256[:12]}…; re-export the model or restore the matching pair"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads if threads else min(2, os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(model_bytes, sess_options=options, providers=["CPUExecutionProvider"])
        return cls(session, card, f"{card.name}@{digest[:12]}")

    @property
    def card(self) -> ModelCard:
        return self._card

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def class_names(self) -> tuple[str, ...]:
        return self._card.class_names

    @staticmethod
    def to_pixels(image: bytes | bytearray | np.ndarray | Image.Image, *, raw: bool = False) -> np.ndarray:
        """Any supported input → uint8 (28, 28) grey pixels (see the module docstring)."""
        if isinstance(image, bytes | bytearray | memoryview):
            data = bytes(image)
            if raw:
                if len(data) != 28 * 28:
                    raise InvalidImageError(Reason.BAD_SHAPE, f"raw pixels must be 784 bytes (28×28), got {len(data)}")
                return np.frombuffer(data, dtype=np.uint8).reshape(28, 28).copy()
            return _image_to_pixels(_open_image(data))
        if isinstance(image, np.ndarray):
            return _array_to_pixels(image)
        if isinstance(image, Image.Image):
            return _image_to_pixels(image)
        raise InvalidImageError(Reason.NOT_AN_IMAGE, f"cannot classify a {type(image).__name__}")

    def predict_pixels(self, batch: np.ndarray) -> list[Prediction]:
        """Classify uint8 pixels of shape (N, 28, 28)."""
        if (
            not isinstance(batch, np.ndarray)
            or batch.dtype != np.uint8
            or batch.ndim != 3
            or batch.shape[1:] != (28, 28)
        ):
            shape = getattr(batch, "shape", None)
            raise InvalidImageError(
                Reason.BAD_SHAPE, f"expected uint8 (N, 28, 28), got {getattr(batch, 'dtype', type(batch))} {shape}"
            )
        probs = self.probabilities(batch)  # (N, C)
        labels = probs.argmax(axis=1)
        return [
            Prediction(int(k), self._card.class_names[k], float(p[k]), tuple(float(v) for v in p))
            for k, p in zip(labels, probs, strict=True)
        ]

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """uint8 (N, 28, 28) → float32 class probabilities (N, C)."""
        spec, logits = self._card.input, self._card.output.kind == "logits"
        out = []
        for start in range(0, len(batch), _CHUNK):
            (scores,) = self._session.run(None, {spec.name: model_input(batch[start : start + _CHUNK], spec)})  # (n, C)
            out.append(_softmax(scores) if logits else scores)
        if not out:
            return np.zeros((0, len(self._card.class_names)), dtype=np.float32)
        return np.concatenate(out).astype(np.float32)

    def predict(self, image: bytes | np.ndarray | Image.Image, *, raw: bool = False) -> Prediction:
        return self.predict_pixels(self.to_pixels(image, raw=raw)[None])[0]

    def predict_batch(self, images: Iterable[bytes | np.ndarray | Image.Image] | Sequence[Any]) -> list[Prediction]:
        """Classify several images; the first invalid one raises InvalidImageError."""
        pixels = [self.to_pixels(image) for image in images]
        if not pixels:
            return []
        return self.predict_pixels(np.stack(pixels))
