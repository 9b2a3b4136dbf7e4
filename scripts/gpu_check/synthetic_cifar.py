"""A CIFAR-10-shaped set with synthetic pixels, written in the real CIFAR-10 "python version" format so that
training/data's own loader reads it (pickled dicts: a uint8 N x 3072 ``data`` array, 1024 red, 1024 green,
1024 blue values a row, and a ``labels`` list; ``batches.meta`` names the classes)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from convserve.common.files import write_bytes_atomic

CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
BATCHES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")


def write_synthetic_cifar10(root: Path, per_batch: int, seed: int = 0) -> Path:
    """``root/cifar-10-batches-py/`` with ``per_batch`` random images in each of the six batch files."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for name in BATCHES:
        entry = {
            "batch_label": f"synthetic {name}",
            "labels": [int(y) for y in rng.integers(0, 10, per_batch)],
            "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            "filenames": [f"synthetic_{name}_{k:05d}.png" for k in range(per_batch)],
        }
        write_bytes_atomic(folder / name, pickle.dumps(entry, protocol=2), durable=False)
    meta = {"num_cases_per_batch": per_batch, "label_names": CLASS_NAMES, "num_vis": 3072}
    write_bytes_atomic(folder / "batches.meta", pickle.dumps(meta, protocol=2), durable=False)
    return folder
