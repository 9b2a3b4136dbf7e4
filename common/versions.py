"""Versions of the libraries a result depends on, read from the installed distributions (nothing imported)."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

LIBRARIES = ("torch", "torchvision", "onnxruntime-gpu", "onnxruntime", "onnx", "torchserve", "aiohttp", "numpy")


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str]:
    """{distribution: version} for those installed, plus the Python version."""
    out = {"python": platform.python_version()}
    for dist in names:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return out
