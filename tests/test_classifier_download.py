"""Downloading Fashion-MNIST: the real download code against local mirrors on 127.0.0.1.

Each mirror is a `http.server` on a thread serving the four real IDX .gz files (Debian's copy, or
wherever `find_data_dir` finds them); one serves a damaged file, one is a closed port. No back-off
sleeps: the tests pass `backoff=0`.
"""

from __future__ import annotations

import functools
import gzip
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fashionstream.classifier import fashion_mnist_files as fm
from fashionstream.classifier.fashion_mnist_files import DatasetError, download, find_data_dir, load_split


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass  # keep the test output clean


@pytest.fixture(scope="module")
def real_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the four real files, each as the .gz a mirror serves."""
    source, folder = find_data_dir(), tmp_path_factory.mktemp("real")
    for spec in fm.ALL_FILES:
        path = fm._locate(source, spec)
        assert path is not None
        if path.name.endswith(".gz"):
            (folder / path.name).symlink_to(path)
        else:
            (folder / (path.name + ".gz")).write_bytes(gzip.compress(path.read_bytes(), compresslevel=1))
    return folder


def _serve(folder: Path) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=folder))
    thread = threading.Thread(target=server.serve_forever, name="mirror", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def mirror(real_files: Path) -> Iterator[str]:
    """Base URL of a mirror serving the real files."""
    yield from _serve(real_files)


@pytest.fixture
def corrupt_mirror(real_files: Path, tmp_path: Path) -> Iterator[str]:
    """Base URL of a mirror whose t10k-images file is a valid gzip of the wrong content (one pixel changed)."""
    folder = tmp_path / "corrupt-mirror"
    folder.mkdir()
    for path in real_files.iterdir():
        (folder / path.name).symlink_to(path.resolve())
    damaged = folder / "t10k-images-idx3-ubyte.gz"
    content = bytearray(gzip.decompress(damaged.read_bytes()))
    content[5000] ^= 0xFF
    damaged.unlink()
    damaged.write_bytes(gzip.compress(bytes(content), compresslevel=1))
    yield from _serve(folder)


@pytest.fixture
def closed_port() -> str:
    """Base URL of a port nothing listens on: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy from the environment must not intercept the local mirrors."""
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")


def _cached(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_download_fills_the_cache_with_files_that_load(mirror: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert download(cache, [mirror], backoff=0) == cache
    assert _cached(cache) == sorted(spec.stem + ".gz" for spec in fm.ALL_FILES)  # no .part left over
    images, labels = load_split("test", cache)
    reference_images, reference_labels = load_split("test", find_data_dir())
    assert np.array_equal(images, reference_images) and np.array_equal(labels, reference_labels)


def test_corrupt_file_is_refused_naming_it_and_nothing_is_cached(corrupt_mirror: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(DatasetError) as err:
        download(cache, [corrupt_mirror], backoff=0)
    message = str(err.value)
    assert "could not download t10k-images-idx3-ubyte.gz" in message
    assert f"{corrupt_mirror}t10k-images-idx3-ubyte.gz is corrupt: SHA-256" in message
    assert fm.FILES["test"][0].sha256 in message  # says what was expected
    assert not any(name.startswith("t10k-images") for name in _cached(cache))  # neither the file nor a .part


def test_first_mirror_down_falls_back_to_the_second(closed_port: str, mirror: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    download(cache, [closed_port, mirror], attempts=2, backoff=0)
    images, _ = load_split("test", cache)
    assert images.shape == (10000, 28, 28)


def test_mirrors_come_from_the_environment_and_every_failure_is_reported(
    closed_port: str, corrupt_mirror: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(fm.MIRRORS_ENV, f"{closed_port.rstrip('/')}, {corrupt_mirror}")
    assert fm.configured_mirrors() == (closed_port, corrupt_mirror)
    cache = tmp_path / "cache"
    with pytest.raises(DatasetError) as err:
        download(cache, attempts=2, backoff=0)
    message = str(err.value)
    assert f"{closed_port}t10k-images-idx3-ubyte.gz: " in message and "(2 attempts)" in message
    assert f"{corrupt_mirror}t10k-images-idx3-ubyte.gz is corrupt" in message
    assert fm.MIRRORS_ENV in message  # the fix names the variable


def test_find_data_dir_downloads_into_the_cache_as_a_last_resort(
    mirror: str, closed_port: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, nowhere = tmp_path / "cache", tmp_path / "nowhere"
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)
    monkeypatch.setattr(fm, "CACHE_DIR", cache)
    monkeypatch.setattr(fm, "DEBIAN_DIR", nowhere)  # as on a machine without the Debian package
    monkeypatch.setenv(fm.MIRRORS_ENV, mirror)
    assert find_data_dir() == cache
    monkeypatch.setenv(fm.MIRRORS_ENV, closed_port)  # from now on a download would fail
    assert load_split("test")[0].shape == (10000, 28, 28)  # read from the cache
