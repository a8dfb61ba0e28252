"""Lightning data modules: a base for any small greyscale image set, and Fashion-MNIST.

The whole dataset lives in memory as uint8 tensors (60 k × 28 × 28 = 47 MB); batches are
normalised and augmented *after* they reach the device (`on_after_batch_transfer`), so the same
code is fast on CPU (no per-image Python transforms) and on a GPU (augmentation runs there).

The 10 k test set is read only by `test_dataloader`: the validation split, carved from the
training set with a fixed seed, is what chooses checkpoints.

To plug in a new dataset, subclass `ImageDataModule` and implement `load_arrays` (see
docs/classifier.md for a complete example).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fashionstream.classifier import fashion_mnist_files

Split = Literal["train", "test"]


class InMemoryImages(Dataset):
    """uint8 images (N, H, W) and labels (N,) in one tensor each, fetched a whole batch at a time.

    `DataLoader` calls `__getitems__` with a batch of indices when a dataset has it, so a batch is one
    gather instead of B single-image lookups and a stack — the difference matters on a GPU, where a step
    takes well under a millisecond, and when the tensors already live on the GPU. With `with_index` a
    batch also carries the images' indices (B,), for augmentation that depends on the image's history.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, with_index: bool = False) -> None:
        self.images, self.labels, self.with_index = images, labels, with_index

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        image, label = self.images[index], self.labels[index]
        return (image, label, torch.tensor(index)) if self.with_index else (image, label)

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        idx = torch.as_tensor(indices, device=self.labels.device)
        if self.with_index:
            return self.images[idx], self.labels[idx], idx
        return self.images[idx], self.labels[idx]

    def to(self, device: torch.device) -> InMemoryImages:
        return InMemoryImages(self.images.to(device), self.labels.to(device), self.with_index)


def _already_batched(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """collate_fn for `InMemoryImages`: `__getitems__` already returns the batch."""
    return batch


class ImageDataModule(L.LightningDataModule):
    """Base data module: in-memory uint8 images, fixed-seed validation split, batch-level augmentation.

    Subclasses set `class_names`, `mean`, `std` and implement `load_arrays`.
    """

    class_names: tuple[str, ...] = ()
    mean: float = 0.5
    std: float = 0.5

    def __init__(
        self,
        batch_size: int = 256,
        eval_batch_size: int = 1024,
        num_workers: int = 0,
        val_size: int = 6000,
        split_seed: int = 0,
        flip: bool = True,
        alternate_flips: bool = False,
        translate: int = 2,
        erase: float = 0.0,
        train_subset: int | None = None,
        data_dir: str | None = None,
        device_resident: bool = False,
        progressive_resize: list[tuple[int, int]] | None = None,
    ) -> None:
        """
        Args:
            batch_size: images per training batch.
            eval_batch_size: images per validation/test batch (larger ones fall out of a CPU's caches).
            num_workers: DataLoader worker processes; 0 is fastest for in-memory data on CPU.
            val_size: images held out of the training set for validation (checkpoint choice). 0 trains on
                all of it, for the final run of a recipe chosen on validation: `fashionstream train` then
                skips validation and keeps the last epoch.
            split_seed: seed of the train/validation split, independent of the training seed.
            flip: random horizontal flips in training.
            alternate_flips: with `flip`, flip each image at random in the first epoch and then in every
                other epoch, so any two consecutive epochs show it both ways (random flips repeat the same
                side half the time; alternating makes short runs behave like longer ones).
            translate: random shifts of up to this many pixels (pad with zeros, random crop).
            erase: probability of random erasing (one rectangle of 1/16–1/4 of the image set to 0).
            train_subset: use only the first N training images after the split (smoke tests).
            data_dir: folder with the dataset files; None searches the usual places.
            device_resident: copy the whole dataset (47 MB) to the accelerator once, so batches are
                gathered there and nothing crosses PCIe per step (GPU speed runs; needs num_workers 0).
            progressive_resize: (first_epoch, size) pairs: from that epoch on, training images are scaled
                to size×size (after augmentation). The nets pool globally, so they take any size, and a
                step costs about in proportion to the pixels: [[0, 20], [10, 28]] runs the first ten
                epochs at half the cost. Validation, test and export always use the native size.
        """
        super().__init__()
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.val_size = val_size
        self.split_seed = split_seed
        self.flip = flip
        self.alternate_flips = alternate_flips
        self.translate = translate
        self.erase = erase
        self.train_subset = train_subset
        self.data_dir = data_dir
        self.device_resident = device_resident
        self.progressive_resize = sorted((int(e), int(s)) for e, s in progressive_resize or ())
        if self.progressive_resize and self.progressive_resize[0][0] != 0:
            raise ValueError(f"progressive_resize must start at epoch 0, got {self.progressive_resize}")
        self._sets: dict[str, InMemoryImages] = {}
        self._first_flips = torch.zeros(0, dtype=torch.bool)  # (N_train,) epoch-0 flips for alternate_flips

    def load_arrays(self, split: Split) -> tuple[np.ndarray, np.ndarray]:
        """Return (uint8 images (N, H, W), int64 labels (N,)) for the split."""
        raise NotImplementedError

    def checksums(self) -> dict[str, str]:
        """Content checksums of the data files, recorded in the model card."""
        return {}

    def setup(self, stage: str | None = None) -> None:
        if self._sets:
            return
        images, labels = self.load_arrays("train")
        train_idx, val_idx = fashion_mnist_files.validation_split(len(labels), self.val_size, self.split_seed)
        if self.train_subset is not None:
            train_idx = train_idx[: self.train_subset]
        x, y = torch.from_numpy(np.array(images)), torch.from_numpy(np.array(labels))  # writable copies
        self._sets["train"] = InMemoryImages(x[train_idx], y[train_idx], with_index=self.alternate_flips)
        if self.alternate_flips:  # drawn only when used, so other recipes keep their random streams
            self._first_flips = torch.rand(len(train_idx)) < 0.5
        self._sets["val"] = InMemoryImages(x[val_idx], y[val_idx])
        test_images, test_labels = self.load_arrays("test")
        self._sets["test"] = InMemoryImages(
            torch.from_numpy(np.array(test_images)), torch.from_numpy(np.array(test_labels))
        )
        if self.device_resident and self.trainer is not None:
            if self.num_workers:
                raise ValueError("device_resident needs num_workers 0: worker processes cannot share GPU tensors")
            device = self.trainer.strategy.root_device
            self._sets = {name: ds.to(device) for name, ds in self._sets.items()}

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        batch = self.batch_size if name == "train" else self.eval_batch_size
        return DataLoader(
            self._sets[name],
            batch_size=batch,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=_already_batched,
            drop_last=shuffle and len(self._sets[name]) > batch,  # equal-size batches keep BatchNorm steady
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def on_after_batch_transfer(self, batch: tuple[torch.Tensor, ...], dataloader_idx: int) -> tuple:
        images, labels, *index = batch  # (B, H, W) uint8, (B,) int64, and (B,) indices with alternate_flips
        x = images.unsqueeze(1).float().div_(255.0)  # (B, 1, H, W) in [0, 1]
        if self.trainer is not None and self.trainer.training:
            epoch = self.trainer.current_epoch
            flips = self._flip_mask(epoch, len(x), x.device, index[0] if index else None)
            x = augment(x, flips=flips, translate=self.translate, erase=self.erase)
            size = self.train_size(epoch)
            if size is not None and size != x.shape[-1]:
                # Antialiased bilinear: a plain subsample would alias thin stripes and stitching.
                x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last), labels

    def _flip_mask(self, epoch: int, n: int, device: torch.device, index: torch.Tensor | None) -> torch.Tensor | None:
        """(B,) bool: which images of this training batch to mirror; None when flips are off."""
        if not self.flip:
            return None
        if index is None:  # plain random flips
            return torch.rand(n, device=device) < 0.5
        if self._first_flips.device != device:  # once: batches may be moved to a GPU the dataset is not on
            self._first_flips = self._first_flips.to(device)
        return self._first_flips[index] ^ bool(epoch % 2)

    def train_size(self, epoch: int) -> int | None:
        """Side of the training images in this epoch under `progressive_resize` (None: native size)."""
        size = None
        for first_epoch, s in self.progressive_resize:
            if epoch >= first_epoch:
                size = s
        return size


def augment(x: torch.Tensor, flips: torch.Tensor | None, translate: int, erase: float) -> torch.Tensor:
    """Per-image flip (where `flips`, a (B,) bool mask, says), random shift and erasing of a (B, 1, H, W)
    batch in [0, 1], vectorised."""
    b, _, h, w = x.shape
    if flips is not None:
        x = torch.where(flips[:, None, None, None], x.flip(-1), x)
    if translate > 0:
        t = translate
        padded = torch.nn.functional.pad(x, (t, t, t, t))  # (B, 1, H+2t, W+2t), zeros = background
        dy = torch.randint(0, 2 * t + 1, (b,), device=x.device)
        dx = torch.randint(0, 2 * t + 1, (b,), device=x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (B, H, 1)
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (B, 1, W)
        x = padded[torch.arange(b, device=x.device)[:, None, None], 0, rows, cols].unsqueeze(1)  # (B, 1, H, W)
    if erase > 0:
        area = torch.empty(b, device=x.device).uniform_(1 / 16, 1 / 4) * h * w
        aspect = torch.exp(torch.empty(b, device=x.device).uniform_(-1.1, 1.1))  # log-uniform in ~[1/3, 3]
        eh = (area * aspect).sqrt().clamp(1, h)
        ew = (area / aspect).sqrt().clamp(1, w)
        y0 = torch.rand(b, device=x.device) * (h - eh)
        x0 = torch.rand(b, device=x.device) * (w - ew)
        ys = torch.arange(h, device=x.device)[None, :, None]
        xs = torch.arange(w, device=x.device)[None, None, :]
        box = (ys >= y0[:, None, None]) & (ys < (y0 + eh)[:, None, None])
        box = box & (xs >= x0[:, None, None]) & (xs < (x0 + ew)[:, None, None])  # (B, H, W)
        chosen = (torch.rand(b, device=x.device) < erase)[:, None, None]
        x = x.masked_fill((box & chosen).unsqueeze(1), 0.0)
    return x


class FashionMNIST(ImageDataModule):
    """Zalando's Fashion-MNIST: 60 k training and 10 k test images, 28×28 grey, 10 classes."""

    class_names = fashion_mnist_files.CLASS_NAMES
    mean = fashion_mnist_files.FASHION_MNIST_MEAN
    std = fashion_mnist_files.FASHION_MNIST_STD

    def load_arrays(self, split: Split) -> tuple[np.ndarray, np.ndarray]:
        return fashion_mnist_files.load_split(split, Path(self.data_dir) if self.data_dir else None)

    def checksums(self) -> dict[str, str]:
        return fashion_mnist_files.checksums()
