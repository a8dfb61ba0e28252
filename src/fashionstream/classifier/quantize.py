"""Static int8 quantisation of an exported model with ONNX Runtime, calibrated on training images only.

    python -m fashionstream.classifier.quantize                     # the shipped model → fashion-cnn-int8 beside it
    python -m fashionstream.classifier.quantize --model models/my-cnn.onnx --output models/my-cnn-int8.onnx
    python -m fashionstream.classifier.quantize --calibration_images 64 --evaluate false --output /tmp/q.onnx

Reads an fp32 `.onnx` file and its card, writes `<output>.onnx` and `<output>.card.json` (a `ModelCard`
like the source's, with its own SHA-256, test accuracy measured on the int8 file with ONNX Runtime, and a
`quantization` record saying how it was made); the int8 file carries its own card's essentials (`embed`).
Takes a few seconds on 2 cores. Expect the shipped FashionCNN to keep its test accuracy within a few
hundredths of a percentage point and to run over twice as fast at batch 256 on a CPU with AVX-512 VNNI;
without VNNI int8 gains little (docs/benchmarks.md). The same settings and the same ONNX Runtime
version rebuild the same graph byte for byte; the embedded metadata holds the test score measured on it.

Which images are used for what, and why:
- calibration: the first `calibration_images` of the *training* part of the model's own train/validation
  split (`validation_split(60000, val_size, split_seed)`, the split in the source card's training config),
  normalised by `predictor.model_input` exactly as they will be served. Never test images: a model whose
  activation ranges were fitted on the test set would report a test accuracy it has not earned.
- choosing the default settings: the validation part of the shipped model's split, which it never trained
  on (`bench/quantize.py sweep` compares the candidates there).
- the card's `test` score: the full 10 k test set, measured once on the file written here.

The defaults, chosen that way: QDQ format (ONNX Runtime fuses each
DequantizeLinear → Conv → QuantizeLinear into one int8 kernel), uint8 activations with int8 weights
(the combination x86 VNNI kernels take), per-channel weights, MinMax calibration, graph pre-processing
with `quant_pre_process`, and every operator type ONNX Runtime can quantise.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from fashionstream.classifier.card import Evaluation, ModelCard, Quantization
from fashionstream.classifier.embed import embed
from fashionstream.classifier.evaluate import evaluate as evaluate_on_test_set
from fashionstream.classifier.fashion_mnist_files import load_split, validation_split
from fashionstream.classifier.predictor import Predictor, model_input, resolve_model_files
from fashionstream.machine import int8_instructions

Format = Literal["QDQ", "QOperator"]
CalibrationMethod = Literal["MinMax", "Entropy", "Percentile"]
CALIBRATION_BATCH = 100  # images per calibration run: bounds the memory of the recorded activations


@dataclass(frozen=True)
class Settings:
    """How to quantise: the choices `bench/quantize.py sweep` compares on the validation split."""

    format: Format = "QDQ"
    per_channel: bool = True
    calibration_method: CalibrationMethod = "MinMax"
    preprocess: bool = True  # quant_pre_process: shape inference and ONNX Runtime's graph clean-up first
    exclude_first_conv: bool = False  # keep the 1-channel input convolution in float
    activation_type: Literal["QUInt8", "QInt8"] = "QUInt8"
    weight_type: Literal["QInt8", "QUInt8"] = "QInt8"
    reduce_range: bool = False  # 7-bit weights: only for CPUs without VNNI, which can saturate

    def describe(self) -> str:
        return (
            f"{self.format} {'per-channel' if self.per_channel else 'per-tensor'} {self.calibration_method}"
            f"{' preprocessed' if self.preprocess else ''}{' first-conv-fp32' if self.exclude_first_conv else ''}"
            f" a={self.activation_type} w={self.weight_type}{' reduce-range' if self.reduce_range else ''}"
        )


def calibration_indices(count: int, *, val_size: int, split_seed: int, n_train: int = 60000) -> np.ndarray:
    """Indices into the training files of the calibration images: the first `count` of the split's training part."""
    train_idx, _ = validation_split(n_train, val_size, split_seed)
    if not 0 < count <= len(train_idx):
        raise ValueError(f"calibration_images must be between 1 and {len(train_idx)}, got {count}")
    return train_idx[:count]


def _data_reader(input_name: str, batches: list[np.ndarray]):  # type: ignore[no-untyped-def]
    """An ONNX Runtime `CalibrationDataReader` over ready model inputs (n, 1, 28, 28)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._batches: Iterator[np.ndarray] = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {input_name: batch}

        def rewind(self) -> None:
            self._batches = iter(batches)

    return Reader()


def _first_conv(model_path: Path) -> str:
    import onnx

    graph = onnx.load(str(model_path)).graph
    return next(str(node.name) for node in graph.node if node.op_type == "Conv")


def quantize_onnx(
    source: Path, output: Path, card: ModelCard, calibration_pixels: np.ndarray, settings: Settings
) -> None:
    """Write the int8 version of the fp32 `source` (whose card is `card`) to `output`.

    calibration_pixels: uint8 (N, 28, 28) training images; they pass through `model_input` like served images.
    """
    from onnxruntime import quantization as q
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = [
        model_input(calibration_pixels[start : start + CALIBRATION_BATCH], card.input)  # (n, 1, 28, 28)
        for start in range(0, len(calibration_pixels), CALIBRATION_BATCH)
    ]
    with tempfile.TemporaryDirectory(prefix="fashionstream-quantize-") as scratch:
        model = source
        if settings.preprocess:
            model = Path(scratch) / "preprocessed.onnx"
            # ONNX's own shape inference only: the symbolic one fails on opset 18's ReduceMax (axes as an
            # input), and with one dynamic batch axis it has nothing to add.
            quant_pre_process(str(source), str(model), skip_symbolic_shape=True)
        excluded = [_first_conv(model)] if settings.exclude_first_conv else None
        output.parent.mkdir(parents=True, exist_ok=True)
        q.quantize_static(
            str(model),
            str(output),
            _data_reader(card.input.name, batches),
            quant_format=q.QuantFormat[settings.format],
            per_channel=settings.per_channel,
            reduce_range=settings.reduce_range,
            activation_type=q.QuantType[settings.activation_type],
            weight_type=q.QuantType[settings.weight_type],
            nodes_to_exclude=excluded,
            calibrate_method=q.CalibrationMethod[settings.calibration_method],
        )


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def score_on_test_set(predictor: Predictor, data_dir: str | None = None) -> Evaluation:
    """The card's test score: `fashionstream evaluate` on the full test set, through the Predictor."""
    result = evaluate_on_test_set(predictor, data_dir)
    return Evaluation(
        accuracy=result["accuracy"],
        n=result["n"],
        per_class_accuracy=tuple(result["per_class"].values()),  # in label order, as `evaluate` builds it
        seconds=round(result["n"] / result["images_per_s"], 2),
        evaluated_with="onnxruntime CPU "
        f"({', '.join(int8_instructions()) or 'no VNNI'}: int8 answers differ slightly between CPUs with and without), "
        "full 10k test set, the int8 file itself, after quantisation (never used for selection)",
    )


NOT_EVALUATED = Evaluation(0.0, 0, (), 0.0, "not evaluated (quantize --evaluate false): a quick build")


def quantized_card(source: ModelCard, output: Path, test: Evaluation, quantization: Quantization) -> ModelCard:
    """The int8 file's card: the source's description of the net, with its own file, score and making."""
    return dataclasses.replace(
        source,
        name=output.name.removesuffix(".onnx"),
        created_utc=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        onnx_file=output.name,
        model_sha256=sha256_file(output),
        torchscript_file=None,  # int8 exists only as ONNX; the source's TorchScript file is the fp32 net
        torchscript_sha256=None,
        macs_note=source.macs_note + "; the same multiply-accumulates, run in int8",
        test=test,
        quantization=quantization,
    )


def _shown(path: Path) -> str:
    """`path` as the card's command shows it: relative to the working folder when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _recorded_split(card: ModelCard) -> tuple[int, int]:
    """(val_size, split_seed) of the source model's training run, from the resolved config in its card."""
    import yaml

    config = yaml.safe_load(card.training.config_yaml or "") or {}
    init = dict((config.get("data") or {}).get("init_args") or {})
    if "val_size" not in init or "split_seed" not in init:
        raise ValueError(
            f"the card of {card.onnx_file} records no training config with data.val_size and data.split_seed, so "
            "the training images are unknown; pass --val_size and --split_seed of the run that trained it"
        )
    return int(init["val_size"]), int(init["split_seed"])


def quantize(
    model: str | None = None,
    output: str | None = None,
    calibration_images: int = 1000,
    format: Format = Settings.format,
    per_channel: bool = Settings.per_channel,
    calibration_method: CalibrationMethod = Settings.calibration_method,
    preprocess: bool = Settings.preprocess,
    exclude_first_conv: bool = Settings.exclude_first_conv,
    val_size: int | None = None,
    split_seed: int | None = None,
    evaluate: bool = True,
    data_dir: str | None = None,
) -> Path:
    """Quantise an fp32 model to int8 (ONNX Runtime static quantisation) and write it with its card.

    Args:
        model: the fp32 .onnx file or its .card.json (default: the shipped model).
        output: the int8 .onnx file to write, its card beside it (default: `<model>-int8.onnx` beside the model).
        calibration_images: training images the activation ranges are calibrated on.
        format: "QDQ" (Quantize/DequantizeLinear around float ops, fused by ONNX Runtime) or "QOperator"
            (QLinearConv and friends written directly).
        per_channel: one weight scale per output channel instead of one per tensor.
        calibration_method: "MinMax", "Entropy" or "Percentile" (99.999th) activation ranges.
        preprocess: run `quant_pre_process` (shape inference and graph clean-up) first.
        exclude_first_conv: keep the first convolution (1 input channel) in float.
        val_size: validation images of the source model's training split (default: from its card).
        split_seed: seed of that split (default: from its card).
        evaluate: measure the int8 file on the full test set for its card (off: a quick build whose card
            says it was not evaluated).
        data_dir: folder with the Fashion-MNIST files (default: search the usual places).

    Returns:
        The path of the int8 model's card.
    """
    import onnx
    import onnxruntime

    source_path, source_card_path = resolve_model_files(model)
    source = ModelCard.read(source_card_path)
    if source.quantization is not None:
        raise ValueError(f"{source_path} is already quantised ({source.quantization.format}); pass the fp32 model")
    out = Path(output) if output else source_path.with_name(source_path.stem + "-int8.onnx")
    if not out.name.endswith(".onnx"):
        raise ValueError(f"--output {out} must be an .onnx file name (its card is written beside it)")
    if out.resolve() == source_path.resolve():
        raise ValueError(f"--output {out} would overwrite the source model; choose another file name")
    if val_size is None or split_seed is None:
        recorded = _recorded_split(source)
        val_size = recorded[0] if val_size is None else val_size
        split_seed = recorded[1] if split_seed is None else split_seed
    settings = Settings(format, per_channel, calibration_method, preprocess, exclude_first_conv)
    indices = calibration_indices(calibration_images, val_size=val_size, split_seed=split_seed)
    train_images, _ = load_split("train", data_dir)  # (60000, 28, 28) uint8
    quantize_onnx(source_path, out, source, train_images[indices], settings)

    command = (
        f"python -m fashionstream.classifier.quantize --model {_shown(source_path)} --output {_shown(out)} "
        f"--calibration_images {len(indices)} --format {settings.format} --per_channel {settings.per_channel} "
        f"--calibration_method {settings.calibration_method} --preprocess {settings.preprocess} "
        f"--exclude_first_conv {settings.exclude_first_conv} --val_size {val_size} --split_seed {split_seed}"
    )
    record = Quantization(
        tool="onnxruntime.quantization.quantize_static",
        format=settings.format,
        activation_type=settings.activation_type,
        weight_type=settings.weight_type,
        per_channel=settings.per_channel,
        reduce_range=settings.reduce_range,
        calibration_method=settings.calibration_method,
        calibration_images=len(indices),
        calibration_data=(
            f"train-images-idx3-ubyte: the first {len(indices):,d} of the training part of "
            f"validation_split(60000, val_size={val_size}, split_seed={split_seed}), the source model's own split"
        ),
        calibration_indices_sha256=hashlib.sha256(indices.astype("<i8").tobytes()).hexdigest(),
        preprocessed=settings.preprocess,
        nodes_excluded=tuple([_first_conv(source_path)] if settings.exclude_first_conv else ()),
        settings_chosen_on=(
            "the defaults, chosen by bench/quantize.py sweep on the 6,000 validation images of a FashionCNN "
            "[16, 32, 48, 112]'s train/validation split (docs/benchmarks.md); the same for every source model"
            if settings == Settings()
            else "given on the command line"
        ),
        source_onnx_file=source.onnx_file,
        source_sha256=source.model_sha256,
        source_test_accuracy=source.test.accuracy,
        command=command,
        onnx=onnx.__version__,
        onnxruntime=onnxruntime.__version__,
    )
    card_path = out.with_name(out.name.removesuffix(".onnx") + ".card.json")
    # The file carries its own card's essentials, not the ones the quantiser copied from the source.
    embed(out, quantized_card(source, out, NOT_EVALUATED, record)).write(card_path)
    score = "test accuracy not evaluated"
    if evaluate:
        # Scored through the Predictor, which checks the card's SHA-256 against the file: the numbers serving sees.
        card = embed(out, quantized_card(source, out, score_on_test_set(Predictor.load(out), data_dir), record))
        card.write(card_path)
        score = f"test accuracy (ONNX Runtime, {card.test.n} images): {card.test.accuracy:.4f}"
    print(
        f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB; source {source_path.stat().st_size / 1e6:.2f} MB), "
        f"{card_path}\n{settings.describe()}, {len(indices):,d} calibration images; {score} "
        f"(source {source.test.accuracy:.4f})"
    )
    return card_path


def main(argv: list[str] | None = None) -> int:
    from jsonargparse import auto_cli

    auto_cli(quantize, args=list(sys.argv[1:] if argv is None else argv), prog="fashionstream quantize")
    return 0


if __name__ == "__main__":
    sys.exit(main())
