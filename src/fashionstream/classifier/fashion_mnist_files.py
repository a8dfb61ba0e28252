"""Find, verify and read the four Fashion-MNIST IDX files — numpy only, no torch.

    >>> from fashionstream.classifier.fashion_mnist_files import load_split
    >>> images, labels = load_split("test")      # (10000, 28, 28) uint8, (10000,) int64

Look-up order for the directory holding the files (first one that has all four wins):

1. the ``data_dir`` argument (an explicit directory must contain the files, else `DatasetError`);
2. ``$FASHION_MNIST_DIR``;
3. the user cache, ``~/.cache/fashionstream/fashion-mnist``;
4. Debian's ``dataset-fashion-mnist`` package, ``/usr/share/datasets/fashion-mnist``;
5. otherwise the files are downloaded into the user cache (see `download`) from the mirrors in
   ``$FASHION_MNIST_MIRRORS`` (base URLs separated by spaces or commas, tried in order) or else `MIRRORS`.

Files may be gzip-compressed (``*.gz``) or plain. Checksums are taken over the *decompressed*
bytes because Debian re-compresses the archives, so the ``.gz`` hashes differ from upstream's
while the content is identical. A wrong, truncated or corrupt file raises `DatasetError` naming
the file and what was expected.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Sequence
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
# Mean and standard deviation of the 60 k training pixels scaled to [0, 1]: the normalisation models are trained with.
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530

Split = Literal["train", "test"]

CACHE_DIR = Path("~/.cache/fashionstream/fashion-mnist").expanduser()
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
# Tried in order. The first is the dataset's own S3 bucket through its website endpoint, which serves
# plain HTTP only; the second, the raw files of the zalandoresearch/fashion-mnist repository. Plain
# HTTP is safe here because every file is checked against the SHA-256 values below before it is kept.
MIRRORS: tuple[str, ...] = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
MIRRORS_ENV = "FASHION_MNIST_MIRRORS"

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
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:  # gzip raises BadGzipFile (an OSError) or EOFError
        raise DatasetError(f"cannot read {path}: {exc}; delete it so that it is fetched again") from exc


_REFETCH = "delete it so that it is fetched again"


def _check(source: str | Path, spec: IdxFile, data: bytes, fix: str = _REFETCH) -> None:
    """Raise DatasetError unless `data` is exactly the expected file; messages start with `source`."""
    if len(data) < 8:
        raise DatasetError(f"{source} is truncated: {len(data)} bytes, expected {spec.size}")
    magic, count = int.from_bytes(data[0:4], "big"), int.from_bytes(data[4:8], "big")
    if magic != spec.magic or count != spec.count:
        raise DatasetError(
            f"{source} is not {spec.stem}: IDX header says magic {magic} with {count} items, "
            f"expected magic {spec.magic} with {spec.count} items"
        )
    if len(data) != spec.size:
        raise DatasetError(f"{source} has {len(data)} bytes once decompressed, expected {spec.size}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        raise DatasetError(
            f"{source} is corrupt: SHA-256 of the decompressed content is {digest}, expected {spec.sha256}; {fix}"
        )


def idx_bytes(array: np.ndarray) -> bytes:
    """uint8 images (N, 28, 28) or labels (N,) as the content of an IDX file (the inverse of `read_idx`)."""
    if array.ndim == 3:
        header = [IMAGE_MAGIC, *array.shape]
    elif array.ndim == 1:
        header = [LABEL_MAGIC, len(array)]
    else:
        raise ValueError(f"IDX files here hold (N, 28, 28) images or (N,) labels, not shape {array.shape}")
    return b"".join(n.to_bytes(4, "big") for n in header) + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


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


def validation_split(n: int, val_size: int, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training indices, validation indices) of `n` training images: the fixed-seed split that
    `data.ImageDataModule` trains and chooses checkpoints with, and that quantisation calibrates and
    chooses its settings with. Numpy only, so both torch and the torch-free tools get the same split."""
    order = np.random.default_rng(split_seed).permutation(n)
    return order[val_size:], order[:val_size]


# --- download (the last resort) -------------------------------------------------------------------


def configured_mirrors() -> tuple[str, ...]:
    """The base URLs to download from: $FASHION_MNIST_MIRRORS (spaces or commas between them) or `MIRRORS`."""
    urls = os.environ.get(MIRRORS_ENV, "").replace(",", " ").split()
    return tuple(url if url.endswith("/") else url + "/" for url in urls) or MIRRORS


class _Unavailable(Exception):
    """A mirror that answers it does not have the file (HTTP 4xx): asking it again would not help."""


def _fetch(url: str, partial: Path, timeout: float) -> None:
    """Stream `url` into `partial` with a progress bar on stderr."""
    from tqdm import tqdm  # only needed here

    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if 400 <= exc.code < 500:
            raise _Unavailable(f"{url}: HTTP {exc.code} {exc.reason}") from exc
        raise
    with response, open(partial, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        name = partial.name.removesuffix(".part")
        with tqdm(total=total, unit="B", unit_scale=True, desc=name, file=sys.stderr) as bar:
            while chunk := response.read(1 << 16):
                out.write(chunk)
                bar.update(len(chunk))


def _fetch_verified(url: str, spec: IdxFile, final: Path, timeout: float) -> None:
    """Download `url` to `final`, keeping nothing unless its decompressed content is `spec`."""
    partial = final.with_name(final.name + ".part")
    try:
        _fetch(url, partial, timeout)
        try:
            content = gzip.decompress(partial.read_bytes())
        except (OSError, EOFError, zlib.error) as exc:  # a truncated or damaged archive
            raise DatasetError(f"{url} is not a complete gzip file: {exc}") from exc
        _check(url, spec, content, fix="the mirror serves a different file")
        partial.replace(final)  # only a verified file ever gets its final name
    finally:
        partial.unlink(missing_ok=True)


def download(
    target: Path,
    mirrors: Sequence[str] | None = None,
    *,
    attempts: int = 3,
    backoff: float = 2.0,
    timeout: float = 60.0,
) -> Path:
    """Fetch the four .gz files into `target`, verifying each before it gets its final name.

    Each mirror (default: `configured_mirrors()`) is tried in order. A transfer that fails (no
    connection, a timeout, a reset) is tried `attempts` times on that mirror, waiting `backoff`,
    2 × `backoff`, ... seconds in between; a mirror that lacks the file or serves one that fails
    verification is not asked again. A file that fails verification leaves nothing behind.
    """
    urls = tuple(mirrors) if mirrors is not None else configured_mirrors()
    target.mkdir(parents=True, exist_ok=True)
    for spec in ALL_FILES:
        final = target / (spec.stem + ".gz")
        if final.is_file():
            continue
        failures: list[str] = []
        for base in urls:
            url = base + final.name
            for attempt in range(1, attempts + 1):
                try:
                    _fetch_verified(url, spec, final, timeout)
                    break
                except (_Unavailable, DatasetError) as exc:  # the same answer again: try the next mirror
                    failures.append(str(exc))
                    break
                except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, resets, cut-off bodies
                    if attempt == attempts:
                        failures.append(f"{url}: {exc} ({attempts} attempts)")
                    else:
                        time.sleep(backoff * 2 ** (attempt - 1))
            if final.is_file():
                break
        if not final.is_file():
            raise DatasetError(
                f"could not download {final.name} from any mirror: " + "; ".join(failures) + ". "
                f"Install Debian's dataset-fashion-mnist package, put the four files in {target} or "
                f"$FASHION_MNIST_DIR, or list mirrors you can reach in ${MIRRORS_ENV}."
            )
    return target
