"""Datasets: one registry, per-dataset facts in one place, transforms presets as classes."""

from convserve.training.data.facts import FACTS, DatasetFacts
from convserve.training.data.registry import DataBundle, build_datasets

__all__ = ["FACTS", "DataBundle", "DatasetFacts", "build_datasets"]
