"""Find, verify and read the four Fashion-MNIST IDX files — numpy only, no torch.

    >>> from fashionstream.classifier.fashion_mnist_files import load_split
    >>> images, labels = load_split("test")      # (10000, 28, 28) uint8, (10000,) int64

Look-up order for the directory holding the files (first one that has all four wins):

1. the ``data_dir`` argument (an explicit directory must contain the files, else `DatasetError`);
2. ``$FASHION_MNIST_DIR``;
3. the user cache, ``~/.cache/fashionstream/fashion-mnist``;
4. Debian's ``dataset-fashion-mnist`` package, ``/usr/share/datasets/fashion-mnist``;
5. otherwise the files are downloaded into the user cache (see `download`).

Files may be gzip-compressed (``*.gz``) or plain. Checksums are taken over the *decompressed*
bytes because Debian re-compresses the archives, so the ``.gz`` hashes differ from upstream's
while the content is identical. A wrong, truncated or corrupt file raises `DatasetError` naming
the file and what was expected.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import time
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

Split = Literal["train", "test"]

CACHE_DIR = Path("~/.cache/fashionstream/fashion-mnist").expanduser()
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
MIRROR_URL = "https://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

# IDX magic numbers: 0x00000803 (uint8, 3 dims) for images, 0x00000801 (uint8, 1 dim) for labels.
IMAGE_MAGIC = 2051
LABEL_MAGIC = 2049


class DatasetError(RuntimeError):
    """The Fashion-MNIST files are missing, corrupt or not what they claim to be."""


@dataclass(frozen=True)
class IdxFile:
    """What one of the four files must look like once decompressed."""

    stem: str  # file name without ".gz"
    magic: int
    count: int
    sha256: str  # of the decompressed bytes

    @property
    def size(self) -> int:
        header = 16 if self.magic == IMAGE_MAGIC else 8
        per_item = 28 * 28 if self.magic == IMAGE_MAGIC else 1
        return header + self.count * per_item


# Computed from the decompressed Debian files and cross-checked against the IDX headers and sizes
# (16 + 60000*784 = 47,040,016 bytes etc.); they are the upstream zalandoresearch release.
FILES: dict[Split, tuple[IdxFile, IdxFile]] = {
    "train": (
        IdxFile(
            "train-images-idx3-ubyte",
            IMAGE_MAGIC,
            60000,
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        ),
        IdxFile(
            "train-labels-idx1-ubyte",
            LABEL_MAGIC,
            60000,
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        ),
    ),
    "test": (
        IdxFile(
            "t10k-images-idx3-ubyte",
            IMAGE_MAGIC,
            10000,
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        ),
        IdxFile(
            "t10k-labels-idx1-ubyte",
            LABEL_MAGIC,
            10000,
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        ),
    ),
}
ALL_FILES: tuple[IdxFile, ...] = FILES["train"] + FILES["test"]


def checksums() -> dict[str, str]:
    """SHA-256 of each decompressed file, by file name (recorded in the model card)."""
    return {f.stem: f.sha256 for f in ALL_FILES}


def _locate(directory: Path, spec: IdxFile) -> Path | None:
    for name in (spec.stem + ".gz", spec.stem):
        if (directory / name).is_file():
            return directory / name
    return None


def _has_all(directory: Path) -> bool:
    return all(_locate(directory, spec) is not None for spec in ALL_FILES)


def find_data_dir(data_dir: str | Path | None = None) -> Path:
    """Return a directory holding all four files, downloading into the cache as a last resort."""
    if data_dir is not None:
        explicit = Path(data_dir).expanduser()
        if not _has_all(explicit):
            missing = [s.stem for s in ALL_FILES if _locate(explicit, s) is None]
            raise DatasetError(
                f"{explicit} does not hold the Fashion-MNIST files (missing: {', '.join(missing)}; "
                "each may be plain or .gz). Point data_dir at the folder with the four IDX files or leave it unset."
            )
        return explicit
    candidates: list[Path] = []
    if env := os.environ.get("FASHION_MNIST_DIR"):
        candidates.append(Path(env).expanduser())
    candidates += [CACHE_DIR, DEBIAN_DIR]
    for directory in candidates:
        if _has_all(directory):
            return directory
    return download(CACHE_DIR)


def _read_bytes(path: Path) -> bytes:
    try:
        if path.name.endswith((".gz", ".gz.part")):
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:  # gzip raises BadGzipFile (an OSError) or EOFError
        raise DatasetError(f"cannot read {path}: {exc}; delete it so that it is fetched again") from exc


def _check(path: Path, spec: IdxFile, data: bytes) -> None:
    """Raise DatasetError unless `data` is exactly the expected file."""
    if len(data) < 8:
        raise DatasetError(f"{path} is truncated: {len(data)} bytes, expected {spec.size}")
    magic, count = int.from_bytes(data[0:4], "big"), int.from_bytes(data[4:8], "big")
    if magic != spec.magic or count != spec.count:
        raise DatasetError(
            f"{path} is not {spec.stem}: IDX header says magic {magic} with {count} items, "
            f"expected magic {spec.magic} with {spec.count} items"
        )
    if len(data) != spec.size:
        raise DatasetError(f"{path} has {len(data)} bytes once decompressed, expected {spec.size}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        raise DatasetError(
            f"{path} is corrupt: SHA-256 of the decompressed content is {digest}, expected {spec.sha256}; "
            "delete it so that it is fetched again"
        )


def read_idx(path: Path, spec: IdxFile) -> np.ndarray:
    """Read and verify one file; images come back (N, 28, 28) uint8, labels (N,) int64."""
    data = _read_bytes(path)
    _check(path, spec, data)
    if spec.magic == IMAGE_MAGIC:
        return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(spec.count, 28, 28)
    return np.frombuffer(data, dtype=np.uint8, offset=8).astype(np.int64)


def load_split(split: Split, data_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 (N, 28, 28), labels int64 (N,)) for "train" (N=60000) or "test" (N=10000)."""
    if split not in FILES:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    directory = find_data_dir(data_dir)
    image_spec, label_spec = FILES[split]
    image_path, label_path = _locate(directory, image_spec), _locate(directory, label_spec)
    assert image_path is not None and label_path is not None  # find_data_dir guarantees both
    return read_idx(image_path, image_spec), read_idx(label_path, label_spec)


# --- download (the last resort; cannot be exercised offline) --------------------------------------


def download(target: Path, base_url: str = MIRROR_URL, attempts: int = 4) -> Path:
    """Fetch the four .gz files into `target` with retries and a progress bar, verifying each."""
    from tqdm import tqdm  # only needed here

    target.mkdir(parents=True, exist_ok=True)
    for spec in ALL_FILES:
        final = target / (spec.stem + ".gz")
        if final.is_file():
            continue
        partial = final.with_suffix(".gz.part")
        for attempt in range(1, attempts + 1):
            try:
                with urllib.request.urlopen(base_url + final.name, timeout=60) as response, open(partial, "wb") as out:
                    total = int(response.headers.get("Content-Length") or 0) or None
                    with tqdm(total=total, unit="B", unit_scale=True, desc=final.name) as bar:
                        while chunk := response.read(1 << 16):
                            out.write(chunk)
                            bar.update(len(chunk))
                _check(final, spec, _read_bytes(partial))
                partial.replace(final)
                break
            except (OSError, DatasetError) as exc:
                partial.unlink(missing_ok=True)
                if attempt == attempts:
                    raise DatasetError(
                        f"could not download {base_url}{final.name} after {attempts} attempts ({exc}). "
                        f"Install Debian's dataset-fashion-mnist package or put the four files in {target} "
                        "or $FASHION_MNIST_DIR."
                    ) from exc
                time.sleep(2**attempt)  # back off: 2, 4, 8 s
    return target
