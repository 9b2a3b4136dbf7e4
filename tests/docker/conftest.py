"""Docker-marked tests build images and start containers (tens of minutes, a Docker engine, root for the setup):
they are collected only by ``make test-docker`` (CONVSERVE_DOCKER_TESTS=1), never by a plain ``pytest``."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("CONVSERVE_DOCKER_TESTS") == "1":
        return
    deselected = [item for item in items if item.get_closest_marker("docker")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker("docker")]
