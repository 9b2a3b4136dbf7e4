"""convserve: train, export and serve convolutional image classifiers.

Every room of the project is a subpackage: ``convserve.common``, ``convserve.hardware``, ``convserve.artifact``,
``convserve.models``, ``convserve.training``, ``convserve.export``, ``convserve.serving``, ``convserve.loadtest``,
``convserve.benchmarking``. Installed, they sit inside this folder; in a checkout they are the top-level folders
beside it (pyproject's ``package-dir`` maps them for an install).
"""

from pathlib import Path as _Path

_HERE = _Path(__file__).resolve().parent
if not (_HERE / "common").is_dir() and (_HERE.parent / "common" / "__init__.py").is_file():
    # A checkout put on PYTHONPATH without an install (the images, the GPU check on a bare machine): the rooms
    # are the folders beside this one.
    __path__.append(str(_HERE.parent))  # noqa: F821 (a package's __path__)
