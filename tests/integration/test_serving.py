"""The real TorchServe over HTTP: trained digits models exported, archived, served, called with real images.

The whole chain as a user runs it: checkpoint → export/to_onnx.py | to_torchscript.py → serving/archive.py's
build_archive → TorchServe. One server for the module (cold start takes many seconds) serves two models:
``digits`` (MLP, ONNX Runtime) and ``alexnet`` (AlexNet, TorchScript), both with dynamic batching
(batchSize 4, maxBatchDelay 200 ms).
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from convserve.serving.archive_builder import build_archive
from convserve.serving.archive_settings import ArchiveSettings
from convserve.serving.http_headers import BATCH_HEADER
from convserve.serving.server_lifecycle import ServerStartError, free_port
from convserve.serving.torchserve_process import ServerSettings, TorchServeProcess, render_config, worker_error
from tests.serving_helpers import EagerReference

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
BATCHING = ArchiveSettings(batch_size=4, max_batch_delay_ms=200)
MAX_REQUEST_MB = 2


def encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def settings_for(store: Path, run_dir: Path, models: dict[str, str]) -> ServerSettings:
    return ServerSettings(
        model_store=store,
        models=models,
        port=free_port(),
        management_port=free_port(),
        metrics_port=free_port(),
        run_dir=run_dir,
        max_request_mb=MAX_REQUEST_MB,
    )


@pytest.fixture(scope="module")
def runs(digits_run) -> dict[str, Path]:
    return {"digits": digits_run("mlp", 2), "alexnet": digits_run("alexnet", 1)}


def export(tool: str, run: Path, folder: Path) -> Path:
    """The exporter's CLI, as a user runs it (it also writes model.pt, the eager format)."""
    cmd = [sys.executable, f"export/{tool}.py", str(run / "checkpoints" / "best.pt"), "--output-dir", str(folder)]
    result = subprocess.run([*cmd, "--no-test-accuracy"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return folder


@pytest.fixture(scope="module")
def store(runs, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serving")
    store = root / "model_store"
    digits = export("to_onnx", runs["digits"], root / "artifact-digits")
    alexnet = export("to_torchscript", runs["alexnet"], root / "artifact-alexnet")
    build_archive(digits, "digits", store, backend="onnx", settings=BATCHING)
    build_archive(digits, "digits-eager", root / "not-served", backend="eager")
    build_archive(alexnet, "alexnet", store, backend="torchscript", settings=BATCHING)
    return store


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    settings = settings_for(
        store, tmp_path_factory.mktemp("ts-run"), {"digits": "digits.mar", "alexnet": "alexnet.mar"}
    )
    with TorchServeProcess(settings) as srv:
        srv.worker_pids = worker_pids(srv)
        yield srv
    assert srv.proc is None


@pytest.fixture(scope="module")
def client():
    with httpx.Client(timeout=60.0) as c:
        yield c


def worker_pids(srv: TorchServeProcess) -> dict[str, list[int]]:
    out = {}
    for name in srv.settings.models:
        models = httpx.get(f"{srv.management_url}/models/{name}").json()
        out[name] = [w["pid"] for m in models for w in m["workers"] if w["status"] == "READY"]
    return out


@pytest.fixture(scope="module")
def jpeg(photos) -> bytes:
    return photos["chelsea"].read_bytes()


def predict(client, server, data: bytes, model: str = "digits", content_type: str = "image/jpeg") -> httpx.Response:
    return client.post(server.predictions_url(model), content=data, headers={"Content-Type": content_type})


def assert_answer(resp: httpx.Response, num: int = 5) -> dict[str, float]:
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    answer = resp.json()
    probs = list(answer.values())
    assert len(answer) == num and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    assert set(answer) <= {str(d) for d in range(10)}
    return answer


# --- good input ------------------------------------------------------------------------------------------------


def test_every_input_form_gets_the_same_answer(server, client, jpeg):
    url = server.predictions_url("digits")
    b64 = base64.b64encode(jpeg).decode()
    responses = {
        "raw bytes": predict(client, server, jpeg),
        "octet-stream": predict(client, server, jpeg, content_type="application/octet-stream"),
        "PUT, no content type (curl -T)": client.put(url, content=jpeg),
        "multipart data": client.post(url, files={"data": ("cat.jpg", jpeg, "image/jpeg")}),
        "multipart file": client.post(url, files={"file": ("cat.jpg", jpeg, "image/jpeg")}),
        'JSON "image"': client.post(url, json={"image": b64}),
        'JSON "data"': client.post(url, json={"data": b64}),
        'JSON "b64", data URL': client.post(url, json={"b64": "data:image/jpeg;base64," + b64}),
        "form field": client.post(url, data={"image": b64}),
    }
    answers = {form: assert_answer(resp) for form, resp in responses.items()}
    first = answers["raw bytes"]
    for form, answer in answers.items():
        assert list(answer) == list(first), form
        assert np.allclose(list(answer.values()), list(first.values()), atol=1e-6), form


@pytest.mark.parametrize("model", ["digits", "alexnet"])
def test_top1_equals_the_eager_checkpoint(server, client, runs, photos, digit_images, model):
    reference = EagerReference(runs[model])
    images = [p.read_bytes() for p in photos.values()] + [p.read_bytes() for p, _ in digit_images]
    for data in images:
        answer = assert_answer(predict(client, server, data, model=model))
        served_top = next(iter(answer))
        label, margin = reference.top1(data)
        if margin >= 1e-5:  # a near-tie may order differently across backends; a real winner may not
            assert served_top == label
        assert answer[served_top] == pytest.approx(float(reference.probabilities(data).max()), abs=1e-4)


def test_a_bad_image_in_a_batch_gets_its_own_error(server, client, photos, digit_images):
    good = [p.read_bytes() for p in photos.values()] + [p.read_bytes() for p, _ in digit_images[:4]]
    singles = [assert_answer(predict(client, server, data)) for data in good]
    bad = [b"", b"not an image at all"]
    requests = good[:3] + [bad[0]] + good[3:6] + [bad[1]] + good[6:]
    for _ in range(3):  # batching depends on arrival times; a loaded machine may need another round
        with ThreadPoolExecutor(len(requests)) as pool:
            responses = list(pool.map(lambda d: predict(client, server, d), requests))
        if any(int(r.headers[BATCH_HEADER]) > 1 for r in responses if r.status_code != 200):
            break
    else:
        pytest.fail("TorchServe never batched a bad request with others in 3 rounds of concurrent requests")
    answers = iter(singles)
    for data, resp in zip(requests, responses, strict=True):
        if data in bad:
            assert resp.status_code in (400, 415) and resp.json()["code"] == resp.status_code
        else:
            expected = next(answers)
            answer = assert_answer(resp)
            assert list(answer) == list(expected)
            assert np.allclose(list(answer.values()), list(expected.values()), atol=1e-6)


# --- bad input: a 4xx JSON naming the problem, never a 5xx ------------------------------------------------------


@pytest.fixture(scope="module")
def bad_inputs(jpeg) -> dict[str, tuple[dict, int, str]]:
    photo = jpeg
    png = encode(Image.open(io.BytesIO(photo)), "PNG")
    broken_png = bytearray(png)
    broken_png[300:600] = bytes(300)
    bomb = encode(Image.new("L", (8000, 8000)), "PNG")  # 64 Mpx > the card's 40 Mpx, only ~60 KB on the wire
    return {
        "empty body": ({"content": b"", "headers": {"Content-Type": "image/jpeg"}}, 400, "empty"),
        "not an image": ({"content": b"\x00\x01binary junk" * 50}, 415, "supported"),
        "text body": ({"content": b"a cat", "headers": {"Content-Type": "text/plain"}}, 415, "text body"),
        "truncated JPEG": ({"content": photo[: len(photo) // 2]}, 400, "truncated"),
        "corrupt PNG": ({"content": bytes(broken_png)}, 400, "PNG"),
        "decompression bomb": ({"content": bomb}, 413, "8000x8000"),
        "bad base64": ({"json": {"image": "***not base64***"}}, 400, "base64"),
        "JSON without an image": ({"json": {"picture": "abc"}}, 400, '"image"'),
        "JSON not an object": ({"json": [1, 2]}, 400, "object"),
        "unsupported format": ({"content": encode(Image.open(io.BytesIO(photo)), "PPM")}, 415, "PPM"),
    }


@pytest.mark.parametrize(
    "kind",
    [
        "empty body",
        "not an image",
        "text body",
        "truncated JPEG",
        "corrupt PNG",
        "decompression bomb",
        "bad base64",
        "JSON without an image",
        "JSON not an object",
        "unsupported format",
    ],
)
def test_bad_input_gets_a_4xx_json_error(server, client, bad_inputs, kind):
    kwargs, status, words = bad_inputs[kind]
    kwargs = dict(kwargs)
    kwargs.setdefault("headers", {"Content-Type": "application/octet-stream"} if "content" in kwargs else {})
    resp = client.post(server.predictions_url("digits"), **kwargs)
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["code"] == status and words in body["error"]


def test_a_body_over_the_size_limit_is_413(server, client, jpeg):
    """TorchServe's HTTP layer refuses it before any worker sees it: 413 with an EMPTY body (not JSON)."""
    big = jpeg + bytes(MAX_REQUEST_MB * 1024 * 1024)
    resp = predict(client, server, big)
    assert resp.status_code == 413
    assert_answer(predict(client, server, jpeg))  # and the server carries on


def test_workers_survived_all_of_it(server):
    assert worker_pids(server) == server.worker_pids
    assert all(server.worker_pids.values())


# --- the rest of the surface ----------------------------------------------------------------------------------


def test_management_and_metrics(server, client):
    models = client.get(f"{server.management_url}/models/digits").json()[0]
    assert (models["batchSize"], models["maxBatchDelay"]) == (4, 200)
    register = client.post(f"{server.management_url}/models", params={"url": "digits.mar"})
    assert register.status_code == 405  # the model API is off
    metrics = client.get(f"{server.metrics_url}/metrics")
    assert metrics.status_code == 200 and "# TYPE" in metrics.text


def test_workers_follow_the_serving_machines_cpus_when_the_archive_names_none(store, tmp_path, monkeypatch):
    """An archive without minWorkers/maxWorkers: TorchServe starts as many workers as serve.py derives from the
    usable CPUs (here a 16-CPU machine, faked: 2 workers of 8 threads)."""
    import convserve.hardware.cpu_share as cpu_share

    monkeypatch.setattr(cpu_share, "usable_cpus", lambda: 16)
    with TorchServeProcess(settings_for(store, tmp_path / "run", {"digits": "digits.mar"})) as srv:
        described = httpx.get(f"{srv.management_url}/models/digits").json()[0]
        assert (described["minWorkers"], described["maxWorkers"]) == (2, 2)
        assert len([w for w in described["workers"] if w["status"] == "READY"]) == 2


def test_config_binds_management_to_loopback_and_turns_tokens_on_beyond_it(tmp_path):
    local = ServerSettings(model_store=tmp_path, host="127.0.0.1")
    public = ServerSettings(model_store=tmp_path, host="0.0.0.0")
    assert not local.token_auth and public.token_auth
    text = render_config(public, (7070, 7071))
    assert "inference_address=http://0.0.0.0:8080" in text
    assert "management_address=http://127.0.0.1:8081" in text
    assert "disable_token_authorization=false" in text
    assert "disable_token_authorization=true" in render_config(local, (7070, 7071))
    assert "enable_model_api=false" in text and "metrics_mode=prometheus" in text


WORKER_LOG = """\
15:22:03,691 [INFO ] W-9000-m-stdout MODEL_LOG - Backend worker process died.
15:22:03,692 [INFO ] W-9000-m-stdout MODEL_LOG - Traceback (most recent call last):
15:22:03,693 [INFO ] W-9000-m-stdout MODEL_LOG -   File "/tmp/cvts-x/models/f/handler.py", line 1
15:22:03,693 [INFO ] W-9000-m-stdout MODEL_LOG -     import no_such_module_xyz
15:22:03,693 [INFO ] W-9000-m-stdout MODEL_LOG - ModuleNotFoundError: No module named 'no_such_module_xyz'
15:22:03,693 [INFO ] W-9000-m-stdout MODEL_LOG -
15:22:03,693 [INFO ] W-9000-m-stdout MODEL_LOG - During handling of the above exception, another exception occurred:
15:22:03,694 [INFO ] W-9000-m-stdout MODEL_LOG - Traceback (most recent call last):
15:22:03,694 [INFO ] W-9000-m-stdout MODEL_LOG -   File "/ts/model_loader.py", line 159, in _load
15:22:03,695 [INFO ] W-9000-m-stdout MODEL_LOG - ModuleNotFoundError: No module named 'ts.torch_handler.handler'
"""


def test_worker_error_reports_the_first_exception_of_a_chain():
    """TorchServe retries a failed custom handler import as a stock one; the first error is the real one."""
    assert worker_error(WORKER_LOG).startswith("ModuleNotFoundError: No module named 'no_such_module_xyz'")
    assert worker_error(WORKER_LOG.replace("Backend worker process died.", "Backend worker started.")) is None


@pytest.mark.parametrize("archive", ["model_store/digits.mar", "not-served/digits-eager.mar"])
def test_archive_runs_without_this_repository(store, jpeg, tmp_path, archive):
    """The handler and its modules load from the archive alone (the editable install switched off)."""
    with zipfile.ZipFile(store.parent / archive) as mar:
        names = set(mar.namelist())
        mar.extractall(tmp_path / "model")
    # the handler's import tree reaches convserve.hardware.cpus (usable CPUs for the thread split): it ships too
    shipped = {"convserve/__init__.py", "convserve/serving/backends.py", "convserve/hardware/cpus.py"}
    assert {"handler.py", *shipped} <= names
    assert ("convserve/models/builders.py" in names) == ("eager" in archive)  # only eager rebuilds the model
    script = f"""
import sys
sys.meta_path = [f for f in sys.meta_path if "Editable" not in getattr(f, "__name__", "")]
sys.path.insert(0, {str(tmp_path / "model")!r})
import yaml
from ts.context import Context, RequestProcessor
from handler import ConvserveHandler
config = yaml.safe_load(open({str(tmp_path / "model" / "model-config.yaml")!r}))
ctx = Context("digits", {str(tmp_path / "model")!r}, {{"model": {{}}}}, 1, None, "0.12.0", model_yaml_config=config)
h = ConvserveHandler()
h.initialize(ctx)
ctx.request_processor = [RequestProcessor({{}})]
print(h.handle([{{"body": open({str(tmp_path / "cat.jpg")!r}, "rb").read()}}], ctx)[0])
ours = [m.__file__ for n, m in list(sys.modules.items()) if n.split(".")[0] == "convserve"]
assert ours and all(f.startswith({str(tmp_path / "model")!r}) for f in ours), ours
assert "convserve.hardware.cpus" in sys.modules
"""
    (tmp_path / "cat.jpg").write_bytes(jpeg)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().startswith("{")


def test_archive_refuses_to_overwrite(store, tmp_path):
    result = subprocess.run(
        [sys.executable, "serving/archive.py", str(tmp_path), "--model-name", "digits", "--export-path", str(store)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "exists; pass --force" in result.stderr


def test_a_worker_that_cannot_load_fails_the_start_with_its_error(store, tmp_path):
    """A model file that no longer matches its card: the worker dies in initialize; start() says why, fast."""
    with zipfile.ZipFile(store / "digits.mar") as mar:
        mar.extractall(tmp_path / "store" / "broken")
    card_path = tmp_path / "store" / "broken" / "artifact" / "model_card.json"
    card = json.loads(card_path.read_text())
    for entry in card["files"]:
        entry["sha256"] = "0" * 64
    card_path.write_text(json.dumps(card))
    server = TorchServeProcess(settings_for(tmp_path / "store", tmp_path / "run", {"broken": "broken"}))
    with pytest.raises(ServerStartError, match="does not match the sha256"):
        server.start()
    pgid = json.loads((tmp_path / "run" / "server.json").read_text())["pgid"]
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)  # launcher, java and workers all gone


def test_serve_cli_foreground_stops_cleanly_on_sigterm(store, tmp_path, jpeg):
    port = free_port()
    cmd = [sys.executable, "serving/serve.py", "--model-store", str(store), "--models", "digits=digits.mar"]
    cmd += ["--port", str(port), "--management-port", str(free_port()), "--metrics-port", str(free_port())]
    cmd += ["--run-dir", str(tmp_path / "run"), "--foreground"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "serving in the foreground" in line:
                break
        output = "".join(lines)
        assert "TorchServe ready in" in output, output
        assert f"http://127.0.0.1:{port}/predictions/digits" in output
        assert_answer(httpx.post(f"http://127.0.0.1:{port}/predictions/digits", content=jpeg, timeout=60))
        pgid = json.loads((tmp_path / "run" / "server.json").read_text())["pgid"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)  # launcher, java and workers all gone
    assert not (tmp_path / "run" / "server.json").exists()
    shutil.rmtree(tmp_path / "run", ignore_errors=True)
