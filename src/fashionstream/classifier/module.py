"""Thin Lightning wrappers: a plain `nn.Module` from `nets.py` plus loss, optimiser, schedule and EMA.

`ImageClassifier` holds the training recipe; its subclasses `FashionCNN` and `ResNet` only say
which net to build, so `fashionstream train fit --model FashionCNN --model.widths [16,32,48,112]`
picks a class and its typed arguments (LightningCLI `class_path`), and the recipe arguments
(`--model.lr`, `--model.ema_decay`, …) are shared.

Recipe levers: label smoothing, SGD-Nesterov or AdamW with a one-cycle or cosine schedule, weight
EMA (the averaged copy is what validation, test and export use), flip test-time augmentation
reported alongside the plain accuracy (`val/acc_tta`), and knowledge distillation from an exported
teacher (`teacher`: its softened answers on the very same augmented batch join the labels as a
target, a "consistent" teacher). Checkpoints are chosen on `val/acc`.
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from fashionstream.classifier import nets


class ImageClassifier(L.LightningModule):
    """Training recipe shared by all nets. Subclasses implement `build_net`."""

    def __init__(
        self,
        num_classes: int = 10,
        optimizer: Literal["sgd", "adamw"] = "sgd",
        lr: float = 0.2,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        schedule: Literal["onecycle", "cosine"] = "onecycle",
        warmup_fraction: float = 0.2,
        label_smoothing: float = 0.1,
        ema_decay: float = 0.999,
        tta: bool = True,
        teacher: str | None = None,
        distill_weight: float = 0.5,
        distill_temperature: float = 4.0,
        teacher_tta: bool = True,
    ) -> None:
        """
        Args:
            num_classes: outputs of the net.
            optimizer: "sgd" (Nesterov momentum) or "adamw".
            lr: peak learning rate.
            momentum: SGD momentum (ignored by AdamW).
            weight_decay: L2 / decoupled weight decay; not applied to BatchNorm and biases.
            schedule: "onecycle" (linear warm-up then cosine annealing) or "cosine" (no warm-up).
            warmup_fraction: share of steps spent warming up in the one-cycle schedule.
            label_smoothing: cross-entropy label smoothing.
            ema_decay: weight EMA decay per step (0 disables EMA). The averaged net is evaluated and exported.
            tta: also report accuracy with horizontal-flip test-time augmentation (`val/acc_tta`).
            teacher: a TorchScript classifier (e.g. an export's `.torchscript.pt`) taking the same
                normalised input, to distil from; None trains on the labels alone. Loaded when fitting
                starts, never saved in checkpoints (they record its SHA-256).
            distill_weight: share of the loss that is the distillation term (the rest is cross-entropy).
            distill_temperature: softening of teacher and student scores in the distillation term.
            teacher_tta: the teacher's target is its mean over the image and its mirror image.
        """
        super().__init__()
        self.save_hyperparameters()
        # Channels-last weights: a 1-channel channels-last input is indistinguishable from a contiguous one,
        # so without this the convolutions fall back to NCHW kernels (~20 % slower on a CPU, slower on GPUs).
        self.net = self.build_net().to(memory_format=torch.channels_last)
        # A frozen copy updated after every step; requires_grad=False keeps it out of the optimiser.
        self.ema = copy.deepcopy(self.net).requires_grad_(False) if ema_decay > 0 else None
        self._fit_started = 0.0
        self._test_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        # In a list, not an attribute: an nn.Module attribute would put its weights in every checkpoint.
        self._teacher: list[torch.jit.ScriptModule] = []
        self._teacher_sha256: str | None = None
        if teacher is not None and not 0.0 < distill_weight <= 1.0:
            raise ValueError(f"distill_weight must be in (0, 1] with a teacher, not {distill_weight}")

    def build_net(self) -> nn.Module:
        raise NotImplementedError

    @property
    def eval_net(self) -> nn.Module:
        """The net used for evaluation and export: the EMA copy when enabled."""
        return self.ema if self.ema is not None else self.net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.eval_net(x)

    # --- training --------------------------------------------------------------------------------

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch  # (B, 1, 28, 28) normalised, (B,)
        logits = self.net(x)  # (B, C)
        loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)
        if self._teacher:
            distill = self._distillation_loss(x, logits)
            self.log("train/distill_loss", distill, on_step=False, on_epoch=True)
            weight = self.hparams.distill_weight
            loss = (1 - weight) * loss + weight * distill
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/acc", (logits.argmax(1) == y).float().mean(), on_step=False, on_epoch=True)
        return loss

    def _distillation_loss(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """KL divergence from the teacher's softened answer on this batch to the student's, scaled by T²
        so that its gradients keep their size whatever the temperature (Hinton et al., 2015)."""
        temperature = self.hparams.distill_temperature
        teacher = self._teacher[0]
        with torch.no_grad():
            target = (teacher(x).float() / temperature).softmax(1)
            if self.hparams.teacher_tta:
                target = (target + (teacher(x.flip(-1)).float() / temperature).softmax(1)) / 2
        student = (logits.float() / temperature).log_softmax(1)
        return F.kl_div(student, target, reduction="batchmean") * temperature**2

    def _load_teacher(self) -> None:
        path = Path(self.hparams.teacher)
        if not path.is_file():
            raise FileNotFoundError(f"teacher {str(path)!r} is not a file (a TorchScript export, *.torchscript.pt)")
        self._teacher_sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        teacher = torch.jit.load(str(path), map_location=self.device).eval()
        for parameter in teacher.parameters():  # ScriptModules have no requires_grad_()
            parameter.requires_grad_(False)
        self._teacher[:] = [teacher]

    def on_fit_start(self) -> None:
        self._fit_started = time.perf_counter()
        if self.hparams.teacher is not None and not self._teacher:
            self._load_teacher()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._teacher_sha256 is not None:
            checkpoint["teacher_sha256"] = self._teacher_sha256

    @torch.no_grad()
    def on_train_batch_end(self, outputs: object, batch: object, batch_idx: int) -> None:
        if self.ema is None:
            return
        # Warm-up of the decay: early weights are poor, so average over ~step/10 steps until the cap.
        step = self.global_step
        decay = min(self.hparams.ema_decay, (1 + step) / (10 + step))
        # Multi-tensor calls instead of a Python loop over every parameter and buffer: fewer kernel launches
        # on a GPU, where a step of these small nets takes only milliseconds.
        torch._foreach_lerp_(list(self.ema.parameters()), [p.detach() for p in self.net.parameters()], 1 - decay)
        torch._foreach_copy_(list(self.ema.buffers()), list(self.net.buffers()))  # BatchNorm statistics: live net's

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        hp = self.hparams
        decay, no_decay = [], []
        for p in self.net.parameters():
            (decay if p.ndim > 1 else no_decay).append(p)  # BN weights and biases: no weight decay
        groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if hp.optimizer == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, nesterov=True)
        else:
            opt = torch.optim.AdamW(groups, lr=hp.lr)
        total = int(self.trainer.estimated_stepping_batches)
        if hp.schedule == "onecycle":
            sched: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=hp.lr, total_steps=total, pct_start=hp.warmup_fraction, div_factor=20, final_div_factor=200
            )
        else:
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # --- evaluation ------------------------------------------------------------------------------

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        logits = self.eval_net(x)  # (B, C)
        self.log(f"{stage}/loss", F.cross_entropy(logits, y), prog_bar=stage == "val")
        self.log(f"{stage}/acc", (logits.argmax(1) == y).float().mean(), prog_bar=True)
        if self.hparams.tta:
            tta_probs = (logits.softmax(1) + self.eval_net(x.flip(-1)).softmax(1)) / 2
            self.log(f"{stage}/acc_tta", (tta_probs.argmax(1) == y).float().mean())
        return logits, y

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        if self._fit_started and not self.trainer.sanity_checking:
            # Wall time since fit start, logged per epoch for the time-to-accuracy benchmark.
            self.log("time/elapsed_s", time.perf_counter() - self._fit_started)

    def on_test_epoch_start(self) -> None:
        self._test_outputs = []

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        logits, y = self._evaluate(batch, "test")
        self._test_outputs.append((logits.argmax(1).cpu(), y.cpu()))

    def on_test_epoch_end(self) -> None:
        if not self._test_outputs or self.trainer.log_dir is None:
            return
        from fashionstream.classifier import reports

        preds = torch.cat([p for p, _ in self._test_outputs]).numpy()
        labels = torch.cat([y for _, y in self._test_outputs]).numpy()
        class_names = getattr(self.trainer.datamodule, "class_names", ()) or tuple(
            str(i) for i in range(self.hparams.num_classes)
        )
        reports.write_test_reports(Path(self.trainer.log_dir), preds, labels, class_names)


def build_classifier(class_path: str, init_args: Mapping[str, Any]) -> ImageClassifier:
    """The `ImageClassifier` subclass named by a LightningCLI `class_path`, built from its init arguments.

    Checkpoints, a run's config.yaml and model cards record the trained class this way; jsonargparse, the
    resolver LightningCLI itself uses, turns the record back into a module, checks that it is an
    `ImageClassifier` and that every argument is one the class takes. The net's weights are fresh.
    """
    from jsonargparse import ArgumentError, ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(ImageClassifier, "model", required=True)
    try:
        config = parser.parse_object({"model": {"class_path": class_path, "init_args": dict(init_args)}})
    except ArgumentError as exc:
        raise ValueError(f"cannot build a classifier from class_path {class_path!r}: {exc}") from exc
    module: ImageClassifier = parser.instantiate(config).model
    return module


class FashionCNN(ImageClassifier):
    """The cheap-serving net (about 28 M MACs, 0.34 M params with the default widths)."""

    def __init__(
        self,
        widths: tuple[int, int, int, int] = (16, 32, 48, 112),
        residual_stages: tuple[bool, bool] = (True, True),
        dropout: float = 0.0,
        **kwargs,  # the recipe: see ImageClassifier
    ) -> None:
        """
        Args:
            widths: channels at 28×28 (two convs), 14×14 and 7×7; MACs grow with their squares.
            residual_stages: residual blocks at 14×14 and 7×7.
            dropout: before the linear head.
        """
        self._net_args = {"widths": tuple(widths), "residual_stages": tuple(residual_stages), "dropout": dropout}
        super().__init__(**kwargs)
        self.save_hyperparameters()

    def build_net(self) -> nn.Module:
        return nets.FashionCNN(num_classes=self.hparams.num_classes, **self._net_args)


class PatchCNN(ImageClassifier):
    """FashionCNN without 28×28 layers (space-to-depth stem): the fastest to train on a CPU (~33 M MACs)."""

    def __init__(self, widths: tuple[int, int] = (64, 128), dropout: float = 0.0, **kwargs) -> None:
        """
        Args:
            widths: channels of the 14×14 and 7×7 stages; MACs grow with their squares.
            dropout: before the linear head.
        """
        self._net_args = {"widths": tuple(widths), "dropout": dropout}
        super().__init__(**kwargs)
        self.save_hyperparameters()

    def build_net(self) -> nn.Module:
        return nets.PatchCNN(num_classes=self.hparams.num_classes, **self._net_args)


class ResNet(ImageClassifier):
    """A ResNet-18 layout (about 456 M MACs, 11.2 M params with width 64); smaller with `width` and `blocks`."""

    def __init__(self, width: int = 64, blocks: tuple[int, ...] = (2, 2, 2, 2), **kwargs) -> None:
        """
        Args:
            width: channels of the first stage, doubled by each later stage.
            blocks: basic blocks per stage.
        """
        self._net_args = {"width": width, "blocks": tuple(blocks)}
        super().__init__(**kwargs)
        self.save_hyperparameters()

    def build_net(self) -> nn.Module:
        return nets.ResNet(num_classes=self.hparams.num_classes, **self._net_args)
