"""`fashionstream train`: LightningCLI over the classifier modules and data modules.

    fashionstream train fit --config configs/fashion-cnn.yaml             # the shipped model's recipe
    fashionstream train fit --model ResNet --data FashionMNIST --trainer.max_epochs 5 --data.num_workers 2
    fashionstream train fit --model FashionCNN --print_config             # every option, resolved
    fashionstream train fit --model FashionCNN --help                     # options + params/MACs of the net

Each run writes to `runs/<logger name>/version_N/`: `config.yaml` (resolved), `command.txt`,
`metrics.csv`, `checkpoints/` (best on `val/acc`), `training_curve.png`, and — after `fit` the
best checkpoint is tested once on the 10 k test set (`--test_after_fit false` skips it) —
`confusion_matrix.png`, `per_class.md`, `test_metrics.json`. Test results never choose anything.
Uses a GPU with bf16 autocast when present, else the CPU.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import warnings
from pathlib import Path

import torch
from jsonargparse import DefaultHelpFormatter
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from fashionstream.classifier import reports
from fashionstream.classifier.data import FashionMNIST, ImageDataModule
from fashionstream.classifier.module import FashionCNN, ImageClassifier, PatchCNN, ResNet

__all__ = ["FashionCNN", "FashionMNIST", "PatchCNN", "ResNet", "TrainCLI", "main"]


class _HelpFormatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """jsonargparse's help layout, keeping the description's line breaks (the model table)."""


def _description(with_models: bool) -> str:
    """The help text's first lines: what the command is and, for --help, each model's cost at its defaults."""
    from fashionstream.classifier.nets import count_macs, count_params

    lines = [__doc__.split("\n\n")[0]]
    if not with_models:  # counting MACs runs each net once: only worth it when someone reads the help
        return lines[0]
    lines += ["", "Models (--model NAME), at their default sizes:"]
    for model_class in (FashionCNN, PatchCNN, ResNet):
        net = model_class().net
        lines.append(
            f"  {model_class.__name__:<11} {count_params(net):>12,d} params {count_macs(net):>14,d} MACs per image"
        )
    return "\n".join(lines)


class TrainCLI(LightningCLI):
    """LightningCLI plus the project's run outputs (command, curve, test reports)."""

    def __init__(self, argv: list[str]) -> None:
        self._argv = list(argv)
        gpu = torch.cuda.is_available()
        super().__init__(
            ImageClassifier,
            ImageDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={
                "accelerator": "auto",
                "precision": "bf16-mixed" if gpu and torch.cuda.is_bf16_supported() else "32-true",
                "default_root_dir": "runs",
                "logger": {
                    "class_path": "lightning.pytorch.loggers.CSVLogger",
                    "init_args": {"save_dir": "runs", "name": "train"},
                },
                "max_epochs": 20,
                "deterministic": False,
            },
            args=argv,
            parser_kwargs={
                "prog": "fashionstream train",
                "description": _description(with_models=bool({"-h", "--help"} & set(argv))),
                "formatter_class": _HelpFormatter,
            },
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.filename": "epoch{epoch:02d}-val_acc{val/acc:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.add_argument("--test_after_fit", type=bool, default=True, help="test the best checkpoint after fit")
        parser.add_argument("--threads", type=int | None, default=None, help="torch CPU threads (default: torch's)")

    def before_instantiate_classes(self) -> None:
        threads = self.config.get(self.subcommand, self.config).get("threads") if self.subcommand else None
        if threads:
            torch.set_num_threads(threads)

    def before_fit(self) -> None:
        log_dir = Path(self.trainer.log_dir or "runs")
        log_dir.mkdir(parents=True, exist_ok=True)
        (log_dir / "command.txt").write_text("fashionstream train " + shlex.join(self._argv) + "\n")
        from fashionstream.classifier.nets import count_macs, count_params

        net = self.model.net
        print(f"{type(self.model).__name__}: {count_params(net):,d} params, {count_macs(net):,d} MACs per image")

    def after_fit(self) -> None:
        log_dir = Path(self.trainer.log_dir or "runs")
        metrics = log_dir / "metrics.csv"
        if metrics.is_file():
            reports.plot_training_curve(metrics, log_dir / "training_curve.png")
        if self.config[self.subcommand].get("test_after_fit", True) and not self.trainer.fast_dev_run:
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path="best")
        print(f"run directory: {log_dir}")


def main(argv: list[str] | None = None) -> int:
    # `fashionstream train ...` passes its arguments explicitly; Lightning would warn that sys.argv differs.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    TrainCLI(list(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
