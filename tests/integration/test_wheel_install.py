"""The wheel installed for real (not editable) in a fresh virtualenv, used from a folder outside the checkout:
train 1 epoch on digits -> export ONNX -> archive -> TorchServe and the v2 server -> a top-5 answer from each."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.serving_helpers import free_port
from tests.wheel_helpers import REPO, build_wheel, fresh_venv_with

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def venv_bin(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    return fresh_venv_with(build_wheel(root), root / "venv")


def convserve(venv_bin: Path, cwd: Path, *args: str, timeout: float = 600) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv_bin}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(
        [str(venv_bin / "convserve"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"convserve {' '.join(args)}: {proc.stderr[-3000:]}"
    return proc.stdout


def test_the_installed_package_is_the_wheel_not_the_checkout(venv_bin, tmp_path):
    code = "import convserve.serving.torchserve_process as m, convserve; print(m.__file__); print(convserve.__path__)"
    out = subprocess.run([venv_bin / "python", "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    module, path = out.stdout.splitlines()
    assert module.startswith(str(venv_bin.parent)) and str(REPO) not in path


def test_train_export_serve_and_predict_from_outside_the_checkout(venv_bin, tmp_path, digit_images):
    work = tmp_path / "work"
    work.mkdir()
    convserve(venv_bin, work, "train", "--config", "demo", "--epochs", "1", "--output-dir", "run")
    convserve(venv_bin, work, "export", "onnx", "run/checkpoints/best.pt", "--output-dir", "artifact")
    convserve(venv_bin, work, "archive", "artifact", "--model-name", "alexnet", "--export-path", "store")
    image = digit_images[0][0]  # one epoch: the answer's shape is checked, not its accuracy

    port = free_port()
    ports = ["--port", str(port), "--management-port", str(free_port()), "--metrics-port", str(free_port())]
    convserve(venv_bin, work, "serve", "--model-store", "store", "--models", "alexnet=alexnet.mar", *ports,
              "--run-dir", "ts")  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/predictions/alexnet"
        answer = json.loads(convserve(venv_bin, work, "predict", "--url", url, str(image), "--json"))
    finally:
        convserve(venv_bin, work, "serve", "--stop", "--run-dir", "ts")
    top5 = answer[0]["top"]
    assert len(top5) == 5 and top5[0]["probability"] >= top5[-1]["probability"], answer

    v2_port = free_port()
    convserve(venv_bin, work, "serve-v2", "artifact", "--model-name", "alexnet", "--port", str(v2_port),
              "--grpc-port", str(free_port()), "--run-dir", "v2")  # fmt: skip
    try:
        body = {"instances": [{"b64": base64.b64encode(image.read_bytes()).decode()}]}
        resp = httpx.post(f"http://127.0.0.1:{v2_port}/v1/models/alexnet:predict", json=body, timeout=60)
    finally:
        convserve(venv_bin, work, "serve-v2", "--stop", "--run-dir", "v2")
    assert resp.status_code == 200, resp.text
    (prediction,) = resp.json()["predictions"]
    assert len(prediction) == 5 and list(prediction.values()) == sorted(prediction.values(), reverse=True)
