"""`fashionstream export`: a training checkpoint → ONNX + TorchScript + model card JSON.

    fashionstream export --checkpoint runs/fashion-cnn/version_0/checkpoints/epoch19-val_acc0.9500.ckpt
    fashionstream export --checkpoint best --run_dir runs/fashion-cnn/version_0 --output_dir models --name fashion-cnn

Writes `<output_dir>/<name>.onnx` (input "images" float32 (N, 1, 28, 28) normalised, dynamic N;
output "logits" (N, 10); the card's essentials in its metadata, see `embed`), `<name>.torchscript.pt`
and `<name>.card.json`. The card (a `ModelCard`) records class
names, input shape and normalisation, the ONNX model's own accuracy on the full 10 k test set
(measured here with ONNX Runtime — the numbers the Predictor will reproduce), params, MACs, the
training command and resolved config, data checksums, library versions and the SHA-256 of the
model files. The exported net is the EMA copy when the run used EMA. Flip test-time augmentation
is baked in only with `--tta true` (it doubles the MACs); the card says which.

The steps, one function each: `resolve_checkpoint` → `read_checkpoint` / `module_from_checkpoint` →
`serving_net` → `export_onnx` / `export_torchscript` → `score_onnx` → `build_card` → `embed.embed`.

Serve an exported model with `--model <output_dir>/<name>.onnx` or $FASHIONSTREAM_MODEL. The default
model is package data (`fashionstream.models`): to replace it, export into `src/fashionstream/models`
with `--name fashion-cnn` and rebuild the wheel.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fashionstream import __version__
from fashionstream.classifier.card import (
    FORMAT_VERSION,
    Architecture,
    Evaluation,
    ModelCard,
    OutputSpec,
    Training,
    TrainingData,
    Validation,
)
from fashionstream.classifier.data import FashionMNIST, ImageDataModule
from fashionstream.classifier.embed import embed
from fashionstream.classifier.module import ImageClassifier, build_classifier
from fashionstream.classifier.nets import count_macs, count_params
from fashionstream.classifier.predictor import DEFAULT_INPUT

OPSET = 18
INPUT_NAME, OUTPUT_NAME = "images", "logits"  # the ONNX graph's names, recorded in the card
# ModelCheckpoint's file name for a run without a validation set (`--data.val_size 0`, set by
# `fashionstream train`): its last epoch, which `best_checkpoint` falls back to.
FINAL_SUFFIX = "-final"
FINAL_CHECKPOINT = "epoch{epoch:02d}" + FINAL_SUFFIX


class FlipTTA(nn.Module):
    """Average of the logits for the image and its mirror: (B, 1, H, W) → (B, C)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.net(x) + self.net(torch.flip(x, dims=[3]))) / 2


# --- the checkpoint ------------------------------------------------------------------------------


def best_checkpoint(run_dir: Path) -> Path:
    """The checkpoint ModelCheckpoint kept in a run: the best on validation (`epochNN-val_accX.XXXX.ckpt`),
    or for a run without a validation set (`--data.val_size 0`) its last epoch (`epochNN-final.ckpt`)."""
    found = list((run_dir / "checkpoints").glob("*.ckpt"))
    validated = [p for p in found if "val_acc" in p.name]
    if validated:
        return max(validated, key=lambda p: float(p.stem.split("val_acc")[-1]))
    final = sorted(p for p in found if p.stem.endswith(FINAL_SUFFIX))
    if final:
        return final[-1]
    raise FileNotFoundError(
        f"no epochNN-val_accX.XXXX.ckpt or epochNN-final.ckpt checkpoint in {run_dir / 'checkpoints'}"
    )


def resolve_checkpoint(checkpoint: str, run_dir: str | None) -> tuple[Path, Path]:
    """(checkpoint file, run folder) from `--checkpoint` (a file or "best") and `--run_dir`.

    The run folder defaults to the one holding the checkpoint (`<run>/checkpoints/<file>.ckpt`).
    """
    if checkpoint == "best":
        if run_dir is None:
            raise ValueError("--checkpoint best needs --run_dir (the training run folder)")
        ckpt_path = best_checkpoint(Path(run_dir))
    else:
        ckpt_path = Path(checkpoint)
    return ckpt_path, Path(run_dir) if run_dir else ckpt_path.parent.parent


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint's contents, tensors on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    # Not weights_only: Lightning stores callback states and hyper-parameters as plain Python objects.
    ckpt: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    return ckpt


def module_from_checkpoint(ckpt: dict[str, Any], path: str | Path) -> ImageClassifier:
    """The trained LightningModule of a checkpoint read by `read_checkpoint` (from `path`), in eval mode."""
    hparams = dict(ckpt.get("hyper_parameters", {}))
    class_path = hparams.get("_class_path")  # LightningCLI records the class it instantiated
    if not class_path:
        raise ValueError(f"{path} was not written by `fashionstream train`: it records no model class")
    try:
        # The saved init arguments rebuild the net; "_class_path"/"_instantiator" are LightningCLI bookkeeping.
        module = build_classifier(str(class_path), {k: v for k, v in hparams.items() if not k.startswith("_")})
    except ValueError as exc:
        raise ValueError(f"{path} was not written by `fashionstream train`: {exc}") from exc
    module.load_state_dict(ckpt["state_dict"])
    return module.eval()


def load_checkpoint(path: str | Path) -> ImageClassifier:
    """Rebuild the LightningModule subclass recorded in a `fashionstream train` checkpoint, in eval mode."""
    return module_from_checkpoint(read_checkpoint(path), path)


# --- the model files -----------------------------------------------------------------------------


def serving_net(module: ImageClassifier, tta: bool) -> nn.Module:
    """The net that is exported: the EMA copy when the run kept one, with the flip averaged in when `tta`."""
    # Training keeps weights channels-last; serving files get plain contiguous tensors.
    net: nn.Module = module.eval_net.eval().to(memory_format=torch.contiguous_format)
    return FlipTTA(net).eval() if tta else net


def export_onnx(net: nn.Module, path: Path) -> None:
    """ONNX with input "images" float32 (N, 1, 28, 28), dynamic N, and output "logits" (N, C)."""
    example = torch.zeros(2, 1, 28, 28)
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.onnx.export(
        net,
        (example,),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes={"x": {0: batch}},
        opset_version=OPSET,
        external_data=False,
        verbose=False,
    )
    assert program is not None
    program.save(str(path), external_data=False)


def export_torchscript(net: nn.Module, path: Path) -> None:
    """A traced TorchScript file: the same net for torch users, loadable without this package."""
    # torch marks torch.jit as deprecated; the file is still what libtorch (C++) and torch.jit.load read.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(net, torch.zeros(1, 1, 28, 28))
    traced.save(str(path))


# --- the card ------------------------------------------------------------------------------------


def score_onnx(onnx_path: Path, data: ImageDataModule) -> Evaluation:
    """The ONNX file's accuracy on the data's full test set, run with ONNX Runtime the way the Predictor runs it."""
    import onnxruntime as ort

    images, labels = data.load_arrays("test")  # uint8 (N, 28, 28), (N,)
    started = time.perf_counter()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    preds = []
    for start in range(0, len(images), 1000):
        x = (images[start : start + 1000].astype(np.float32) / 255.0 - data.mean) / data.std  # (n, 28, 28)
        preds.append(session.run(None, {INPUT_NAME: x[:, None]})[0].argmax(1))
    pred = np.concatenate(preds)
    return Evaluation(
        accuracy=float((pred == labels).mean()),
        n=int(len(labels)),
        per_class_accuracy=tuple(float((pred[labels == c] == c).mean()) for c in range(int(labels.max()) + 1)),
        seconds=round(time.perf_counter() - started, 2),
        evaluated_with="onnxruntime CPU, full 10k test set, after training (never used for selection)",
    )


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _validation(ckpt: dict[str, Any]) -> Validation:
    """What the run validated on and the best score there (the data module's arguments are in its checkpoint)."""
    best = None
    for state in ckpt.get("callbacks", {}).values():
        if isinstance(state, dict) and state.get("best_model_score") is not None:
            best = float(state["best_model_score"])
    val_size = dict(ckpt.get("datamodule_hyper_parameters") or {}).get("val_size", 6000)
    if val_size == 0:
        split = "none: trained on all 60k training images, last epoch kept"
    else:
        split = f"{val_size:,d} of the 60k train set"
    return Validation(best_val_acc=best, epoch=ckpt.get("epoch"), split=split)


def _training(ckpt: dict[str, Any], ckpt_path: Path, run_dir: Path, ema: bool) -> Training:
    """The command and resolved config from the run folder, and the checkpoint's own record."""
    config_file, command_file = run_dir / "config.yaml", run_dir / "command.txt"
    hparams = dict(ckpt.get("hyper_parameters", {}))
    return Training(
        command=command_file.read_text().strip() if command_file.is_file() else None,
        config_yaml=config_file.read_text() if config_file.is_file() else None,
        hyper_parameters={k: v for k, v in hparams.items() if not k.startswith("_")},
        checkpoint=ckpt_path.name,
        global_step=ckpt.get("global_step"),
        ema=ema,
    )


def _versions() -> dict[str, str]:
    import lightning
    import onnx
    import onnxruntime

    return {
        "fashionstream": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnx_opset": str(OPSET),
        "exporter": "torch.onnx.export(dynamo=True)",
    }


def build_card(
    *,
    name: str,
    module: ImageClassifier,
    tta: bool,
    onnx_path: Path,
    torchscript_path: Path | None,
    data: ImageDataModule,
    test: Evaluation,
    ckpt: dict[str, Any],
    ckpt_path: Path,
    run_dir: Path,
) -> ModelCard:
    """The card of freshly written model files: what they are, how they score, how they were made."""
    net = module.eval_net
    return ModelCard(
        name=name,
        format_version=FORMAT_VERSION,
        created_utc=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        onnx_file=onnx_path.name,
        model_sha256=sha256_file(onnx_path),
        torchscript_file=torchscript_path.name if torchscript_path else None,
        torchscript_sha256=sha256_file(torchscript_path) if torchscript_path else None,
        class_names=tuple(data.class_names),
        input=dataclasses.replace(DEFAULT_INPUT, name=INPUT_NAME, mean=data.mean, std=data.std),
        output=OutputSpec(name=OUTPUT_NAME, kind="logits", shape=(None, len(data.class_names))),
        tta_flip_baked_in=tta,
        architecture=Architecture(class_path=str(ckpt["hyper_parameters"]["_class_path"]), net=type(net).__name__),
        params=count_params(net),
        macs=count_macs(net) * (2 if tta else 1),
        macs_note="multiply-accumulates per image counted by fashionstream.classifier.nets.count_macs"
        + (" (x2 for the baked-in flip TTA)" if tta else ""),
        test=test,
        validation=_validation(ckpt),
        training=_training(ckpt, ckpt_path, run_dir, ema=module.ema is not None),
        data=TrainingData(name="Fashion-MNIST", sha256_decompressed=data.checksums()),
        versions=_versions(),
    )


def export(
    checkpoint: str = "best",
    run_dir: str | None = None,
    output_dir: str = "models",
    name: str = "fashion-cnn",
    tta: bool = False,
    torchscript: bool = True,
) -> Path:
    """Export a checkpoint to ONNX (+ TorchScript) and write its model card.

    Args:
        checkpoint: a .ckpt file, or "best" for the best-on-validation checkpoint of `run_dir` (the last
            epoch's of a run trained without a validation set).
        run_dir: the training run folder (holds config.yaml, command.txt, metrics.csv); found from the
            checkpoint's location when not given.
        output_dir: where <name>.onnx, <name>.torchscript.pt and <name>.card.json are written.
        name: file stem and the model's name in its card.
        tta: bake horizontal-flip test-time augmentation into the exported graph (2× MACs).
        torchscript: also write the TorchScript file.

    Returns:
        The path of the model card.
    """
    ckpt_path, run = resolve_checkpoint(checkpoint, run_dir)
    ckpt = read_checkpoint(ckpt_path)
    module = module_from_checkpoint(ckpt, ckpt_path)
    net = serving_net(module, tta)

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / f"{name}.onnx"
    export_onnx(net, onnx_path)
    ts_path = out / f"{name}.torchscript.pt" if torchscript else None
    if ts_path:
        export_torchscript(net, ts_path)

    data = FashionMNIST()
    test = score_onnx(onnx_path, data)
    card = build_card(
        name=name,
        module=module,
        tta=tta,
        onnx_path=onnx_path,
        torchscript_path=ts_path,
        data=data,
        test=test,
        ckpt=ckpt,
        ckpt_path=ckpt_path,
        run_dir=run,
    )
    card = embed(onnx_path, card)  # the .onnx file carries the card's essentials; the card its new SHA-256
    card_path = out / f"{name}.card.json"
    card.write(card_path)
    print(
        f"wrote {onnx_path} ({onnx_path.stat().st_size / 1e6:.2f} MB), {card_path}"
        + (f", {ts_path}" if ts_path else "")
        + f"\ntest accuracy (ONNX Runtime, {test.n} images): {test.accuracy:.4f}; "
        f"params {card.params:,d}; MACs {card.macs:,d}"
    )
    return card_path


def main(argv: list[str] | None = None) -> int:
    from jsonargparse import auto_cli

    auto_cli(export, args=list(sys.argv[1:] if argv is None else argv), prog="fashionstream export")
    return 0


if __name__ == "__main__":
    sys.exit(main())
