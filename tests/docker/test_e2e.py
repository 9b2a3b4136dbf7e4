"""The whole pipeline in real containers through docker/e2e.sh: images build, `compose up trainer` trains,
`compose up serve` serves, a digit gets a top-5 answer with the token (refused without), a bounded load test runs,
and the script leaves none of its containers, networks or volumes behind."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def project_leftovers() -> str:
    out = []
    for kind in ("container", "volume", "network"):
        cmd = ["docker", kind, "ls", "-q", "--filter", "label=com.docker.compose.project=convserve-e2e"]
        if kind == "container":
            cmd.insert(3, "-a")
        out.append(subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout.strip())
    return "".join(out)


def test_pipeline_in_containers(tmp_path):
    work = tmp_path / "e2e"
    result = subprocess.run(
        ["bash", "docker/e2e.sh"],
        cwd=ROOT,
        env={**os.environ, "CONVSERVE_E2E_WORK": str(work)},
        capture_output=True,
        text=True,
        timeout=3600,
    )
    print(result.stdout[-6000:], result.stderr[-3000:])
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout
    accuracy = re.search(r"trainer: final test top-1 ([\d.]+)%", log)
    # A few epochs on a shared CPU: well above chance (10 %) is what a working pipeline shows, not a good model.
    assert accuracy and float(accuracy.group(1)) > 15.0, "the trainer reported no (or a chance-level) accuracy"
    top5 = json.loads((work / "top5.json").read_text())
    assert isinstance(top5, dict) and len(top5) == 5, top5  # {class name: probability}, most likely first
    assert set(top5) <= {str(d) for d in range(10)}, "the served classes are not the digits the model learnt"
    assert 0 < sum(top5.values()) <= 1.0001 and list(top5.values()) == sorted(top5.values(), reverse=True)
    assert "without the token: refused (HTTP 4" in log
    assert "management API not reachable from the host" in log
    assert project_leftovers() == "", "e2e.sh left containers, volumes or networks of its compose project"
