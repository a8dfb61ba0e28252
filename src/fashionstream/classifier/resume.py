"""Training in pieces: stop after an epoch, resume from its checkpoint, end where one long run would.

A long schedule (108 epochs is about an hour on two CPU cores) should survive being split across
sessions or machines. Lightning's `--ckpt_path` restores weights, optimiser, learning-rate schedule and
epoch count, but not the random number generators, so a resumed run would shuffle and augment
differently from one that never stopped. `ResumableFit` keeps them in the checkpoint, so that a run
stopped after epoch k and resumed ends with the same weights as the uninterrupted run (on the same
machine and thread count), and it adds the pieces' fit time so the run summary reports the whole run.
"""

from __future__ import annotations

import random
import time
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback


def capture_rng() -> dict[str, Any]:
    """Every random stream training draws from: shuffling, augmentation, dropout.

    Only tensors and plain Python values, so that checkpoints still load with torch's `weights_only=True`
    (numpy's state holds an ndarray, which that loader refuses): it is kept as a tensor here.
    """
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ResumableFit(Callback):
    """Stops after `stop_after_epoch` (1-based, counted over the whole schedule) and makes resuming exact.

    The learning-rate schedule still spans `max_epochs`: stopping early is a pause, not a shorter run.
    """

    def __init__(self, stop_after_epoch: int | None = None) -> None:
        if stop_after_epoch is not None and stop_after_epoch < 1:
            raise ValueError(f"stop_after_epoch must be at least 1, got {stop_after_epoch}")
        self.stop_after_epoch = stop_after_epoch
        self.paused = False  # set when this run stopped early as asked
        self.seconds_before = 0.0  # fit time of the pieces before this one (from the checkpoint resumed)
        self._started: float | None = None

    @property
    def fit_seconds(self) -> float:
        """Fit time of the whole run so far: the earlier pieces plus this one."""
        this_piece = 0.0 if self._started is None else time.perf_counter() - self._started
        return self.seconds_before + this_piece

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Runs before the checkpoint callbacks (Lightning calls them last), so this epoch's checkpoint is
        # still written and is the one to resume from.
        epochs_done = trainer.current_epoch + 1
        last = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs > 0 else None
        if self.stop_after_epoch is not None and epochs_done >= self.stop_after_epoch and epochs_done != last:
            trainer.should_stop = True
            self.paused = True

    def state_dict(self) -> dict[str, Any]:
        # Called while a checkpoint is written: the generators as they stand between two epochs.
        return {"fit_seconds": self.fit_seconds, "rng": capture_rng()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning restores callbacks after the data module's setup, which draws from the generators
        # exactly as the first piece's did (both start from seed_everything), and before the first batch.
        self.seconds_before = float(state_dict.get("fit_seconds", 0.0))
        if "rng" in state_dict:
            restore_rng(state_dict["rng"])
