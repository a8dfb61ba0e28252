"""The wheel works anywhere: built from this tree, installed into a fresh virtual environment outside
the checkout, it runs the demo and classifies an image offline, with no dataset.

The installed commands run with an empty HOME and cache, no FASHION_MNIST_DIR, a working directory
outside the checkout, download mirrors that refuse connections, and an audit hook that refuses to
open any Fashion-MNIST dataset file (Debian's copy included): whatever they need must come from the
wheel. Installing the `serve` extra needs PyPI (or pip's cache), so this takes a minute or two.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fashionstream.classifier import fashion_mnist_files as fm
from fashionstream.classifier.predictor import Predictor
from fashionstream.classifier.sample import SAMPLE_FILES, load_sample

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]

# Installed as sitecustomize.py in the commands' environment: opening any file of the full dataset
# (plain, .gz, or a download's .part) raises, so a command that needs the dataset fails loudly.
GUARD = f"""
import os, sys

FORBIDDEN = {sorted(name for spec in fm.ALL_FILES for name in (spec.stem, spec.stem + ".gz", spec.stem + ".gz.part"))!r}

def refuse_dataset(event, args):
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        if os.path.basename(os.fsdecode(args[0])) in FORBIDDEN:
            raise PermissionError(f"this test forbids reading the Fashion-MNIST dataset: {{args[0]}}")

sys.addaudithook(refuse_dataset)
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built with pip from a copy of what the build reads (the checkout keeps no build output)."""
    tree, dist = tmp_path_factory.mktemp("tree"), tmp_path_factory.mktemp("dist")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, tree / name)
    shutil.copytree(REPO / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    command = [sys.executable, "-m", "pip", "wheel", str(tree), "--no-deps", "--quiet", "-w", str(dist)]
    subprocess.run(command, check=True, timeout=300)
    (built,) = dist.glob("fashionstream-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ folder of a fresh virtual environment with the wheel and its `serve` extra."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "--quiet", f"{wheel}[serve]"], check=True, timeout=480)
    return env_dir / "bin"


@pytest.fixture(scope="module")
def offline(installed: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment the installed commands run in (see the module docstring); their cwd is its HOME."""
    home, hooks = tmp_path_factory.mktemp("home"), tmp_path_factory.mktemp("hooks")
    (hooks / "sitecustomize.py").write_text(GUARD)
    with socket.socket() as sock:  # a port nothing listens on: every download attempt is refused
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    return {
        "PATH": f"{installed}:/usr/bin:/bin",
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "PYTHONPATH": str(hooks),  # only the guard: the package comes from the virtual environment
        fm.MIRRORS_ENV: closed,
        "LC_ALL": "C.UTF-8",
    }


def _run(offline: dict[str, str], *command: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command], env=offline, cwd=offline["HOME"], capture_output=True, text=True, timeout=300
    )


def test_wheel_holds_the_model_the_sample_and_the_license_and_nothing_else(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {
        "fashionstream/models/fashion-cnn.onnx",
        "fashionstream/models/fashion-cnn.card.json",
        *(f"fashionstream/classifier/{spec.stem}.gz" for spec in SAMPLE_FILES),
        "fashionstream/py.typed",
        "fashionstream-0.1.0.dist-info/licenses/LICENSE",
    }
    assert shipped <= names, shipped - names
    assert {name.split("/")[0] for name in names} == {"fashionstream", "fashionstream-0.1.0.dist-info"}  # no tests
    assert not [name for name in names if name.endswith(".torchscript.pt")]  # serving never loads torch
    metadata = zipfile.ZipFile(wheel).read("fashionstream-0.1.0.dist-info/METADATA").decode()
    assert "License-Expression: Apache-2.0" in metadata.splitlines()


def test_guard_refuses_the_dataset(installed: Path, offline: dict[str, str]) -> None:
    """Reading the test split in that environment fails, so the demo's success there means something."""
    probe = "from fashionstream.classifier.fashion_mnist_files import load_split; load_split('test')"
    result = _run(offline, installed / "python", "-c", probe)
    assert result.returncode != 0
    assert "forbids reading the Fashion-MNIST dataset" in result.stderr or "could not download" in result.stderr


def test_installed_package_is_the_wheel_not_the_checkout(installed: Path, offline: dict[str, str]) -> None:
    result = _run(offline, installed / "python", "-c", "import fashionstream; print(fashionstream.__file__)")
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).is_relative_to(installed.parent)


def test_demo_runs_offline_from_the_wheel(installed: Path, offline: dict[str, str]) -> None:
    result = _run(offline, installed / "fashionstream", "demo", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout.strip().splitlines()[-1])
    assert (doc["sent"], doc["answered"], doc["lost"], doc["dead_lettered"]) == (1000, 1000, 0, 0), doc
    # The shipped model on the shipped sample scores what it scores on the checkout.
    assert doc["accuracy"] is not None and abs(doc["accuracy"] - Predictor.load().card.test.accuracy) < 0.03, doc
    assert not any(Path(offline["HOME"]).rglob("*ubyte*"))  # nothing was downloaded or cached


def test_predict_classifies_a_png_like_the_checkout(installed: Path, offline: dict[str, str]) -> None:
    images, _ = load_sample()
    png = Path(offline["HOME"]) / "garment.png"
    Image.fromarray(images[0]).save(png)
    result = _run(offline, installed / "fashionstream", "predict", "--json", png.name)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    checkout = Predictor.load()
    expected = checkout.predict_pixels(np.asarray(Image.open(png))[None])[0]
    assert answer["model"] == checkout.model_id  # the same model file, by its SHA-256
    assert (answer["label"], answer["class_name"]) == (expected.label, expected.class_name)
    assert abs(answer["confidence"] - expected.confidence) < 1e-5
