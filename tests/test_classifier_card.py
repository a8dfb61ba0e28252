"""The model card: every committed card reads as a `ModelCard` and writes back unchanged; bad cards are named."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fashionstream.classifier.card import ModelCard, ModelCardError
from fashionstream.classifier.predictor import shipped_model_path

REPO = Path(__file__).resolve().parents[1]
SHIPPED = shipped_model_path().with_name("fashion-cnn.card.json")
CARDS = [SHIPPED, *sorted((REPO / "bench" / "results" / "exports").glob("*.card.json"))]


@pytest.fixture(scope="module")
def shipped_json() -> dict[str, Any]:
    return dict(json.loads(SHIPPED.read_text()))


def test_shipped_card_round_trips(shipped_json: dict[str, Any], tmp_path: Path) -> None:
    card = ModelCard.read(SHIPPED)
    assert ModelCard.from_dict(card.to_dict()) == card
    assert card.to_dict() == shipped_json  # nothing dropped, nothing added
    card.write(tmp_path / "copy.card.json")
    assert (tmp_path / "copy.card.json").read_bytes() == SHIPPED.read_bytes()


def test_shipped_card_attributes_are_typed() -> None:
    card = ModelCard.read(SHIPPED)
    assert card.name == "fashion-cnn" and card.params == 258_714 and card.macs == 19_758_720
    assert card.test.accuracy == 0.9498 and len(card.test.per_class_accuracy) == 10
    assert card.class_names[7] == "Sneaker" and isinstance(card.class_names, tuple)
    assert (card.input.mean, card.input.std, card.input.shape) == (0.286, 0.353, (None, 1, 28, 28))
    assert card.output.kind == "logits" and card.validation.best_val_acc is None  # trained on all 60 k images


@pytest.mark.parametrize("path", CARDS, ids=lambda p: p.name)
def test_every_committed_card_reads_unchanged(path: Path) -> None:
    card = ModelCard.read(path)
    assert card.to_dict() == json.loads(path.read_text())
    assert ModelCard.from_dict(card.to_dict()) == card


@pytest.mark.parametrize(
    ("field", "message"),
    [
        (("test", "accuracy"), "required field 'test.accuracy' is missing"),
        (("class_names",), "required field 'class_names' is missing"),
        (("input", "mean"), "required field 'input.mean' is missing"),
    ],
)
def test_a_card_missing_a_required_field_names_the_file_and_the_field(
    shipped_json: dict[str, Any], tmp_path: Path, field: tuple[str, ...], message: str
) -> None:
    broken = copy.deepcopy(shipped_json)
    parent = broken
    for key in field[:-1]:
        parent = parent[key]
    del parent[field[-1]]
    path = tmp_path / "broken.card.json"
    path.write_text(json.dumps(broken))
    with pytest.raises(ModelCardError) as err:
        ModelCard.read(path)
    assert str(err.value) == f"{path}: {message}"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"macs": "28 M"}, "field 'macs' must be a JSON integer, got '28 M'"),
        ({"tta_flip_baked_in": "no"}, "field 'tta_flip_baked_in' must be a JSON boolean"),
        ({"surprise": 1}, "unknown field 'surprise'"),
        ({"format_version": 2}, "format_version 2 is not supported"),
    ],
)
def test_a_card_with_a_wrong_or_unknown_field_is_refused(
    shipped_json: dict[str, Any], change: dict[str, Any], message: str
) -> None:
    with pytest.raises(ModelCardError, match=message):
        ModelCard.from_dict({**shipped_json, **change}, source="broken.card.json")


def test_a_card_that_is_not_json_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "garbled.card.json"
    path.write_text("{not json")
    with pytest.raises(ModelCardError, match=f"model card {path} is not valid JSON"):
        ModelCard.read(path)


def test_the_card_module_never_imports_torch() -> None:
    code = (
        "import sys\nfrom fashionstream.classifier.card import ModelCard\n"
        f"ModelCard.read({str(SHIPPED)!r})\nassert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
