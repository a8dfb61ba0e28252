"""`fashionstream train`: LightningCLI over the classifier modules and data modules.

    fashionstream train fit --config configs/fashion-cnn.yaml             # the shipped model's recipe
    fashionstream train fit --model ResNet --data FashionMNIST --trainer.max_epochs 5 --data.num_workers 2
    fashionstream train fit --model FashionCNN --print_config             # every option, resolved
    fashionstream train fit --model FashionCNN --help                     # options + params/MACs of the net

Each run writes to `runs/<logger name>/version_N/`: `config.yaml` (resolved), `command.txt`,
`metrics.csv`, `checkpoints/` (best on `val/acc`; the last epoch with `--data.val_size 0`), `training_curve.png`,
and — after `fit` that checkpoint is tested once on the 10 k test set (`--test_after_fit false` skips it) —
`confusion_matrix.png`, `per_class.md`, `test_metrics.json`, and `run_summary.json` (machine, seed,
epochs, fit wall time, params, MACs, validation and test accuracy: what `bench/train_speed.py`
collects into bench/results/). Test results never choose anything. `--pieces.stop_after_epoch K` stops after
epoch K; the same command plus `--ckpt_path CHECKPOINT` carries on as if never stopped (classifier/resume.py).
Uses a GPU with bf16 autocast when present, else the CPU (a config may ask for bf16 on the CPU too).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import warnings
from pathlib import Path

import torch
from jsonargparse import DefaultHelpFormatter, Namespace
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from fashionstream.classifier import reports
from fashionstream.classifier.data import FashionMNIST, ImageDataModule
from fashionstream.classifier.export import FINAL_CHECKPOINT
from fashionstream.classifier.module import FashionCNN, ImageClassifier, PatchCNN, ResNet
from fashionstream.classifier.resume import ResumableFit
from fashionstream.machine import describe_machine

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
        self._tested_weights: str | None = None  # which weights the after-fit test read, for run_summary.json
        self._no_validation = False  # set by --data.val_size 0
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
        # A long schedule in pieces: --pieces.stop_after_epoch K ends this run after epoch K with a checkpoint,
        # and the same command plus --ckpt_path CHECKPOINT carries on to max_epochs as if never stopped.
        parser.add_lightning_class_args(ResumableFit, "pieces")
        parser.add_argument("--test_after_fit", type=bool, default=True, help="test the best checkpoint after fit")
        parser.add_argument("--threads", type=int | None, default=None, help="torch CPU threads (default: torch's)")

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        threads = config.get("threads")
        if threads:
            torch.set_num_threads(threads)
        data_args = (config.get("data") or {}).get("init_args") or {}
        if self.subcommand == "fit" and data_args.get("val_size", 1) == 0:
            self._train_on_everything(config)
        elif self.subcommand == "fit" and (config.get("pieces") or {}).get("stop_after_epoch"):
            # The best-validation checkpoint may be older than the last epoch; the next piece needs the latest.
            config["checkpoint"]["save_last"] = True

    def _train_on_everything(self, config: Namespace) -> None:
        """`--data.val_size 0`: the final run of a recipe chosen on validation, on all 60 k training images.

        Nothing is left to validate or to choose a checkpoint by, so the run keeps its last epoch's weights
        (where the one-cycle schedule ends; in 27 of the 28 validated runs of the CPU recipes validation chose
        the last epoch, and the one exception the epoch before: docs/benchmarks.md), skips the empty
        validation loop, and tests them.
        """
        config["checkpoint"]["monitor"] = None
        config["checkpoint"]["filename"] = FINAL_CHECKPOINT
        config["trainer"]["limit_val_batches"] = 0
        config["trainer"]["num_sanity_val_steps"] = 0
        self._no_validation = True

    def before_fit(self) -> None:
        log_dir = Path(self.trainer.log_dir or "runs")
        log_dir.mkdir(parents=True, exist_ok=True)
        (log_dir / "command.txt").write_text("fashionstream train " + shlex.join(self._argv) + "\n")
        from fashionstream.classifier.nets import count_macs, count_params

        net = self.model.net
        self._params, self._macs = count_params(net), count_macs(net)
        print(f"{type(self.model).__name__}: {self._params:,d} params, {self._macs:,d} MACs per image")

    def after_fit(self) -> None:
        pieces = next(c for c in self.trainer.callbacks if isinstance(c, ResumableFit))  # type: ignore[attr-defined]
        fit_wall_s = pieces.fit_seconds  # Trainer.fit of this run and of any pieces it resumed, read before plotting
        log_dir = Path(self.trainer.log_dir or "runs")
        metrics = log_dir / "metrics.csv"
        if metrics.is_file():
            reports.plot_training_curve(metrics, log_dir / "training_curve.png")
        if pieces.paused:
            self._tell_how_to_resume(log_dir)
            return  # a piece is not a run: no test, no summary for the tables until the schedule is done
        test: dict[str, float] = {}
        if self.config[self.subcommand].get("test_after_fit", True) and not self.trainer.fast_dev_run:
            checkpoint = self.trainer.checkpoint_callback
            ckpt_path = "best" if checkpoint is not None and getattr(checkpoint, "best_model_path", "") else None
            if ckpt_path is None:  # stopped (max_steps, max_time) before its first validation
                print("no validated checkpoint to test: testing the weights training ended with")
            (test,) = self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt_path)
            if self._no_validation:
                self._tested_weights = "final checkpoint (val_size 0: no validation set)"
            else:
                self._tested_weights = "best validation checkpoint" if ckpt_path else "final weights"
        if not self.trainer.fast_dev_run:
            summary = self._run_summary(fit_wall_s, test)
            (log_dir / "run_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            test_note = f", test acc {test['test/acc']:.4f}" if test else ""
            print(f"fit wall time {fit_wall_s:.1f} s{test_note}")
        print(f"run directory: {log_dir}")

    def _tell_how_to_resume(self, log_dir: Path) -> None:
        checkpoint = self.trainer.checkpoint_callback
        latest = getattr(checkpoint, "last_model_path", "") or getattr(checkpoint, "best_model_path", "")
        argv = _without_options(self._argv, "--ckpt_path", "--pieces.stop_after_epoch")
        print(
            f"stopped after epoch {self.trainer.current_epoch} of {self.trainer.max_epochs} as asked"
            f" (--pieces.stop_after_epoch); checkpoint: {latest}\n"
            f"carry on with: fashionstream train {shlex.join(argv + ['--ckpt_path', str(latest)])}\n"
            "(add --pieces.stop_after_epoch K to stop again after epoch K)"
        )
        print(f"run directory: {log_dir}")

    def _run_summary(self, fit_wall_s: float, test: dict[str, float]) -> dict[str, object]:
        """One run's facts for the benchmark tables: what ran, where, how long, how well."""
        config = self.config[self.subcommand]
        best = self.trainer.checkpoint_callback
        best_val = getattr(best, "best_model_score", None)
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        return {
            "command": "fashionstream train " + shlex.join(self._argv),
            "config_files": [str(c) for c in (config.get("config") or [])],
            "model": config["model"]["class_path"],
            "model_args": config["model"]["init_args"].as_dict(),
            "params": self._params,
            "macs": self._macs,
            "seed": config.get("seed_everything"),
            "max_epochs": config["trainer"].get("max_epochs"),
            "epochs_run": self.trainer.current_epoch,
            "batch_size": config["data"]["init_args"].get("batch_size"),
            "data_args": config["data"]["init_args"].as_dict(),
            "precision": str(self.trainer.precision),
            "machine": {
                **describe_machine("torch", "lightning"),
                "torch_threads": torch.get_num_threads(),
                "accelerator": "cuda" if gpu else "cpu",
                "gpu": gpu,
            },
            "fit_wall_s": round(fit_wall_s, 1),  # every piece's Trainer.fit when the run was resumed
            "resumed_from": config.get("ckpt_path"),
            "best_val_acc": float(best_val) if best_val is not None else None,
            "test_acc": test.get("test/acc"),
            "test_acc_tta": test.get("test/acc_tta"),
            "tested_weights": self._tested_weights,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }


def _without_options(argv: list[str], *names: str) -> list[str]:
    """argv less the named options and their values (`--name value` or `--name=value`)."""
    kept: list[str] = []
    skip_value = False
    for arg in argv:
        if skip_value:
            skip_value = False
        elif arg in names:
            skip_value = True
        elif not arg.startswith(tuple(name + "=" for name in names)):
            kept.append(arg)
    return kept


def main(argv: list[str] | None = None) -> int:
    # `fashionstream train ...` passes its arguments explicitly; Lightning would warn that sys.argv differs.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    TrainCLI(list(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
