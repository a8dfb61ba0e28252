"""The torch-free Predictor with the shipped model: accuracy matches its card, bad input is refused fast."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fashionstream.classifier.card import ModelCard
from fashionstream.classifier.fashion_mnist_files import CLASS_NAMES, load_split
from fashionstream.classifier.predictor import (
    InvalidImageError,
    ModelNotFoundError,
    Prediction,
    Predictor,
    shipped_model_path,
)
from fashionstream.reasons import InvalidInput, Reason


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.load()  # the shipped fashion-cnn.onnx + card, package data of fashionstream.models


@pytest.fixture(scope="module")
def test_set() -> tuple[np.ndarray, np.ndarray]:
    return load_split("test")


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def test_predictor_path_never_imports_torch() -> None:
    code = (
        "import sys, fashionstream.classifier, fashionstream.classifier.predictor, "
        "fashionstream.classifier.evaluate, fashionstream.classifier.predict_cli\n"
        "from fashionstream.classifier.predictor import Predictor\n"
        "Predictor.load().predict(bytes(784), raw=True)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_accuracy_on_1000_real_images_agrees_with_the_card(
    predictor: Predictor, test_set: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = test_set
    # Every 10th image: 1,000 images spread over the whole test set (100 per class).
    predictions = predictor.predict_pixels(images[::10])
    accuracy = float(np.mean([p.label for p in predictions] == labels[::10]))
    card_accuracy = predictor.card.test.accuracy
    assert abs(accuracy - card_accuracy) <= 0.015, (accuracy, card_accuracy)
    assert card_accuracy >= 0.94


def test_prediction_fields(predictor: Predictor, test_set: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = test_set
    pred = predictor.predict(_png(images[0]))  # an encoded PNG of a real test image
    assert isinstance(pred, Prediction)
    assert pred.class_name == CLASS_NAMES[pred.label] and predictor.class_names == CLASS_NAMES
    assert len(pred.probabilities) == 10 and abs(sum(pred.probabilities) - 1) < 1e-5
    assert pred.confidence == max(pred.probabilities)
    # PNG bytes, the array and raw bytes are the same pixels, so the same answer.
    assert predictor.predict(images[0]) == pred
    assert predictor.predict(images[0].tobytes(), raw=True) == pred
    batch = predictor.predict_batch([_png(images[i]) for i in range(8)])
    assert [p.label for p in batch] == [p.label for p in predictor.predict_pixels(images[:8])]
    assert predictor.model_id.startswith("fashion-cnn@") and len(predictor.model_id.split("@")[1]) == 12


def test_any_size_and_mode_is_converted_to_28x28_grey(test_set: tuple[np.ndarray, np.ndarray]) -> None:
    image = test_set[0][1]
    big_rgb = Image.fromarray(image).convert("RGB").resize((280, 280), Image.Resampling.NEAREST)
    pixels = Predictor.to_pixels(big_rgb)
    assert pixels.shape == (28, 28) and pixels.dtype == np.uint8
    assert np.abs(pixels.astype(int) - image).mean() <= 1  # a 10× upscale averages back to the original
    rgba = np.zeros((40, 30, 4), np.uint8)  # fully transparent: composited onto black
    assert Predictor.to_pixels(rgba).max() == 0
    floats = image.astype(np.float32) / 255
    assert np.abs(Predictor.to_pixels(floats).astype(int) - image).max() <= 1
    with pytest.raises(InvalidImageError) as err:
        Predictor.to_pixels(bytes(784))  # 784 raw bytes only with raw=True
    assert err.value.reason == "not_an_image"


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda png: b"", "empty"),
        (lambda png: b"this is not an image, just some text" * 10, "not_an_image"),
        (lambda png: png[: len(png) // 2], "truncated"),
        (lambda png: np.zeros((28, 28, 2), np.uint8), "bad_shape"),
        (lambda png: b"\x00" * 100, "not_an_image"),
    ],
)
def test_bad_input_raises_invalid_image_error(predictor: Predictor, make, reason: str) -> None:  # type: ignore[no-untyped-def]
    png = _png(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8))
    with pytest.raises(InvalidImageError) as err:
        predictor.predict(make(png))
    assert err.value.reason == reason and err.value.detail


def test_invalid_image_error_is_an_invalid_input_with_a_reason(predictor: Predictor) -> None:
    # The pipeline catches InvalidInput and dead-letters its Reason unchanged: the classifier must raise one.
    with pytest.raises(InvalidInput) as err:
        predictor.predict(b"")
    assert isinstance(err.value, InvalidImageError) and isinstance(err.value, ValueError)
    assert err.value.reason is Reason.EMPTY and str(err.value) == f"empty: {err.value.detail}"
    with pytest.raises(ValueError):  # only reasons of the one list exist
        InvalidImageError("no_such_reason", "detail")  # type: ignore[arg-type]


def test_huge_image_is_refused_from_its_header_without_decoding(predictor: Predictor) -> None:
    buf = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(buf, format="PNG")  # 400 M pixels, a few hundred kB compressed
    huge = buf.getvalue()
    started = time.perf_counter()
    with pytest.raises(InvalidImageError) as err:
        predictor.predict(huge)
    elapsed = time.perf_counter() - started
    assert err.value.reason == "too_large"
    # Decoding would take seconds and 400 MB; refusing from the header takes well under a second.
    assert elapsed < 1.0, elapsed
    with pytest.raises(InvalidImageError) as err:
        predictor.predict(Image.new("L", (5000, 10)))
    assert err.value.reason == "too_large"


def test_card_or_onnx_path_and_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = Predictor.load()
    onnx_path = Path(shipped.card.onnx_file)
    models = shipped_model_path().parent
    for name in (onnx_path.name, onnx_path.name.replace(".onnx", ".card.json")):
        shutil.copy(models / name, tmp_path / name)
    by_card = Predictor.load(tmp_path / onnx_path.name.replace(".onnx", ".card.json"), threads=1)
    assert by_card.model_id == shipped.model_id
    monkeypatch.setenv("FASHIONSTREAM_MODEL", str(tmp_path / onnx_path.name))
    assert Predictor.load().model_id == shipped.model_id
    # A card that does not belong to the model file is refused.
    card_path = tmp_path / onnx_path.name.replace(".onnx", ".card.json")
    dataclasses.replace(ModelCard.read(card_path), model_sha256="0" * 64).write(card_path)
    with pytest.raises(ValueError, match="does not match its card"):
        Predictor.load(tmp_path / onnx_path.name)
    with pytest.raises(ModelNotFoundError):
        Predictor.load(tmp_path / "missing.onnx")


def test_evaluate_json_reports_accuracy_macs_and_params(capsys: pytest.CaptureFixture[str]) -> None:
    from fashionstream.cli import main as cli_main

    assert cli_main(["evaluate", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    card = Predictor.load().card
    assert result["n"] == 10000 and len(result["per_class"]) == 10
    assert abs(result["accuracy"] - card.test.accuracy) < 0.002  # same model, same data, same runtime
    assert result["macs"] == card.macs and result["params"] == card.params and result["images_per_s"] > 0
    assert result["model"] == Predictor.load().model_id


def test_predict_command_prints_one_line_per_file(
    tmp_path: Path, test_set: tuple[np.ndarray, np.ndarray], capsys: pytest.CaptureFixture[str]
) -> None:
    from fashionstream.cli import main as cli_main

    images, labels = test_set
    good = tmp_path / "trouser.png"
    good.write_bytes(_png(images[int(np.flatnonzero(labels == 1)[0])]))  # a real trouser from the test set
    bmp = tmp_path / "trouser.bmp"  # local files may be in any format Pillow reads, unlike service requests
    Image.fromarray(images[int(np.flatnonzero(labels == 1)[0])]).save(bmp, format="BMP")
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    assert cli_main(["predict", "--json", str(good), str(bmp), str(bad)]) == 1  # one file failed
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["class_name"] == "Trouser"  # trousers are the easiest class (~99 % recall)
    assert lines[1]["class_name"] == "Trouser" and lines[1]["confidence"] == lines[0]["confidence"]
    assert lines[2]["error"] == "not_an_image"


def test_a_shipped_model_is_found_by_its_name() -> None:
    from fashionstream.classifier.predictor import shipped_model_names

    assert {"fashion-cnn", "fashion-cnn-int8"} <= set(shipped_model_names())
    int8 = Predictor.load("fashion-cnn-int8")
    assert int8.model_id.startswith("fashion-cnn-int8@")
    assert Predictor.load("fashion-cnn").model_id == Predictor.load().model_id


def test_the_service_handler_turns_off_spin_waiting_and_a_plain_load_keeps_it() -> None:
    """Busy-waiting pool threads would hold the core the service's own thread and the broker need."""
    from fashionstream.pipeline.handler import OnnxModelHandler

    def spinning(predictor: Predictor) -> str:
        return predictor._session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")

    assert spinning(OnnxModelHandler().load_model()) == "0"
    assert spinning(Predictor.load()) == "1"
