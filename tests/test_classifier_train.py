"""Training through the real `fashionstream train` CLI on a small subset, export parity, and the configs.

Marked `train`: needs torch + lightning. About a minute on 2 CPU cores.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("lightning")

import torch  # noqa: E402

from fashionstream.classifier.card import ModelCard  # noqa: E402
from fashionstream.classifier.data import FashionMNIST  # noqa: E402
from fashionstream.classifier.predictor import Predictor  # noqa: E402
from fashionstream.cli import main as cli_main  # noqa: E402

pytestmark = pytest.mark.train
REPO = Path(__file__).resolve().parents[1]


def _epoch_metric(run_dir: Path, key: str) -> list[float]:
    with open(run_dir / "metrics.csv", newline="") as fh:
        return [float(row[key]) for row in csv.DictReader(fh) if row.get(key)]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    argv = [
        "train", "fit",
        "--model", "FashionCNN", "--data", "FashionMNIST",  # short class names, as docs/classifier.md spells them
        "--model.ema_decay", "0.9", "--model.lr", "0.05", "--data.batch_size", "128",
        "--data.train_subset", "3072", "--data.val_size", "2000", "--data.num_workers", "0",
        "--trainer.max_epochs", "3", "--trainer.limit_test_batches", "2",
        "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(root),
        "--trainer.logger.init_args.save_dir", str(root), "--trainer.logger.init_args.name", "smoke",
    ]  # fmt: skip
    assert cli_main(argv) == 0
    (run_dir,) = (root / "smoke").iterdir()
    return run_dir


def test_smoke_training_learns_and_writes_the_run_outputs(smoke_run: Path) -> None:
    losses = _epoch_metric(smoke_run, "train/loss")
    accuracies = _epoch_metric(smoke_run, "val/acc")
    assert len(losses) == 3 and losses[-1] < 0.8 * losses[0], losses
    assert accuracies[-1] > 0.6, accuracies  # chance is 0.1
    for name in ("config.yaml", "command.txt", "training_curve.png", "confusion_matrix.png", "per_class.md"):
        assert (smoke_run / name).is_file(), name
    assert "--model FashionCNN" in (smoke_run / "command.txt").read_text()
    assert "class_path: fashionstream.classifier.module.FashionCNN" in (smoke_run / "config.yaml").read_text()
    assert len(list((smoke_run / "checkpoints").glob("*.ckpt"))) == 1
    report = json.loads((smoke_run / "test_metrics.json").read_text())
    assert len(report["per_class"]) == 10 and {"precision", "recall"} <= set(report["per_class"][0])


def test_run_summary_records_machine_seed_epochs_time_cost_and_accuracy(smoke_run: Path) -> None:
    summary = json.loads((smoke_run / "run_summary.json").read_text())
    assert summary["macs"] == 28_000_448 and summary["params"] == 337_530
    assert summary["seed"] == 0 and summary["epochs_run"] == 3 and summary["max_epochs"] == 3
    assert summary["machine"]["cores"] and summary["machine"]["accelerator"] in ("cpu", "cuda")
    assert 0 < summary["fit_wall_s"] < 600
    # The same number the test pass wrote into its report, not a second estimate.
    assert summary["test_acc"] == pytest.approx(json.loads((smoke_run / "test_metrics.json").read_text())["accuracy"])
    assert 0.6 < summary["best_val_acc"] <= 1 and 0 < summary["test_acc_tta"] <= 1
    assert summary["command"].startswith("fashionstream train fit --model FashionCNN")
    assert summary["tested_weights"] == "best validation checkpoint"
    assert summary["data_args"]["val_size"] == 2000 and summary["data_args"]["alternate_flips"] is False


def test_a_run_stopped_before_any_validation_still_tests_its_final_weights(tmp_path: Path) -> None:
    # A wall-clock or step cap can end a long GPU run before its first validation: there is then no best
    # checkpoint, and the run must still report a test accuracy (of the weights it has) and its summary.
    argv = [
        "train", "fit", "--model", "FashionCNN", "--model.widths", "[0,8,8,16]", "--data", "FashionMNIST",
        "--data.train_subset", "512", "--data.batch_size", "128", "--trainer.max_steps", "2",
        "--trainer.limit_test_batches", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path),
    ]  # fmt: skip
    assert cli_main(argv) == 0
    (summary_file,) = tmp_path.rglob("run_summary.json")
    summary = json.loads(summary_file.read_text())
    assert summary["tested_weights"] == "final weights" and summary["best_val_acc"] is None
    assert 0 <= summary["test_acc"] <= 1


def test_val_size_zero_trains_on_everything_keeps_the_last_epoch_and_exports_it(tmp_path: Path) -> None:
    # The final run of a recipe chosen on validation trains on all the training images: no validation
    # loop, the last epoch's checkpoint is what gets tested, summarised and exported.
    argv = [
        "train", "fit", "--model", "FashionCNN", "--model.widths", "[0,8,8,16]", "--data", "FashionMNIST",
        "--data.val_size", "0", "--data.train_subset", "512", "--data.batch_size", "128",
        "--trainer.max_epochs", "2", "--trainer.limit_test_batches", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path),
    ]  # fmt: skip
    assert cli_main(argv) == 0
    (run_dir,) = (tmp_path / "train").iterdir()
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["epoch01-final.ckpt"]
    assert not _epoch_metric(run_dir, "val/acc")
    summary = json.loads((run_dir / "run_summary.json").read_text())
    assert summary["tested_weights"].startswith("final checkpoint") and summary["best_val_acc"] is None
    assert summary["data_args"]["val_size"] == 0 and summary["epochs_run"] == 2 and 0 <= summary["test_acc"] <= 1
    out = tmp_path / "export"
    assert cli_main(["export", "--checkpoint", "best", "--run_dir", str(run_dir), "--output_dir", str(out),
                     "--name", "all", "--torchscript", "false"]) == 0  # fmt: skip
    card = ModelCard.read(out / "all.card.json")
    assert card.training.checkpoint == "epoch01-final.ckpt" and card.validation.split.startswith("none")


def _fit_tiny(root: Path, *extra: str) -> Path:
    """A 3-epoch run of a tiny net on 512 images (val_size 0); returns its run directory."""
    argv = [
        "train", "fit", "--model", "FashionCNN", "--model.widths", "[0,8,8,16]", "--model.ema_decay", "0.9",
        "--data", "FashionMNIST", "--data.val_size", "0", "--data.train_subset", "512", "--data.batch_size", "128",
        "--data.erase", "0.5", "--trainer.max_epochs", "3", "--trainer.accelerator", "cpu",
        "--trainer.limit_test_batches", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.log_every_n_steps", "1",
        "--trainer.default_root_dir", str(root), "--trainer.logger.init_args.save_dir", str(root), *extra,
    ]  # fmt: skip
    assert cli_main(argv) == 0
    return max((root / "train").iterdir(), key=lambda p: int(p.name.split("_")[1]))


def test_a_run_stopped_after_an_epoch_and_resumed_ends_as_if_never_stopped(tmp_path: Path) -> None:
    # A long schedule can run in pieces: the learning-rate schedule, the shuffling and the augmentation
    # carry on where they stopped, so the final weights are those of the uninterrupted run.
    whole = _fit_tiny(tmp_path / "whole")
    first = _fit_tiny(tmp_path / "pieces", "--pieces.stop_after_epoch", "1")
    assert not (first / "run_summary.json").exists()  # a piece is not a run the tables should count
    (paused_at,) = (first / "checkpoints").iterdir()
    assert paused_at.name == "epoch00-final.ckpt"
    rest = _fit_tiny(tmp_path / "pieces", "--ckpt_path", str(paused_at))
    summary = json.loads((rest / "run_summary.json").read_text())
    assert summary["epochs_run"] == 3 and summary["resumed_from"] == str(paused_at)
    both_pieces = torch.load(paused_at, map_location="cpu", weights_only=False)["callbacks"]
    (first_piece_s,) = [state["fit_seconds"] for key, state in both_pieces.items() if "ResumableFit" in key]
    assert summary["fit_wall_s"] > first_piece_s > 0  # the summary counts both pieces' time
    lr = "lr-SGD/pg1"  # logged every step: the schedule carries on where it stopped
    lr_whole, lr_pieces = _epoch_metric(whole, lr), _epoch_metric(first, lr) + _epoch_metric(rest, lr)
    assert len(lr_whole) > 3 and lr_pieces == pytest.approx(lr_whole)
    weights = {
        name: torch.load(next((run / "checkpoints").iterdir()), map_location="cpu", weights_only=False)["state_dict"]
        for name, run in (("whole", whole), ("pieces", rest))
    }
    assert weights["whole"].keys() == weights["pieces"].keys()
    for key, value in weights["whole"].items():
        assert torch.allclose(value.float(), weights["pieces"][key].float(), atol=1e-6), key
    assert summary["test_acc"] == json.loads((whole / "run_summary.json").read_text())["test_acc"]


def test_stop_after_epoch_must_be_positive() -> None:
    from fashionstream.classifier.resume import ResumableFit

    with pytest.raises(ValueError, match="at least 1"):
        ResumableFit(stop_after_epoch=0)


def test_export_parity_onnx_and_torchscript(smoke_run: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    from fashionstream.classifier.export import load_checkpoint

    assert cli_main(["export", "--checkpoint", "best", "--run_dir", str(smoke_run), "--output_dir", str(tmp_path),
                     "--name", "smoke"]) == 0  # fmt: skip
    card = ModelCard.read(tmp_path / "smoke.card.json")
    assert card.training.command is not None
    assert card.training.command.startswith("fashionstream train fit --model FashionCNN")
    assert card.macs == 28_000_448 and card.params == 337_530 and card.tta_flip_baked_in is False
    # The .onnx file carries the card's essentials itself: served alone, it is described the same way.
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(tmp_path / "smoke.onnx", alone / "smoke.onnx")
    assert Predictor.load(alone / "smoke.onnx").description == card.embedded()

    (ckpt,) = (smoke_run / "checkpoints").glob("*.ckpt")
    net = load_checkpoint(ckpt).eval_net.eval()
    data = FashionMNIST()
    images, _ = data.load_arrays("test")
    x = ((images[:256].astype(np.float32) / 255 - data.mean) / data.std)[:, None]  # (256, 1, 28, 28) real images
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()  # (256, 10)
    session = ort.InferenceSession(str(tmp_path / "smoke.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {"images": x})[0]
    scripted = torch.jit.load(str(tmp_path / "smoke.torchscript.pt"))
    with torch.no_grad():
        ts_out = scripted(torch.from_numpy(x)).numpy()
    assert np.abs(onnx_out - expected).max() <= 1e-4
    assert np.abs(ts_out - expected).max() <= 1e-4
    assert session.run(None, {"images": x[:1]})[0].shape == (1, 10)  # dynamic batch axis


@pytest.mark.parametrize("config", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_runs_a_few_steps(config: Path, tmp_path: Path) -> None:
    argv = [
        "train", "fit", "--config", str(config),
        "--trainer.max_steps", "3", "--trainer.limit_val_batches", "1", "--trainer.accelerator", "cpu",
        "--trainer.enable_progress_bar", "false",  # each config's own precision: bf16-mixed runs on CPUs too
        "--data.train_subset", "1024", "--test_after_fit", "false",
        "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path),
    ]  # fmt: skip
    assert cli_main(argv) == 0
    assert list(tmp_path.rglob("config.yaml")), "the resolved config was not saved"


def test_resnet_by_short_class_name(tmp_path: Path) -> None:
    argv = [
        "train", "fit", "--model", "ResNet", "--model.width", "8", "--data", "FashionMNIST",
        "--trainer.max_epochs", "1", "--trainer.max_steps", "2", "--data.num_workers", "0",
        "--data.batch_size", "32", "--trainer.limit_val_batches", "1", "--test_after_fit", "false",
        "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path),
    ]  # fmt: skip
    assert cli_main(argv) == 0
    (config,) = tmp_path.rglob("config.yaml")
    assert "class_path: fashionstream.classifier.module.ResNet" in config.read_text()


def test_stemless_fashion_cnn_has_one_full_resolution_conv() -> None:
    from fashionstream.classifier.nets import FashionCNN, count_macs

    stemless, default = FashionCNN(widths=(0, 24, 48, 112)), FashionCNN()
    full_res = [m for m in stemless.features if isinstance(m, torch.nn.Sequential)][:1]
    assert full_res[0][0].in_channels == 1 and full_res[0][0].out_channels == 24
    assert stemless(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert count_macs(stemless) == 23_766_848 < count_macs(default)


def test_patch_cnn_shapes_cost_and_onnx_parity(tmp_path: Path) -> None:
    import onnxruntime as ort

    from fashionstream.classifier.export import export_onnx
    from fashionstream.classifier.nets import PatchCNN, count_macs

    torch.manual_seed(0)
    net = PatchCNN(widths=(32, 64)).eval()
    stage_14 = 14 * 14 * 32 * 9 * (4 + 2 * 32)  # unshuffled stem conv + residual pair, at 14×14
    stage_7 = 7 * 7 * 64 * 9 * (32 + 2 * 64)
    assert count_macs(net) == stage_14 + stage_7 + 128 * 10
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        expected = net(x).numpy()  # (5, 10)
    export_onnx(net, tmp_path / "patch.onnx")  # space-to-depth must survive the export
    session = ort.InferenceSession(str(tmp_path / "patch.onnx"), providers=["CPUExecutionProvider"])
    assert np.abs(session.run(None, {"images": x.numpy()})[0] - expected).max() <= 1e-4


def test_progressive_resize_trains_small_then_native_and_evaluates_native(tmp_path: Path) -> None:
    import lightning as L

    from fashionstream.classifier.module import FashionCNN as FashionCNNModule

    seen: dict[str, set[tuple[int, int, int]]] = {"train": set(), "val": set()}

    class RecordShapes(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
            seen["train"].add((trainer.current_epoch, *batch[0].shape[-2:]))

        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:  # type: ignore[no-untyped-def]
            seen["val"].add((trainer.current_epoch, *batch[0].shape[-2:]))

    data = FashionMNIST(batch_size=64, val_size=256, train_subset=128, progressive_resize=[(2, 28), (0, 16)])
    assert [data.train_size(e) for e in range(3)] == [16, 16, 28]
    trainer = L.Trainer(
        max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        limit_val_batches=1, num_sanity_val_steps=0, callbacks=[RecordShapes()], default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(FashionCNNModule(widths=(0, 8, 8, 16), ema_decay=0.0, tta=False), datamodule=data)
    assert seen["train"] == {(0, 16, 16), (1, 16, 16), (2, 28, 28)}
    assert seen["val"] == {(0, 28, 28), (1, 28, 28), (2, 28, 28)}
    with pytest.raises(ValueError, match="epoch 0"):
        FashionMNIST(progressive_resize=[(3, 20)])


def test_alternate_flips_show_every_image_both_ways_in_consecutive_epochs() -> None:
    import lightning as L

    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    data = FashionMNIST(val_size=100, train_subset=256, translate=0, alternate_flips=True)
    data.trainer = trainer
    data.setup("fit")
    batch = data.train_dataloader().dataset.__getitems__(list(range(256)))
    assert len(batch) == 3  # images, labels and the indices that pick each image's flip
    plain = (batch[0].unsqueeze(1).float() / 255 - data.mean) / data.std  # (256, 1, 28, 28)
    trainer.training = True
    seen = []
    for epoch in range(3):
        trainer.fit_loop.epoch_progress.current.completed = epoch  # what trainer.current_epoch reads
        x, labels = data.on_after_batch_transfer(batch, 0)
        assert torch.equal(labels, batch[1])
        flipped = (x - plain.flip(-1)).abs().amax(dim=(1, 2, 3)) < 1e-6
        unflipped = (x - plain).abs().amax(dim=(1, 2, 3)) < 1e-6
        assert bool((flipped | unflipped).all())  # each image is itself or its mirror image
        seen.append(flipped & ~unflipped)  # (256,) mirrored, ignoring symmetric images
    asymmetric = ~((plain - plain.flip(-1)).abs().amax(dim=(1, 2, 3)) < 1e-6)
    assert 64 < int(seen[0].sum()) < 192  # the first epoch's flips are random
    assert torch.equal(seen[1], ~seen[0] & asymmetric)  # the next epoch shows the other side
    assert torch.equal(seen[2], seen[0])


SHIPPED_TORCHSCRIPT = REPO / "src" / "fashionstream" / "models" / "fashion-cnn.torchscript.pt"


def test_distillation_trains_from_an_exported_teacher_and_keeps_it_out_of_checkpoints(tmp_path: Path) -> None:
    import hashlib

    argv = [
        "train", "fit", "--model", "FashionCNN", "--model.widths", "[0, 8, 16, 32]",
        "--model.teacher", str(SHIPPED_TORCHSCRIPT), "--model.distill_weight", "0.7",
        "--data", "FashionMNIST", "--data.train_subset", "512", "--data.val_size", "0", "--data.batch_size", "128",
        "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
        "--test_after_fit", "false",
        "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path),
    ]  # fmt: skip
    assert cli_main(argv) == 0
    (run_dir,) = {path.parent for path in tmp_path.rglob("metrics.csv")}
    distill = _epoch_metric(run_dir, "train/distill_loss")
    assert distill and all(np.isfinite(distill)) and distill[-1] > 0
    (checkpoint_file,) = tmp_path.rglob("*.ckpt")
    checkpoint = torch.load(checkpoint_file, map_location="cpu", weights_only=False)
    assert checkpoint["teacher_sha256"] == hashlib.sha256(SHIPPED_TORCHSCRIPT.read_bytes()).hexdigest()
    assert not [key for key in checkpoint["state_dict"] if "teacher" in key]  # the student's weights only


def test_distillation_loss_is_zero_when_the_student_answers_like_the_teacher() -> None:
    from fashionstream.classifier.module import FashionCNN

    module = FashionCNN(teacher=str(SHIPPED_TORCHSCRIPT), teacher_tta=False, distill_temperature=4.0)
    module._load_teacher()
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        teacher_logits = module._teacher[0](x)
        same = module._distillation_loss(x, teacher_logits)
        other = module._distillation_loss(x, torch.zeros_like(teacher_logits))
    assert abs(float(same)) < 1e-4 < float(other)
    with pytest.raises(FileNotFoundError, match="not a file"):
        FashionCNN(teacher=str(REPO / "no-such-teacher.pt"))._load_teacher()
    with pytest.raises(ValueError, match="distill_weight"):
        FashionCNN(teacher=str(SHIPPED_TORCHSCRIPT), distill_weight=0.0)
