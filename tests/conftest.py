"""Shared fixtures: small real checkpoints trained on the embedded digits, real sample photos on disk."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PYTHON = Path(sys.executable)  # the environment the tests run in (.venv, or a test-matrix venv)


def train_digits(run_dir: Path, arch: str, epochs: int, **extra) -> Path:
    """Train in-process on digits; returns the run folder (checkpoints/best.pt, summary.json inside)."""
    from convserve.training.config import build_config
    from convserve.training.trainer import run_training

    overrides = {"model": arch, "epochs": epochs, "output_dir": run_dir, "seed": 0, **extra}
    run_training(build_config({"run": {"print_freq": 1000}}, overrides))
    return run_dir


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """Factory: ``digits_run("mlp")`` trains once per session per (arch, epochs) and returns the run folder."""
    cache: dict[tuple[str, int], Path] = {}

    def make(arch: str = "mlp", epochs: int = 2) -> Path:
        key = (arch, epochs)
        if key not in cache:
            cache[key] = train_digits(tmp_path_factory.mktemp(f"run-{arch}") / "run", arch, epochs)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> dict[str, Path]:
    """Real scikit-image sample photos written as JPEG / PNG files."""
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    out = {}
    for name in ("chelsea", "astronaut", "coffee"):
        path = folder / f"{name}.jpg"
        Image.fromarray(getattr(data, name)()).save(path, quality=92)
        out[name] = path
    gray = folder / "camera.png"
    Image.fromarray(data.camera()).save(gray)
    out["camera"] = gray
    return out


@pytest.fixture(scope="session")
def digit_images(tmp_path_factory) -> list[tuple[Path, int]]:
    """A few real sklearn digits upsampled to 64 px PNGs, with their true labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    folder = tmp_path_factory.mktemp("digits")
    out = []
    for i in range(0, 50, 5):
        img = np.round(bunch.images[i] * 255 / 16).astype(np.uint8)
        path = folder / f"digit{i}_{bunch.target[i]}.png"
        Image.fromarray(img).resize((64, 64), Image.BILINEAR).save(path)
        out.append((path, int(bunch.target[i])))
    return out


def jpeg_bytes(array: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
