"""The demo sample shipped inside the package: the first 1,000 images of the Fashion-MNIST test split.

    >>> from fashionstream.classifier.sample import load_sample
    >>> images, labels = load_sample()      # (1000, 28, 28) uint8, (1000,) int64

`fashionstream demo` classifies these by default, so that a fresh install runs it offline, with no
dataset. They are exactly ``images[:1000], labels[:1000]`` of `load_split("test")`, stored as two
gzip'd IDX files beside this module and checked on every load as the full files are (IDX header,
size, SHA-256 of the decompressed content), so a damaged copy raises `DatasetError` naming the file.
Hashing the content rather than the archive keeps the check independent of how gzip packed it.

Rebuild the files from the dataset (found as `load_split` finds it):

    python -m fashionstream.classifier.sample [--data-dir DIR] [--output-dir DIR]

which writes them (by default over the shipped ones) and prints the `IdxFile`s for `SAMPLE_FILES`.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.resources
import sys
from pathlib import Path

import numpy as np

from fashionstream.classifier.fashion_mnist_files import (
    IMAGE_MAGIC,
    LABEL_MAGIC,
    IdxFile,
    idx_bytes,
    load_split,
    read_idx,
)

SAMPLE_SIZE = 1000  # the first this many test images; the demo cycles through them for larger counts

SAMPLE_FILES: tuple[IdxFile, IdxFile] = (
    IdxFile(
        f"t10k-first{SAMPLE_SIZE}-images-idx3-ubyte",
        IMAGE_MAGIC,
        SAMPLE_SIZE,
        "7a6d8e07ea021ec5bc73135ebd0a5770799557ec6f8242d8749c4f32a3cf4643",
    ),
    IdxFile(
        f"t10k-first{SAMPLE_SIZE}-labels-idx1-ubyte",
        LABEL_MAGIC,
        SAMPLE_SIZE,
        "b40abac7ec8228f434940f579deb7cf7b6e3103b5274cb91d1545771f5ef1c8b",
    ),
)


def sample_from_dataset(data_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The sample as it must be: the first `SAMPLE_SIZE` images and labels of the full test split."""
    images, labels = load_split("test", data_dir)
    return images[:SAMPLE_SIZE], labels[:SAMPLE_SIZE]


def load_sample(directory: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (1000, 28, 28), labels int64 (1000,)) from the shipped files, or those in `directory`."""
    arrays = []
    for spec in SAMPLE_FILES:
        name = spec.stem + ".gz"
        if directory is not None:
            arrays.append(read_idx(Path(directory) / name, spec))
            continue
        # as_file: a real path whether the package is a folder (as installed from a wheel) or not.
        with importlib.resources.as_file(importlib.resources.files(__package__) / name) as path:
            arrays.append(read_idx(path, spec))
    images, labels = arrays
    return images, labels


def write_sample(output_dir: str | Path, data_dir: str | Path | None = None) -> tuple[IdxFile, IdxFile]:
    """Write the sample's two files from the dataset into `output_dir`; their `IdxFile`s, hashes included."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for spec, array in zip(SAMPLE_FILES, sample_from_dataset(data_dir), strict=True):
        content = idx_bytes(array)
        # mtime=0: the same content always gives the same archive bytes, so a rebuild shows no change.
        (out / (spec.stem + ".gz")).write_bytes(gzip.compress(content, compresslevel=9, mtime=0))
        written.append(IdxFile(spec.stem, spec.magic, spec.count, hashlib.sha256(content).hexdigest()))
    images_file, labels_file = written
    return images_file, labels_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fashionstream.classifier.sample", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--data-dir", help="folder with the Fashion-MNIST files (default: search as load_split does)")
    parser.add_argument("--output-dir", default=str(Path(__file__).parent), help="default: the shipped files' folder")
    args = parser.parse_args(argv)
    written = write_sample(args.output_dir, args.data_dir)
    for spec in written:
        print(f"wrote {Path(args.output_dir) / (spec.stem + '.gz')}: {spec}")
    if written != SAMPLE_FILES:
        print("the SHA-256 values differ from SAMPLE_FILES in this module: update them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
