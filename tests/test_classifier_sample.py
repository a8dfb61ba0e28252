"""The demo sample shipped in the package: exactly the test split's first 1,000, checked on load, rebuildable."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

from fashionstream.classifier import sample
from fashionstream.classifier.fashion_mnist_files import DatasetError, load_split
from fashionstream.pipeline.producer import labelled_images


def _shipped(spec_index: int) -> Path:
    return Path(sample.__file__).with_name(sample.SAMPLE_FILES[spec_index].stem + ".gz")


def test_sample_is_the_first_thousand_of_the_real_test_split() -> None:
    images, labels = sample.load_sample()
    test_images, test_labels = load_split("test")
    assert images.shape == (1000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (1000,) and labels.dtype == np.int64
    assert np.array_equal(images, test_images[:1000]) and np.array_equal(labels, test_labels[:1000])
    assert set(labels.tolist()) == set(range(10))  # every class is in the demo


def test_sample_files_are_small() -> None:
    total = sum(_shipped(i).stat().st_size for i in range(2))
    assert total < 600_000, total  # a wheel-sized sample, not a second dataset


def test_generator_rebuilds_the_shipped_files_from_the_dataset(tmp_path: Path) -> None:
    assert sample.main(["--output-dir", str(tmp_path)]) == 0  # 0: the hashes match SAMPLE_FILES
    for index, spec in enumerate(sample.SAMPLE_FILES):
        rebuilt = gzip.decompress((tmp_path / (spec.stem + ".gz")).read_bytes())
        assert rebuilt == gzip.decompress(_shipped(index).read_bytes())
    images, labels = sample.load_sample(tmp_path)
    assert np.array_equal(images, sample.load_sample()[0]) and np.array_equal(labels, sample.load_sample()[1])


def test_damaged_sample_is_refused_naming_the_file(tmp_path: Path) -> None:
    for index in range(2):
        shutil.copy(_shipped(index), tmp_path)
    target = tmp_path / _shipped(0).name
    content = bytearray(gzip.decompress(target.read_bytes()))
    content[1000] ^= 0xFF  # one pixel: same size, same header
    target.write_bytes(gzip.compress(bytes(content)))
    with pytest.raises(DatasetError, match=r"t10k-first1000-images-idx3-ubyte\.gz is corrupt: SHA-256"):
        sample.load_sample(tmp_path)


def test_a_count_beyond_the_sample_cycles_through_it() -> None:
    images = list(labelled_images("sample", 2500))
    assert len(images) == 2500
    assert [image.name for image in images[998:1002]] == ["sample[998]", "sample[999]", "sample[0]", "sample[1]"]
    assert images[1000].data == images[0].data and images[1000].expected_label == images[0].expected_label
    assert len(list(labelled_images("sample"))) == 1000  # no count: the set once
