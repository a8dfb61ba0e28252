"""The card's essentials inside the .onnx file: the shipped files carry them, the file alone serves, a file
without them warns and still serves, a file and card that disagree are refused, and embedding changes
nothing but the metadata."""

from __future__ import annotations

import dataclasses
import json
import shutil
import typing
import warnings
from pathlib import Path

import numpy as np
import pytest

from fashionstream.classifier.card import METADATA_PREFIX, EmbeddedCard, ModelCard, ModelCardError
from fashionstream.classifier.predictor import (
    MissingMetadataWarning,
    ModelNotFoundError,
    Predictor,
    shipped_model_path,
)
from fashionstream.classifier.sample import load_sample

onnx = pytest.importorskip("onnx")  # writing metadata needs it (the train extra); reading needs only ONNX Runtime

from fashionstream.classifier.embed import embed, main, strip_metadata  # noqa: E402

FP32 = shipped_model_path()
INT8 = FP32.with_name("fashion-cnn-int8.onnx")
REPO = Path(__file__).resolve().parents[1]
CARDS = [FP32.with_name("fashion-cnn.card.json"), *sorted((REPO / "bench" / "results" / "exports").glob("*.card.json"))]


def _card_path(onnx_path: Path) -> Path:
    return onnx_path.with_name(onnx_path.name.removesuffix(".onnx") + ".card.json")


def _load_quietly(path: Path) -> Predictor:
    """Predictor.load, failing on any warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return Predictor.load(path, threads=1)


def _metadata(path: Path) -> dict[str, str]:
    return {prop.key: prop.value for prop in onnx.load(str(path)).metadata_props}


def _set_entry(path: Path, key: str, value: str) -> None:
    model = onnx.load(str(path))
    (prop,) = [prop for prop in model.metadata_props if prop.key == key]
    prop.value = value
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return load_sample()[0][:200]  # (200, 28, 28) uint8, real test images


@pytest.fixture(scope="module")
def shipped() -> Predictor:
    return _load_quietly(FP32)


@pytest.fixture
def bare_copy(tmp_path: Path) -> Path:
    """The shipped fp32 model without its metadata, its card beside it (SHA-256 updated to match)."""
    path = tmp_path / "bare.onnx"
    path.write_bytes(strip_metadata(FP32.read_bytes()))
    card = ModelCard.read(_card_path(FP32))
    card = dataclasses.replace(card, name="bare", onnx_file=path.name, model_sha256=_sha256(path))
    card.write(_card_path(path))
    return path


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_embedded_fields_have_the_types_of_the_card_fields_they_copy() -> None:
    hints = typing.get_type_hints(EmbeddedCard)
    for field in dataclasses.fields(EmbeddedCard):
        owner: type = ModelCard
        *parents, name = field.metadata["card"].split(".")
        for parent in parents:
            owner = typing.get_type_hints(owner)[parent]
        assert hints[field.name] == typing.get_type_hints(owner)[name], field.name


@pytest.mark.parametrize("path", CARDS, ids=lambda p: p.name)
def test_metadata_round_trips_for_every_committed_card(path: Path) -> None:
    embedded = ModelCard.read(path).embedded()
    props = embedded.to_metadata()
    assert all(key.startswith(METADATA_PREFIX) for key in props)
    assert all(json.loads(value) is not None for value in props.values())  # every value is JSON
    assert EmbeddedCard.from_metadata({"other.tool": "kept apart", **props}, source="x.onnx") == embedded


@pytest.mark.parametrize("path", [FP32, INT8], ids=lambda p: p.name)
def test_the_shipped_files_carry_their_cards(path: Path) -> None:
    predictor = _load_quietly(path)  # no MissingMetadataWarning
    card = predictor.card
    assert predictor.description == card.embedded()
    assert {k: v for k, v in _metadata(path).items() if k.startswith(METADATA_PREFIX)} == card.embedded().to_metadata()
    assert json.loads(_metadata(path)["fashionstream.class_names"])[7] == "Sneaker"
    assert predictor.input_spec == card.input and predictor.class_names == card.class_names


def test_the_file_alone_serves_as_its_card_describes_it(tmp_path: Path, shipped: Predictor, pixels: np.ndarray) -> None:
    alone = tmp_path / FP32.name
    shutil.copy(FP32, alone)  # no card beside it
    predictor = _load_quietly(alone)
    assert predictor.model_id == shipped.model_id and predictor.description == shipped.card.embedded()
    assert not predictor.has_card
    with pytest.raises(ModelNotFoundError, match="loaded from its file alone"):
        predictor.card  # noqa: B018
    assert np.array_equal(predictor.probabilities(pixels), shipped.probabilities(pixels))
    assert predictor.predict_pixels(pixels[:1])[0].class_name == shipped.predict_pixels(pixels[:1])[0].class_name


def test_a_file_without_metadata_warns_and_serves_from_its_card(
    bare_copy: Path, shipped: Predictor, pixels: np.ndarray
) -> None:
    with pytest.warns(MissingMetadataWarning, match=r"bare\.onnx carries no embedded model metadata; serving it as"):
        predictor = Predictor.load(bare_copy, threads=1)
    assert predictor.card.name == "bare" and predictor.description == predictor.card.embedded()
    assert np.array_equal(predictor.probabilities(pixels), shipped.probabilities(pixels))


def test_a_file_with_neither_metadata_nor_card_warns_and_serves_the_documented_defaults(
    bare_copy: Path, shipped: Predictor, pixels: np.ndarray
) -> None:
    _card_path(bare_copy).unlink()
    with pytest.warns(MissingMetadataWarning, match=r"has no card .*bare\.card\.json; serving it as a Fashion-MNIST"):
        predictor = Predictor.load(bare_copy, threads=1)
    assert predictor.description is None and predictor.model_id.startswith("bare@")
    # The defaults are what the shipped model was trained with, so it gives the same answers.
    assert predictor.class_names == shipped.class_names
    assert (predictor.input_spec.mean, predictor.input_spec.std) == (shipped.card.input.mean, shipped.card.input.std)
    assert np.array_equal(predictor.probabilities(pixels), shipped.probabilities(pixels))


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"class_names": ("Trouser", "T-shirt/top", *ModelCard.read(CARDS[0]).class_names[2:])}, "class_names"),
        ({"macs": 1}, "macs (19758720 against 1)"),
    ],
)
def test_metadata_and_card_that_disagree_are_refused_naming_both(
    tmp_path: Path, change: dict[str, object], named: str
) -> None:
    model = tmp_path / FP32.name
    shutil.copy(FP32, model)
    # The card still matches the file's SHA-256; only what it says differs from the file's metadata.
    dataclasses.replace(ModelCard.read(_card_path(FP32)), **change).write(_card_path(model))  # type: ignore[arg-type]
    with pytest.raises(ModelCardError) as err:
        Predictor.load(model)
    message = str(err.value)
    assert f"the metadata embedded in {model} and its card {_card_path(model)} disagree on" in message
    assert named in message and "python -m fashionstream.classifier.embed" in message


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("fashionstream.macs", '"28 M"', "field 'fashionstream.macs' must be a JSON integer"),
        ("fashionstream.input", "{not json", "metadata entry 'fashionstream.input' is not valid JSON"),
        ("fashionstream.format_version", "2", "metadata fashionstream.format_version '2' is not supported"),
    ],
)
def test_broken_metadata_is_refused_naming_the_file_and_the_entry(
    tmp_path: Path, key: str, value: str, message: str
) -> None:
    model = tmp_path / "broken.onnx"
    shutil.copy(FP32, model)  # alone: the metadata is all there is to go by
    _set_entry(model, key, value)
    with pytest.raises(ModelCardError, match=f"^{model}: .*{message}"):
        Predictor.load(model)


def test_embedding_changes_only_the_metadata_and_updates_the_cards(tmp_path: Path, bare_copy: Path) -> None:
    card_path = _card_path(bare_copy)
    before, card = bare_copy.read_bytes(), ModelCard.read(card_path)
    # An int8 card made from the bare file, and one made from another file: only the first follows it.
    int8 = ModelCard.read(_card_path(INT8))
    assert int8.quantization is not None
    for name, source_sha in (("bare-int8", card.model_sha256), ("other-int8", "0" * 64)):
        quantization = dataclasses.replace(int8.quantization, source_onnx_file=bare_copy.name, source_sha256=source_sha)
        dataclasses.replace(int8, name=name, quantization=quantization).write(tmp_path / f"{name}.card.json")

    assert main([str(bare_copy)]) == 0
    after, embedded = bare_copy.read_bytes(), ModelCard.read(card_path)
    assert after != before and strip_metadata(after) == before  # the graph and weights, byte for byte
    assert embedded == dataclasses.replace(card, model_sha256=_sha256(bare_copy))  # only the SHA-256 changed
    assert _load_quietly(bare_copy).description == card.embedded()
    follower = ModelCard.read(tmp_path / "bare-int8.card.json").quantization
    assert follower is not None and follower.source_sha256 == embedded.model_sha256
    other = ModelCard.read(tmp_path / "other-int8.card.json").quantization
    assert other is not None and other.source_sha256 == "0" * 64

    assert main([str(card_path)]) == 0  # again, by the card: nothing changes
    assert bare_copy.read_bytes() == after and ModelCard.read(card_path) == embedded


def test_embedding_keeps_other_tools_entries_and_replaces_its_own(tmp_path: Path) -> None:
    model = tmp_path / "int8.onnx"
    shutil.copy(INT8, model)
    others = {k: v for k, v in _metadata(INT8).items() if not k.startswith(METADATA_PREFIX)}
    assert others  # ONNX Runtime's quantiser records its own entries
    renamed = dataclasses.replace(ModelCard.read(_card_path(INT8)), name="renamed")
    card = embed(model, renamed)
    assert card.model_sha256 == _sha256(model)
    metadata = _metadata(model)
    assert {k: v for k, v in metadata.items() if not k.startswith(METADATA_PREFIX)} == others
    assert json.loads(metadata["fashionstream.name"]) == "renamed"


def test_embedding_refuses_a_card_that_belongs_to_another_file(bare_copy: Path) -> None:
    card_path = _card_path(bare_copy)
    dataclasses.replace(ModelCard.read(card_path), model_sha256="0" * 64).write(card_path)
    before = bare_copy.read_bytes()
    with pytest.raises(ModelCardError, match="does not match its card"):
        main([str(bare_copy)])
    assert bare_copy.read_bytes() == before
