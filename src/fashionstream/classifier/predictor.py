"""Classify images with an exported model: ONNX Runtime + the model card, no torch.

    >>> from fashionstream.classifier.predictor import Predictor
    >>> predictor = Predictor.load()                  # the shipped fashion-cnn.onnx + its card
    >>> predictor.predict(open("shoe.png", "rb").read())
    Prediction(label=7, class_name='Sneaker', confidence=0.97, probabilities=(...))

Inputs and how they are converted to the model's 28×28 grey pixels (`to_pixels`):

- encoded image bytes: PNG or JPEG, told by their content whatever anyone calls them (`DECODED_FORMATS`;
  other formats are refused unparsed, see below; pass ``formats=None`` to read anything Pillow reads, or
  open the file with Pillow yourself and pass the `PIL.Image.Image`);
- a `PIL.Image.Image` of any size and of any mode Pillow converts to grey:
  L as is; 1 (bi-level) as 0 and 255; 16-bit grey (I;16, I;16B, I;16L, I;16N) and 32-bit integer I, which
  Pillow's decoders use for 16-bit files, scaled by 255/65535 (I clipped to 0–65535 first); float F like
  a float array (below); anything with alpha or a transparent colour (LA, RGBA, PA, P or L or RGB with
  transparency, premultiplied La and RGBa) composited onto black, the dataset's background; colour (RGB,
  P, CMYK, YCbCr, …) turned into ITU-R 601 luma. The grey image is then resized to 28×28 *without* keeping
  the aspect ratio (area averaging when shrinking, bilinear when enlarging);
- raw pixels: `bytes` of length 784 with ``raw=True`` (row-major uint8), or a numpy array of shape
  (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); uint8 is taken as is, uint16 scaled by 255/65535 (a 16-bit
  image), float arrays with values in [0, 1] are scaled by 255, other float/integer arrays are clipped to
  [0, 255];
- the model was trained on Fashion-MNIST: a light garment on a black background. A photo of a dark
  item on white should be inverted by the caller (`255 - pixels`).

What cannot be a picture of one garment is refused rather than answered: an image (or array) must have at
least `MIN_SIDE` (8) pixels a side and an aspect ratio of at most `MAX_ASPECT` (4:1). Measured on 1,000
Fashion-MNIST test images with the shipped model (96 % as they are): shrunk to 7×7 and below, accuracy
falls to 37 % and under (11–12 % at 1–2 px, i.e. chance); a garment in a frame wider or taller than 4:1,
squeezed to the square input, is recognised 26 % of the time or less, barely above chance. An answer at
those odds is noise that looks like a result, so such input is refused with `Reason.BAD_SHAPE`.

Bad input raises `InvalidImageError`, a `fashionstream.reasons.InvalidInput` whose `reason` is a
`Reason` (EMPTY, NOT_AN_IMAGE, UNSUPPORTED_CONTENT_TYPE for a recognised image format other than PNG or
JPEG, TRUNCATED, TOO_LARGE or BAD_SHAPE), so the model service dead-letters it with that reason
unchanged. Image dimensions are checked from the header *before* any pixel is decoded, so a
20,000×20,000 PNG is refused in microseconds without using memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import io
import os
import warnings
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from fashionstream.classifier.card import EmbeddedCard, InputSpec, ModelCard, ModelCardError, OutputSpec
from fashionstream.classifier.fashion_mnist_files import CLASS_NAMES, FASHION_MNIST_MEAN, FASHION_MNIST_STD
from fashionstream.classifier.png import read_plain_grey
from fashionstream.reasons import InvalidInput, Reason

DEFAULT_MODEL_NAME = "fashion-cnn"
MAX_SIDE = 4096  # pixels per side an input image may have
MAX_PIXELS = 16 * 1024 * 1024  # and in total (a 4096×4096 image is exactly this)
MIN_SIDE = 8  # pixels per side an input image must have (see the module docstring for why)
MAX_ASPECT = 4  # longest side / shortest side at most this
# The image formats whose decoders may run on bytes handed to `to_pixels` (Pillow format names). The
# pipeline's contract (docs/pipeline.md) promises that no other image parser touches a request.
DECODED_FORMATS = ("PNG", "JPEG")
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


def shipped_model_names() -> list[str]:
    """Names of the models shipped inside the package, usable as `--model NAME`."""
    folder = importlib.resources.files("fashionstream.models")
    return sorted(entry.name.removesuffix(".onnx") for entry in folder.iterdir() if entry.name.endswith(".onnx"))


def shipped_model_path(name: str = DEFAULT_MODEL_NAME) -> Path:
    """A model shipped inside the package (`fashionstream/models/`, see its docstring), by name."""
    resource = importlib.resources.files("fashionstream.models") / f"{name}.onnx"
    # ONNX Runtime and the card's relative file names need a real file: installed from a wheel or run
    # from a checkout the package is a folder, so the resource is one; a zipped install is not.
    if not isinstance(resource, Path) or not resource.is_file():
        raise ModelNotFoundError(
            f"the shipped model {name}.onnx is not a file in this installation ({resource}); "
            "reinstall fashionstream from its wheel, or pass a model path or set $FASHIONSTREAM_MODEL"
        )
    return resource


def default_model_path() -> Path:
    """$FASHIONSTREAM_MODEL if set, else the model shipped inside the package."""
    if env := os.environ.get("FASHIONSTREAM_MODEL"):
        return Path(env).expanduser()
    return shipped_model_path()


def card_path_of(onnx_path: Path) -> Path:
    """Where the card of a model file lives: `<name>.card.json` beside `<name>.onnx`."""
    return onnx_path.with_name(onnx_path.name.removesuffix(".onnx") + ".card.json")


def find_model_files(path: str | Path | None) -> tuple[Path, Path | None]:
    """(onnx file, card file or None when there is none beside it) from an .onnx path, a .card.json path,
    a shipped model's name (`shipped_model_names`) or None (the default model)."""
    if isinstance(path, str) and path in shipped_model_names() and not Path(path).exists():
        path = shipped_model_path(path)  # a shipped model by name, e.g. "fashion-cnn-int8"
    path = default_model_path() if path is None else Path(path).expanduser()
    if path.name.endswith(".json"):
        card_path: Path | None = path
        if not path.is_file():
            raise ModelNotFoundError(f"model card {path} does not exist")
        onnx_path = path.parent / ModelCard.read(path).onnx_file
    else:
        onnx_path = path
        card_path = card_path_of(path) if card_path_of(path).is_file() else None
    if not onnx_path.is_file():
        raise ModelNotFoundError(f"model file {onnx_path} does not exist")
    return onnx_path, card_path


def resolve_model_files(path: str | Path | None) -> tuple[Path, Path]:
    """(onnx file, card file) as `find_model_files` finds them, for tools that need the card itself."""
    onnx_path, card_path = find_model_files(path)
    if card_path is None:
        raise ModelNotFoundError(
            f"model card {card_path_of(onnx_path)} does not exist; export writes it next to the .onnx file "
            "(it records how the model was made and scored)"
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
    if min(width, height) < MIN_SIDE:
        raise InvalidImageError(
            Reason.BAD_SHAPE,
            f"image is {width}×{height} pixels; each side must have at least {MIN_SIDE} to show a garment",
        )
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise InvalidImageError(
            Reason.BAD_SHAPE,
            f"image is {width}×{height} pixels, {max(width, height) / min(width, height):.1f}:1; "
            f"the aspect ratio may be at most {MAX_ASPECT}:1 to show a garment",
        )


# Signatures of image formats that are not decoded, to say what a refused file is without parsing it.
_OTHER_FORMATS = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"8BPS", "PSD"),
    (b"qoif", "QOI"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xffO\xffQ", "JPEG 2000"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"DDS ", "DDS"),
)


def _other_format(data: bytes) -> str | None:
    """The name of the image format `data` starts like, for a format other than PNG and JPEG; else None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[4:8] == b"ftyp" and data[8:12] in (b"avif", b"avis", b"heic", b"heix", b"mif1", b"msf1"):
        return "AVIF/HEIF"
    if len(data) > 2 and data[:1] == b"P" and data[1:2] in b"1234567" and data[2:3] in b" \t\r\n#":
        return "Netpbm"
    return next((name for signature, name in _OTHER_FORMATS if data.startswith(signature)), None)


def _open_image(data: bytes, formats: Collection[str] | None = DECODED_FORMATS) -> Image.Image:
    """Decode image bytes, checking the header's dimensions before decoding pixels.

    Only the decoders of `formats` (None: every format Pillow reads) see the bytes: what they do not
    recognise is refused, as UNSUPPORTED_CONTENT_TYPE when its signature names another image format.
    """
    if not data:
        raise InvalidImageError(Reason.EMPTY, "no bytes")
    with warnings.catch_warnings():
        # Our own limit is stricter than Pillow's decompression-bomb warning; silence the latter.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=None if formats is None else list(formats))  # header only
        except UnidentifiedImageError as exc:
            other = _other_format(data) if formats is not None else None
            if other is not None:
                raise InvalidImageError(
                    Reason.UNSUPPORTED_CONTENT_TYPE,
                    f"{len(data)} bytes of a {other} image; only {' and '.join(formats or ())} images are "
                    "accepted, whatever the content type says",
                ) from exc
            accepted = f" ({', '.join(formats)})" if formats is not None else ""
            detail = f"{len(data)} bytes not recognised as an image format{accepted}"
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


_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA")


def _scale_16bit(values: np.ndarray) -> np.ndarray:
    """16-bit grey levels (0-65535) → uint8 by 255/65535, rounded: v × 257 becomes exactly v."""
    scaled: np.ndarray = np.rint(np.clip(values, 0, 65535) * (255 / 65535)).astype(np.uint8)
    return scaled


def _grey(image: Image.Image) -> Image.Image:
    """An image of any mode as mode L (see the module docstring for what each mode becomes)."""
    mode, transparency = image.mode, image.info.get("transparency")
    if mode == "L" and transparency is None:
        return image
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        values = np.asarray(image).astype(np.int64)  # I;16*: uint16 in any byte order; I: int32
        if isinstance(transparency, int):
            values[values == transparency] = 0  # a 16-bit file's transparent grey level: the black background
        return Image.fromarray(_scale_16bit(values))
    if mode == "F":
        return Image.fromarray(_to_uint8(np.asarray(image, dtype=np.float64)))
    if mode == "La":  # premultiplied alpha: the grey band is already composited onto black
        return image.getchannel(0)
    if mode == "RGBa":
        return Image.merge("RGB", image.split()[:3]).convert("L")
    try:
        if mode in _ALPHA_MODES or transparency is not None:
            rgba = image.convert("RGBA")  # P's transparent index or table, L's and RGB's transparent colour
            background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))  # transparent = the black background
            image = Image.alpha_composite(background, rgba)
        return image.convert("L")
    except ValueError as exc:  # a mode Pillow cannot turn into grey (e.g. LAB)
        raise InvalidImageError(Reason.BAD_SHAPE, f"an image of mode {mode} cannot be converted to grey") from exc


def _image_to_pixels(image: Image.Image) -> np.ndarray:
    _check_size(*image.size)
    image = _grey(image)
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
    if array.dtype == np.uint16:  # a 16-bit image: scaled, not clipped (clipping makes a silhouette)
        return _scale_16bit(array)
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


GraphTensor = tuple[str, tuple[int | str | None, ...]]  # (name, shape) of a graph input or output


def default_threads() -> int:
    """CPU threads for the model unless told otherwise: 2, or 1 on a 1-core machine. On a 2-core box more
    only contend with the broker client and the code around the model."""
    return min(2, os.cpu_count() or 1)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


class MissingMetadataWarning(UserWarning):
    """A model file that does not carry its card's essentials: it is served from its card or from the defaults."""


# What a model file with neither embedded metadata nor a card is taken to be: a Fashion-MNIST classifier
# as `fashionstream export` writes it (the input and output names are read from its graph).
DEFAULT_INPUT = InputSpec(
    name="images",
    shape=(None, 1, 28, 28),
    dtype="float32",
    layout="NCHW, grey, light object on black background",
    normalisation="x = (pixel / 255 - mean) / std",
    mean=FASHION_MNIST_MEAN,
    std=FASHION_MNIST_STD,
)
DEFAULT_OUTPUT = OutputSpec(name="logits", kind="logits", shape=(None, len(CLASS_NAMES)))


@dataclass(frozen=True)
class _Serving:
    """What running the model needs: class names, how to feed it and what it returns."""

    class_names: tuple[str, ...]
    input: InputSpec
    output: OutputSpec


def describe_model(
    onnx_path: Path, embedded: EmbeddedCard | None, card: ModelCard | None, card_path: Path | None
) -> EmbeddedCard | None:
    """The description a model is served by: the file's embedded metadata, checked against its card.

    Both present: they must agree field for field, or ModelCardError names both files and every field
    that differs (which one is right cannot be told, so neither is served). Only the card: it is used,
    with a MissingMetadataWarning. Neither: None (the caller serves the defaults), with a warning.
    """
    if embedded is not None and card is not None:
        differences = embedded.differences(card.embedded())
        if differences:
            raise ModelCardError(
                f"the metadata embedded in {onnx_path} and its card {card_path} disagree on "
                f"{'; '.join(differences)} (file against card); embed the card in the file again "
                f"(python -m fashionstream.classifier.embed {onnx_path}) or restore the matching pair"
            )
        return embedded
    if embedded is not None:
        return embedded
    if card is not None:
        warnings.warn(
            MissingMetadataWarning(
                f"{onnx_path} carries no embedded model metadata; serving it as its card {card_path} describes it. "
                f"Embed the card in the file: python -m fashionstream.classifier.embed {onnx_path}"
            ),
            stacklevel=3,
        )
        return card.embedded()
    warnings.warn(
        MissingMetadataWarning(
            f"{onnx_path} carries no embedded model metadata and has no card {card_path_of(onnx_path)}; serving it "
            f"as a Fashion-MNIST classifier: classes {', '.join(CLASS_NAMES)}; input (N, 1, 28, 28) float32, "
            f"(pixel / 255 - {DEFAULT_INPUT.mean}) / {DEFAULT_INPUT.std}; output logits. If it was trained "
            "otherwise its answers are wrong: export it with `fashionstream export`"
        ),
        stacklevel=3,
    )
    return None


class Predictor:
    """An exported classifier: ONNX Runtime session + what its file (and card) say about it.

    Thread-safe for concurrent `predict` calls.
    """

    def __init__(
        self,
        session: Any,
        serving: _Serving,
        description: EmbeddedCard | None,
        card: ModelCard | None,
        card_path: Path,
        model_id: str,
    ) -> None:
        self._session = session
        self._serving = serving
        self._description = description
        self._card = card
        self._card_path = card_path
        self._model_id = model_id

    @classmethod
    def load(cls, path: str | Path | None = None, *, threads: int | None = None, spin_wait: bool = True) -> Predictor:
        """Load an .onnx model (a .card.json path loads the model it names; None = the shipped model).

        What serving needs comes from the metadata embedded in the file; the card beside it, when
        there is one, must match the file (SHA-256) and agree with that metadata (`describe_model`).
        A file without metadata is served from its card, and one with neither as a Fashion-MNIST
        classifier (`DEFAULT_INPUT`, `DEFAULT_OUTPUT`), each with a MissingMetadataWarning.

        threads: ONNX Runtime intra-op threads; default min(2, CPU count) — on a 2-core box more
        threads only contend with the broker client and the batcher.
        spin_wait: whether ONNX Runtime's pool threads busy-wait for the next batch after each run
        (its default). That is fastest for a model running back to back, but in the model service
        the spinning thread holds a core the receive/decode/publish thread and the broker need
        (about 0.3 ms of CPU per image, measured draining Kafka), so the service turns it off.
        """
        import onnxruntime as ort

        onnx_path, card_path = find_model_files(path)
        card = ModelCard.read(card_path) if card_path is not None else None
        model_bytes = onnx_path.read_bytes()
        digest = hashlib.sha256(model_bytes).hexdigest()
        if card is not None and card.model_sha256 != digest:
            raise ModelCardError(
                f"{onnx_path} does not match its card {card_path}: SHA-256 {digest[:12]}…, "
                f"card says {card.model_sha256[:12]}…; re-export the model or restore the matching pair"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads if threads else default_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin_wait else "0")
        session = ort.InferenceSession(model_bytes, sess_options=options, providers=["CPUExecutionProvider"])
        embedded = EmbeddedCard.from_metadata(session.get_modelmeta().custom_metadata_map, source=str(onnx_path))
        description = describe_model(onnx_path, embedded, card, card_path)
        if description is not None:
            serving = _Serving(description.class_names, description.input, description.output)
            name = description.name
        else:
            (graph_input,), graph_outputs = session.get_inputs(), session.get_outputs()  # a 2-input graph fails here
            serving = _Serving(
                CLASS_NAMES,
                dataclasses.replace(DEFAULT_INPUT, name=graph_input.name),
                dataclasses.replace(DEFAULT_OUTPUT, name=graph_outputs[0].name),
            )
            name = onnx_path.name.removesuffix(".onnx")
        return cls(session, serving, description, card, card_path or card_path_of(onnx_path), f"{name}@{digest[:12]}")

    @property
    def description(self) -> EmbeddedCard | None:
        """The card's essentials this model is served by: embedded in its file, else from its card;
        None only for a model with neither, served with the defaults."""
        return self._description

    @property
    def card(self) -> ModelCard:
        """The model's card, the full record; ModelNotFoundError for a model loaded without one."""
        if self._card is None:
            raise ModelNotFoundError(
                f"model card {self._card_path} does not exist (the model was loaded from its file alone; "
                "`description` holds what the file says about itself)"
            )
        return self._card

    @property
    def has_card(self) -> bool:
        return self._card is not None

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def class_names(self) -> tuple[str, ...]:
        return self._serving.class_names

    @property
    def input_spec(self) -> InputSpec:
        """What the model takes and how pixels are normalised for it."""
        return self._serving.input

    def graph_signature(self) -> tuple[list[GraphTensor], list[GraphTensor]]:
        """(inputs, outputs) of the ONNX graph as (name, shape) pairs; a str or None dimension is dynamic.

        What the graph really takes, to hold against what its card says (a card can be copied beside
        the wrong graph with a matching hash only by mistake, but a swapped-in model must be checked).
        """
        inputs = [(node.name, tuple(node.shape)) for node in self._session.get_inputs()]
        outputs = [(node.name, tuple(node.shape)) for node in self._session.get_outputs()]
        return inputs, outputs

    @staticmethod
    def to_pixels(
        image: bytes | bytearray | np.ndarray | Image.Image,
        *,
        raw: bool = False,
        formats: Collection[str] | None = DECODED_FORMATS,
    ) -> np.ndarray:
        """Any supported input → uint8 (28, 28) grey pixels (see the module docstring).

        formats: the Pillow formats encoded bytes may be in (default PNG and JPEG, what the model
        service accepts); None reads every format Pillow reads.
        """
        if isinstance(image, bytes | bytearray | memoryview):
            data = bytes(image)
            if raw:
                if len(data) != 28 * 28:
                    raise InvalidImageError(Reason.BAD_SHAPE, f"raw pixels must be 784 bytes (28×28), got {len(data)}")
                return np.frombuffer(data, dtype=np.uint8).reshape(28, 28).copy()
            plain = read_plain_grey(data, max_pixels=28 * 28)
            if plain is not None and plain.shape == (28, 28):
                return plain  # the producer's form, a third of the general decoder's CPU (classifier/png.py)
            return _image_to_pixels(_open_image(data, formats))
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
            # tolist(): one call for the batch's Python ints and floats instead of one per element.
            Prediction(k, self._serving.class_names[k], p[k], tuple(p))
            for k, p in zip(labels.tolist(), probs.tolist(), strict=True)
        ]

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """uint8 (N, 28, 28) → float32 class probabilities (N, C)."""
        spec, logits = self._serving.input, self._serving.output.kind == "logits"
        out = []
        for start in range(0, len(batch), _CHUNK):
            (scores,) = self._session.run(None, {spec.name: model_input(batch[start : start + _CHUNK], spec)})  # (n, C)
            out.append(_softmax(scores) if logits else scores)
        if not out:
            return np.zeros((0, len(self._serving.class_names)), dtype=np.float32)
        return np.concatenate(out).astype(np.float32)

    def predict(self, image: bytes | np.ndarray | Image.Image, *, raw: bool = False) -> Prediction:
        return self.predict_pixels(self.to_pixels(image, raw=raw)[None])[0]

    def predict_batch(self, images: Iterable[bytes | np.ndarray | Image.Image] | Sequence[Any]) -> list[Prediction]:
        """Classify several images; the first invalid one raises InvalidImageError."""
        pixels = [self.to_pixels(image) for image in images]
        if not pixels:
            return []
        return self.predict_pixels(np.stack(pixels))
