"""The Fashion-MNIST file reader: the real Debian copy is accepted, damaged or wrong files are refused."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

from fashionstream.classifier import fashion_mnist_files as fm
from fashionstream.classifier.fashion_mnist_files import DatasetError, find_data_dir, load_split


@pytest.fixture(scope="module")
def real_dir() -> Path:
    return find_data_dir()


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for spec in fm.ALL_FILES:
        path = fm._locate(src, spec)
        assert path is not None
        shutil.copy(path, dst / path.name)
    return dst


def test_real_files_load_with_expected_shapes_and_balanced_labels(real_dir: Path) -> None:
    images, labels = load_split("test", real_dir)
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [1000] * 10  # the test set is exactly balanced
    train_images, train_labels = load_split("train", real_dir)
    assert train_images.shape == (60000, 28, 28)
    assert np.bincount(train_labels).tolist() == [6000] * 10
    assert 60 < images.mean() < 90  # mostly black background with light garments


def test_debian_copy_is_found_and_accepted() -> None:
    if not fm._has_all(fm.DEBIAN_DIR):
        pytest.skip("Debian's dataset-fashion-mnist package is not installed")
    images, _ = load_split("test", fm.DEBIAN_DIR)
    assert images.shape == (10000, 28, 28)


def test_uncompressed_files_are_accepted(real_dir: Path, tmp_path: Path) -> None:
    for spec in fm.FILES["test"] + fm.FILES["train"]:
        (tmp_path / spec.stem).write_bytes(fm._read_bytes(fm._locate(real_dir, spec)))  # type: ignore[arg-type]
    images, labels = load_split("test", tmp_path)
    reference, _ = load_split("test", real_dir)
    assert np.array_equal(images, reference)


def test_environment_variable_is_searched(real_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = _copy(real_dir, tmp_path / "env")
    monkeypatch.setenv("FASHION_MNIST_DIR", str(copy))
    monkeypatch.setattr(fm, "CACHE_DIR", tmp_path / "empty-cache")
    assert find_data_dir() == copy


def test_corrupted_content_is_refused_naming_the_file(real_dir: Path, tmp_path: Path) -> None:
    copy = _copy(real_dir, tmp_path / "corrupt")
    target = copy / "t10k-images-idx3-ubyte.gz"
    content = bytearray(gzip.decompress(target.read_bytes()))
    content[5000] ^= 0xFF  # one pixel changed: same size, same header, different content
    target.write_bytes(gzip.compress(bytes(content)))
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte\.gz is corrupt: SHA-256") as err:
        load_split("test", copy)
    assert fm.FILES["test"][0].sha256 in str(err.value)  # says what was expected


def test_swapped_file_is_refused_by_its_header(real_dir: Path, tmp_path: Path) -> None:
    copy = _copy(real_dir, tmp_path / "swapped")
    shutil.copy(copy / "train-labels-idx1-ubyte.gz", copy / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(DatasetError, match=r"t10k-labels-idx1-ubyte\.gz is not t10k-labels.*60000 items.*10000 items"):
        load_split("test", copy)


def test_truncated_archive_is_refused(real_dir: Path, tmp_path: Path) -> None:
    copy = _copy(real_dir, tmp_path / "truncated")
    target = copy / "t10k-images-idx3-ubyte.gz"
    target.write_bytes(target.read_bytes()[:100_000])
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte\.gz"):
        load_split("test", copy)


def test_explicit_directory_without_files_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not hold the Fashion-MNIST files"):
        find_data_dir(tmp_path)
