"""The model card: the JSON file beside every exported model, as one typed `ModelCard`.

    card = ModelCard.read("src/fashionstream/models/fashion-cnn.card.json")   # or Predictor.load().card
    card.class_names, card.input.mean, card.test.accuracy, card.macs

`fashionstream export` builds a `ModelCard` and writes it; the Predictor, `fashionstream evaluate`,
the model service and the benchmarks read it. A card holds what serving needs (class names, input
normalisation, output kind, the SHA-256 that ties it to its .onnx file) and what makes the model
comparable and reproducible (test accuracy, params, MACs, training command and config, data checksums,
library versions).

The file is `to_dict()` as JSON, field for field: reading and writing a card changes nothing. Every
field of format version 1 is required (a field that may be unknown is present as `null`), except
`quantization`, which only a quantised model's card has (`fashionstream.classifier.quantize`); an fp32
card leaves the key out rather than writing `null`. An unknown field is an error rather than silently
dropped, so a card read here is complete and writing it back loses nothing. Errors name the file and
the field. Standard library only: the torch-free Predictor reads cards.

The .onnx file carries the card's essentials itself (`EmbeddedCard`, in its `metadata_props`), so that
the file alone can be served; `card.embedded()` is what a model file of this card must carry.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

FORMAT_VERSION = 1


class ModelCardError(ValueError):
    """A model card that is not valid JSON or lacks, mistypes or adds a field of its format."""


@dataclass(frozen=True)
class InputSpec:
    """The ONNX input: a float32 batch (N, 1, 28, 28) of pixels normalised as `(pixel / 255 - mean) / std`."""

    name: str
    shape: tuple[int | None, ...]  # None: the dynamic batch axis
    dtype: str
    layout: str
    normalisation: str
    mean: float
    std: float


@dataclass(frozen=True)
class OutputSpec:
    """The ONNX output: (N, classes) scores, logits (softmax is applied when serving) or probabilities."""

    name: str
    kind: Literal["logits", "probabilities"]
    shape: tuple[int | None, ...]


@dataclass(frozen=True)
class Architecture:
    """The LightningModule that was trained (its LightningCLI class path) and the plain net inside it."""

    class_path: str
    net: str


@dataclass(frozen=True)
class Evaluation:
    """The exported file's own score on the full test set, measured with ONNX Runtime after training."""

    accuracy: float
    n: int
    per_class_accuracy: tuple[float, ...]  # indexed by label
    seconds: float
    evaluated_with: str


@dataclass(frozen=True)
class Validation:
    """What the checkpoint was chosen on; `best_val_acc` is None for a run trained without a validation set."""

    best_val_acc: float | None
    epoch: int | None
    split: str


@dataclass(frozen=True)
class Training:
    """How the exported checkpoint was trained: enough to run it again."""

    command: str | None  # None when the run folder had no command.txt
    config_yaml: str | None  # the resolved LightningCLI config; None when the run folder had none
    hyper_parameters: dict[str, Any]  # the module's init arguments
    checkpoint: str
    global_step: int | None
    ema: bool


@dataclass(frozen=True)
class TrainingData:
    """The dataset the model was trained and tested on, with the SHA-256 of each decompressed file."""

    name: str
    sha256_decompressed: dict[str, str]


@dataclass(frozen=True)
class Quantization:
    """How an int8 model was made from its fp32 source: enough to rebuild it and to judge it.

    Calibration uses training images only, never test images (the card's test score would otherwise be
    fitted to the test set); `calibration_data` says which, `calibration_indices_sha256` (SHA-256 of the
    indices into the training file as little-endian int64) pins them.
    """

    tool: str  # the function that quantised it
    format: Literal["QDQ", "QOperator"]
    activation_type: str  # ONNX Runtime QuantType names: "QUInt8", "QInt8"
    weight_type: str
    per_channel: bool
    reduce_range: bool
    calibration_method: Literal["MinMax", "Entropy", "Percentile"]
    calibration_images: int
    calibration_data: str
    calibration_indices_sha256: str
    preprocessed: bool  # onnxruntime.quantization.quant_pre_process ran first
    nodes_excluded: tuple[str, ...]  # nodes left in float
    settings_chosen_on: str
    source_onnx_file: str
    source_sha256: str
    source_test_accuracy: float
    command: str
    onnx: str
    onnxruntime: str


# Fields a card may leave out: they hold None when absent and are not written while None.
_OMITTED_WHEN_NONE = {"quantization"}


@dataclass(frozen=True)
class ModelCard:
    """Everything known about one exported model; field order is the JSON file's."""

    name: str
    format_version: int
    created_utc: str
    onnx_file: str  # relative to the card's folder
    model_sha256: str  # of the .onnx file: the Predictor refuses a card that does not match its model
    torchscript_file: str | None
    torchscript_sha256: str | None
    class_names: tuple[str, ...]  # indexed by label
    input: InputSpec
    output: OutputSpec
    tta_flip_baked_in: bool  # the graph averages the image and its mirror image (twice the MACs)
    architecture: Architecture
    params: int
    macs: int  # multiply-accumulates per image, the baked-in flip counted
    macs_note: str
    test: Evaluation
    validation: Validation
    training: Training
    data: TrainingData
    versions: dict[str, str]
    quantization: Quantization | None = None  # only on a quantised model's card

    @classmethod
    def read(cls, path: str | Path) -> ModelCard:
        """Read and check a .card.json file; ModelCardError names the file and the field at fault."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ModelCardError(f"model card {path} is not valid JSON: {exc}") from exc
        return cls.from_dict(data, source=str(path))

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "model card") -> ModelCard:
        """A card from its JSON object; `source` (the file) starts every error message."""
        if not isinstance(data, Mapping):
            raise ModelCardError(f"{source}: a model card is a JSON object, not {type(data).__name__}")
        # Checked first: a card of another format would otherwise fail on whichever field changed.
        version = data.get("format_version", FORMAT_VERSION)  # a missing one is reported with the other fields
        if version != FORMAT_VERSION:
            raise ModelCardError(
                f"{source}: format_version {version!r} is not supported (this fashionstream reads {FORMAT_VERSION}); "
                "re-export the model with this version"
            )
        try:
            card: ModelCard = _from_json(cls, data, "")
        except _FieldError as exc:
            raise ModelCardError(f"{source}: {exc}") from None
        return card

    def to_dict(self) -> dict[str, Any]:
        """The card as a JSON object (tuples as lists), in the file's field order."""
        result: dict[str, Any] = _to_json(self)
        return result

    def embedded(self) -> EmbeddedCard:
        """The part of this card that its .onnx file carries in its metadata (`EmbeddedCard`)."""
        return EmbeddedCard(**{f.name: _at(self, f.metadata["card"]) for f in dataclasses.fields(EmbeddedCard)})


# --- the card's essentials inside the .onnx file --------------------------------------------------

METADATA_PREFIX = "fashionstream."  # of every metadata_props key this package writes into an .onnx file
METADATA_VERSION_KEY = METADATA_PREFIX + "format_version"


def _card_field(path: str) -> Any:
    """A field holding the card's field at `path` ("test.accuracy" for a nested one), of the same type."""
    return dataclasses.field(metadata={"card": path})


@dataclass(frozen=True)
class EmbeddedCard:
    """The essentials of a model card, carried by the .onnx file itself in its `metadata_props`.

    Enough to serve the file with nothing beside it (class names; the input's name, shape, layout and
    normalisation; the output's kind) and to say what it is (name, net, params, MACs, test accuracy).
    Each field is the card field named in its metadata, with the same type. In the file: one entry per
    field, key `fashionstream.<card field>` (`fashionstream.input`, `fashionstream.test.accuracy`), value
    the field's JSON exactly as the card file writes it, plus `fashionstream.format_version`, the card
    format. The card stays the full record (per-class scores, training, data, versions) and holds the
    file's SHA-256, which the file cannot hold about itself. Values that change between two runs of
    the same recipe on the same file (creation time, seconds taken) are left out, so embedding is
    reproducible byte for byte.
    """

    name: str = _card_field("name")
    class_names: tuple[str, ...] = _card_field("class_names")
    input: InputSpec = _card_field("input")
    output: OutputSpec = _card_field("output")
    tta_flip_baked_in: bool = _card_field("tta_flip_baked_in")
    architecture: Architecture = _card_field("architecture")
    params: int = _card_field("params")
    macs: int = _card_field("macs")
    test_accuracy: float = _card_field("test.accuracy")
    test_n: int = _card_field("test.n")

    def to_metadata(self) -> dict[str, str]:
        """The `metadata_props` entries, in a fixed order (the format version first)."""
        props = {METADATA_VERSION_KEY: json.dumps(FORMAT_VERSION)}
        for f in dataclasses.fields(self):
            value = _to_json(getattr(self, f.name))
            props[METADATA_PREFIX + f.metadata["card"]] = json.dumps(value, ensure_ascii=False)
        return props

    @classmethod
    def from_metadata(cls, props: Mapping[str, str], *, source: str) -> EmbeddedCard | None:
        """The embedded card of a model file's `metadata_props`; None when it has no `fashionstream.` entry.

        Entries of other tools are ignored. A partial, unknown or mistyped `fashionstream.` entry is a
        ModelCardError naming `source` (the file) and the key, as a broken card file is.
        """
        ours = {key: value for key, value in props.items() if key.startswith(METADATA_PREFIX)}
        if not ours:
            return None
        version = ours.pop(METADATA_VERSION_KEY, None)
        if version != json.dumps(FORMAT_VERSION):
            raise ModelCardError(
                f"{source}: metadata {METADATA_VERSION_KEY} {version!r} is not supported (this fashionstream reads "
                f"{FORMAT_VERSION}); embed the card again with this version"
            )
        by_key = {METADATA_PREFIX + f.metadata["card"]: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(ours) - set(by_key))
        if unknown:
            raise ModelCardError(f"{source}: unknown metadata entry {unknown[0]!r} (expected only {', '.join(by_key)})")
        missing = [key for key in by_key if key not in ours]
        if missing:
            raise ModelCardError(f"{source}: required metadata entry {missing[0]!r} is missing")
        hints = typing.get_type_hints(cls)
        values = {}
        for key, f in by_key.items():
            try:
                values[f.name] = _from_json(hints[f.name], json.loads(ours[key]), key)
            except json.JSONDecodeError as exc:
                raise ModelCardError(f"{source}: metadata entry {key!r} is not valid JSON: {exc}") from None
            except _FieldError as exc:
                raise ModelCardError(f"{source}: metadata {exc}") from None
        return cls(**values)

    def differences(self, other: EmbeddedCard) -> list[str]:
        """The card fields on which `self` and `other` disagree, each with both values."""
        return [
            f"{f.metadata['card']} ({getattr(self, f.name)!r} against {getattr(other, f.name)!r})"
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        ]


def _at(card: ModelCard, path: str) -> Any:
    """The card's field at a dotted path."""
    value: Any = card
    for name in path.split("."):
        value = getattr(value, name)
    return value


class _FieldError(ValueError):
    """One field's problem; `ModelCard.from_dict` adds the file name."""


def _describe(field: str) -> str:
    return f"field {field!r}" if field else "the card"


def _from_json(kind: Any, value: Any, field: str) -> Any:
    """`value` (parsed JSON) checked against the type annotation `kind` and converted to it."""
    origin = typing.get_origin(kind)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, Mapping):
            raise _FieldError(f"{_describe(field)} must be a JSON object, got {value!r}")
        hints = typing.get_type_hints(kind)
        names = [f.name for f in dataclasses.fields(kind)]
        prefix = f"{field}." if field else ""
        unknown = [key for key in value if key not in names]
        if unknown:
            raise _FieldError(f"unknown field {prefix + unknown[0]!r} (expected only {', '.join(names)})")
        missing = [name for name in names if name not in value and name not in _OMITTED_WHEN_NONE]
        if missing:
            raise _FieldError(f"required field {prefix + missing[0]!r} is missing")
        build: Any = kind  # a dataclass type: its constructor takes every field by name
        return build(**{name: _from_json(hints[name], value.get(name), prefix + name) for name in names})
    if origin is types.UnionType:  # X | None: the only unions a card uses
        if value is None:
            return None
        (inner,) = (arg for arg in typing.get_args(kind) if arg is not type(None))
        return _from_json(inner, value, field)
    if origin is Literal:
        if value not in typing.get_args(kind):
            raise _FieldError(f"{_describe(field)} must be one of {typing.get_args(kind)}, got {value!r}")
        return value
    if origin is tuple:  # tuple[X, ...]
        if not isinstance(value, list):
            raise _FieldError(f"{_describe(field)} must be a JSON list, got {value!r}")
        item = typing.get_args(kind)[0]
        return tuple(_from_json(item, v, f"{field}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _FieldError(f"{_describe(field)} must be a JSON object, got {value!r}")
        item = typing.get_args(kind)[1]
        return {str(k): _from_json(item, v, f"{field}.{k}") for k, v in value.items()}
    if kind is Any:
        return value
    # JSON has one number type: an int is a valid float, but a bool is neither (bool subclasses int).
    accepted: dict[Any, tuple[type, ...]] = {float: (int, float), int: (int,), str: (str,), bool: (bool,)}
    if kind not in accepted:
        raise TypeError(f"model card field {field!r} has a type the reader does not know: {kind!r}")
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, accepted[kind]):
        raise _FieldError(f"{_describe(field)} must be a JSON {_JSON_NAMES[kind]}, got {value!r}")
    return kind(value)


_JSON_NAMES = {float: "number", int: "integer", str: "string", bool: "boolean (true/false)"}


def _to_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _to_json(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if not (f.name in _OMITTED_WHEN_NONE and getattr(value, f.name) is None)
        }
    if isinstance(value, tuple | list):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    return value
