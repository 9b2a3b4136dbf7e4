"""The v2 server for real: KServe's ModelServer in its own process on a free loopback port, serving an artifact of a
trained digits MLP, called with Triton's own client (tritonclient.http, written by nobody here) and with raw HTTP
(httpx), with real photos and digits. Its answers are held against the Classifier in-process and against TorchServe
serving the same artifact.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
import tritonclient.http as triton
from PIL import Image
from tritonclient.utils import InferenceServerException

from convserve.hardware.procfs import group_members
from convserve.serving.archive_builder import build_archive
from convserve.serving.classifier import Classifier
from convserve.serving.http_headers import BATCH_HEADER
from convserve.serving.kserve_process import TEST_LOAD_DELAY_ENV, TOKEN_ENV, KServeProcess, V2ServerSettings
from convserve.serving.server_lifecycle import ServerStartError
from convserve.serving.torchserve_process import ServerSettings, TorchServeProcess
from convserve.serving.v2_protocol import (
    INPUT,
    LABELS,
    MAX_IMAGES,
    PROBABILITIES,
    answers,
    b64,
    binary_request,
    json_request,
)
from tests.serving_helpers import build_artifact, free_port

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
MODEL = "digits"
MAX_BODY = 2 * 1024 * 1024
TOKEN = "test-token-0123456789abcdef"


def encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def settings_for(artifact: Path, **extra) -> V2ServerSettings:
    return V2ServerSettings(artifact=artifact, model_name=MODEL, port=free_port(), max_body_bytes=MAX_BODY, **extra)


@pytest.fixture(scope="module")
def artifact(digits_run, tmp_path_factory) -> Path:
    return build_artifact(digits_run("mlp", 2), tmp_path_factory.mktemp("v2") / "artifact", formats=("onnx",))


@pytest.fixture(scope="module")
def server(artifact, tmp_path_factory):
    with KServeProcess(settings_for(artifact), tmp_path_factory.mktemp("v2-run")) as srv:
        srv.pid = srv.proc.pid
        srv.workers = sorted(child.pid for child in psutil.Process(srv.pid).children())
        yield srv


@pytest.fixture(scope="module")
def client(server):
    c = triton.InferenceServerClient(server.url.removeprefix("http://"))
    yield c
    c.close()


@pytest.fixture(scope="module")
def images(photos, digit_images) -> list[bytes]:
    return [p.read_bytes() for p in photos.values()] + [p.read_bytes() for p, _ in digit_images]


@pytest.fixture(scope="module")
def reference(artifact) -> Classifier:
    return Classifier.from_artifact(artifact, backend="onnx", device="cpu")


def triton_input(images: list[bytes], binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput(INPUT, [len(images)], "BYTES")
    values = images if binary else [b64(i).encode() for i in images]  # JSON strings cannot hold raw bytes
    tensor.set_data_from_numpy(np.array(values, dtype=object), binary_data=binary)
    return tensor


def triton_answers(result) -> list[dict[str, float]]:
    labels, probs = result.as_numpy(LABELS), result.as_numpy(PROBABILITIES)
    return [
        {
            (label.decode() if isinstance(label, bytes) else label): float(p)
            for label, p in zip(row_l, row_p, strict=True)
        }
        for row_l, row_p in zip(labels, probs, strict=True)
    ]


def assert_same(got: list[dict[str, float]], expected: list[dict[str, float]]) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert list(g) == list(e)
        assert np.allclose(list(g.values()), list(e.values()), atol=1e-6)


# --- what Triton's client sees ---------------------------------------------------------------------------------


def test_health_and_metadata_through_tritonclient(client, reference):
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    meta = client.get_model_metadata(MODEL)
    k = reference.k
    assert meta["name"] == MODEL and "platform" in meta
    assert meta["inputs"] == [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"] == [
        {"name": LABELS, "datatype": "BYTES", "shape": [-1, k]},
        {"name": PROBABILITIES, "datatype": "FP32", "shape": [-1, k]},
    ]
    assert client.get_server_metadata()["name"] == "kserve"


@pytest.mark.parametrize("binary", [True, False], ids=["binary-extension", "json-base64"])
def test_tritonclient_infer_answers_what_the_classifier_answers(client, reference, images, binary):
    outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in (LABELS, PROBABILITIES)]
    result = client.infer(MODEL, [triton_input(images, binary)], outputs=outputs)
    got = triton_answers(result)
    assert_same(got, reference.predict(images))
    k = reference.k
    assert result.as_numpy(PROBABILITIES).dtype == np.float32 and result.as_numpy(LABELS).shape == (len(images), k)
    for row in got:
        assert list(row.values()) == sorted(row.values(), reverse=True)


def test_raw_http_json_binary_and_v1_agree(server, images, reference):
    expected = reference.predict(images[:4])
    with httpx.Client(timeout=60) as http:
        as_json = http.post(server.infer_url, json=json_request(images[:4]))
        body, headers = binary_request(images[:4])
        as_binary = http.post(server.infer_url, content=body, headers=headers)
        v1 = http.post(server.v1_url, json={"instances": [{"b64": b64(i)} for i in images[:4]]})
    for resp in (as_json, as_binary, v1):
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"].startswith("application/json")
    assert_same(answers(as_json.json()), expected)
    assert_same(answers(as_binary.json()), expected)
    assert_same(v1.json()["predictions"], expected)


@pytest.fixture(scope="module")
def torchserve(artifact, tmp_path_factory):
    root = tmp_path_factory.mktemp("ts")
    build_archive(artifact, MODEL, root / "store", backend="onnx")
    settings = ServerSettings(
        model_store=root / "store",
        models={MODEL: f"{MODEL}.mar"},
        port=free_port(),
        management_port=free_port(),
        metrics_port=free_port(),
        run_dir=root / "run",
    )
    with TorchServeProcess(settings) as srv:
        yield srv


def test_top1_equals_torchserves_answer_for_the_same_artifact(server, torchserve, images):
    with httpx.Client(timeout=60) as http:
        v2 = answers(http.post(server.infer_url, json=json_request(images)).json())
        served = [http.post(torchserve.predictions_url(MODEL), content=data).json() for data in images]
    for ours, theirs in zip(v2, served, strict=True):
        assert next(iter(ours)) == next(iter(theirs))
        assert list(ours.values())[0] == pytest.approx(list(theirs.values())[0], abs=1e-5)


# --- bad input: the protocol's {"error"} with a 4xx naming the problem, never a 5xx -------------------------------


def _v2(data: list) -> dict:
    return {"json": {"inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [len(data)], "data": data}]}}


def _binary(images: list[bytes]) -> dict:
    body, headers = binary_request(images)
    return {"content": body, "headers": headers}


@pytest.fixture(scope="module")
def bad_inputs(photos) -> dict[str, tuple[dict, int, str]]:
    photo = photos["chelsea"].read_bytes()
    png = encode(Image.open(io.BytesIO(photo)), "PNG")
    broken_png = bytearray(png)
    broken_png[300:600] = bytes(300)
    bomb = encode(Image.new("L", (8000, 8000)), "PNG")  # 64 Mpx > the card's 40 Mpx, ~60 KB on the wire
    no_header = _binary([photo])
    no_header["headers"] = {"Content-Type": "application/octet-stream"}
    short = _binary([photo])
    short["content"] = short["content"][:-100]
    image = {"name": INPUT, "datatype": "BYTES", "shape": [1], "data": [b64(photo)]}
    return {
        "empty element": (_binary([b""]), 400, "empty"),
        "not an image": (_binary([b"\x00\x01binary junk" * 50]), 415, "supported"),
        "text, not an image": (_v2([b64(b"a cat")]), 415, "supported"),
        "truncated JPEG": (_binary([photo[: len(photo) // 2]]), 400, "truncated"),
        "corrupt PNG": (_binary([bytes(broken_png)]), 400, "PNG"),
        "decompression bomb": (_binary([bomb]), 413, "8000x8000"),
        "unsupported format": (_binary([encode(Image.open(io.BytesIO(photo)), "PPM")]), 415, "PPM"),
        "bad base64": (_v2(["***not base64***"]), 400, "base64"),
        "a number, not base64 text": (_v2([7]), 400, "not base64 text"),
        "wrong datatype": ({"json": {"inputs": [{**image, "datatype": "FP32", "data": [1.0]}]}}, 400, "datatype FP32"),
        "wrong shape": ({"json": {"inputs": [{**image, "shape": [1, 1]}]}}, 400, "shape [1, 1]"),
        "shape and data disagree": ({"json": {"inputs": [{**image, "shape": [3]}]}}, 400, "[3] but 1 elements"),
        "no image": ({"json": {"inputs": [{**image, "shape": [0], "data": []}]}}, 400, "holds no image"),
        "wrong input name": ({"json": {"inputs": [{**image, "name": "pixels"}]}}, 400, "'pixels'"),
        "two inputs": ({"json": {"inputs": [image, image]}}, 400, "expected one input"),
        "too many images": (_binary([photo[:10]] * (MAX_IMAGES + 1)), 413, "over the limit"),
        "body not JSON": ({"content": b"{nope", "headers": {"Content-Type": "application/json"}}, 400, "JSON"),
        "JSON without inputs": ({"json": {"data": [1]}}, 400, "inputs"),
        "empty body": ({"content": b"", "headers": {"Content-Type": "application/json"}}, 400, "empty body"),
        "raw image body": ({"content": photo, "headers": {"Content-Type": "image/jpeg"}}, 400, "not JSON"),
        "binary without its header": (no_header, 400, "Inference-Header-Content-Length header"),
        "binary shorter than it says": (short, 400, "binary_data_size"),
        "body over the size limit": (_binary([photo + bytes(MAX_BODY)]), 413, "over the limit"),
        "unknown output asked for": ({"json": {"inputs": [image], "outputs": [{"name": "logits"}]}}, 400, "logits"),
    }


@pytest.mark.parametrize(
    "kind",
    [
        "empty element",
        "not an image",
        "text, not an image",
        "truncated JPEG",
        "corrupt PNG",
        "decompression bomb",
        "unsupported format",
        "bad base64",
        "a number, not base64 text",
        "wrong datatype",
        "wrong shape",
        "shape and data disagree",
        "no image",
        "wrong input name",
        "two inputs",
        "too many images",
        "body not JSON",
        "JSON without inputs",
        "empty body",
        "raw image body",
        "binary without its header",
        "binary shorter than it says",
        "body over the size limit",
        "unknown output asked for",
    ],
)
def test_bad_input_gets_a_4xx_error_naming_it(server, bad_inputs, kind):
    kwargs, status, words = bad_inputs[kind]
    resp = httpx.post(server.infer_url, timeout=60, **kwargs)
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert words in resp.json()["error"]


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"instances": [{"b64": "***"}]}, 400, "instances[0]"),
        ({"instances": []}, 400, "at least one instance"),
        ({"instances": ["abc"]}, 400, "must be an object"),
        ({"instances": [{"b64": b64(b"\x00junk" * 20)}]}, 415, "instances[0]"),
    ],
)
def test_bad_v1_input_gets_a_4xx_error_naming_it(server, body, status, words):
    resp = httpx.post(server.v1_url, json=body, timeout=60)
    assert resp.status_code == status, resp.text
    assert words in resp.json()["error"]


def test_tritonclient_reports_the_error_the_server_names(client, photos):
    photo = photos["chelsea"].read_bytes()
    with pytest.raises(InferenceServerException) as raised:
        client.infer(MODEL, [triton_input([photo, photo[: len(photo) // 2], photo])])
    assert raised.value.status() == "400" and "images[1]" in raised.value.message()


def test_a_bad_request_among_concurrent_good_ones_fails_alone(server, images, reference):
    expected = reference.predict(images)
    bad = b"not an image at all" * 10
    bodies = [[data] for data in images[:6]] + [[images[0], bad]] + [[data] for data in images[6:]]
    with httpx.Client(timeout=60) as http, ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(lambda b: http.post(server.infer_url, json=json_request(b)), bodies))
    good = [r for body, r in zip(bodies, responses, strict=True) if len(body) == 1]
    assert [r.status_code for r in good] == [200] * len(images)
    assert_same([answers(r.json())[0] for r in good], expected)
    failed = responses[6]
    assert failed.status_code == 415 and failed.json()["error"].startswith("images[1]: ")


def test_metrics_count_the_inferences(server):
    text = httpx.get(f"{server.url}/metrics").text
    line = next(
        ln for ln in text.splitlines() if ln.startswith(f'request_predict_seconds_count{{model_name="{MODEL}"}}')
    )
    assert float(line.split()[-1]) >= 1


# --- TorchServe's inference API on the v2 server ------------------------------------------------------------------


def predictions_url(server) -> str:
    return f"{server.url}/predictions/{MODEL}"


def torchserve_bodies(data: bytes) -> dict[str, dict]:
    """The request forms TorchServe's handler takes, as httpx keyword arguments."""
    return {
        "raw POST": {"content": data, "headers": {"Content-Type": "image/jpeg"}},
        "multipart": {"files": {"data": ("photo.jpg", data, "image/jpeg")}},
        "JSON base64": {"json": {"image": b64(data)}},
    }


def test_predictions_takes_torchserves_bodies_and_answers_as_torchserve(server, torchserve, images, reference):
    with httpx.Client(timeout=60) as http:
        for data, expected in zip(images[:4], reference.predict(images[:4]), strict=True):
            theirs = http.post(torchserve.predictions_url(MODEL), content=data).json()
            for form, kwargs in torchserve_bodies(data).items():
                resp = http.post(predictions_url(server), **kwargs)
                assert resp.status_code == 200, (form, resp.text)
                ours = resp.json()
                assert list(ours) == list(expected) == list(theirs), form  # the same labels, most likely first
                assert list(ours.values()) == pytest.approx(list(theirs.values()), abs=1e-5), form
            put = http.put(predictions_url(server), content=data)  # curl -T
            assert put.status_code == 200 and list(put.json()) == list(expected)
        assert http.get(f"{server.url}/ping").json() == {"status": "Healthy"}


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"content": b"", "headers": {"Content-Type": "image/jpeg"}}, "empty"),
        ({"content": b"\x00\x01binary junk" * 50, "headers": {"Content-Type": "image/jpeg"}}, "supported"),
        ({"json": {"image": "***not base64***"}}, "base64"),
        ({"json": {"picture": "abc", "other": 1}}, "image"),
        ({"content": b"{nope", "headers": {"Content-Type": "application/json"}}, "JSON"),
    ],
)
def test_predictions_errors_are_torchserves(server, torchserve, kwargs, words):
    """The same status and the same {"error", "code"} body as TorchServe's handler gives the same request."""
    with httpx.Client(timeout=60) as http:
        ours = http.post(predictions_url(server), **kwargs)
        theirs = http.post(torchserve.predictions_url(MODEL), **kwargs)
    assert 400 <= ours.status_code < 500 and ours.status_code == theirs.status_code, (ours.text, theirs.text)
    assert ours.json() == theirs.json() and words in ours.json()["error"]


def test_predictions_of_a_model_not_served_is_404(server):
    resp = httpx.post(f"{server.url}/predictions/nope", content=b"x", timeout=60)
    assert resp.status_code == 404 and resp.json()["code"] == 404 and "'nope'" in resp.json()["error"]


def batch_counts(server) -> tuple[float, float]:
    """(backend calls, images through them) from the server's Prometheus page."""
    text = httpx.get(f"{server.url}/metrics", timeout=60).text
    value = {line.split("{")[0]: float(line.split()[-1]) for line in text.splitlines() if f'"{MODEL}"' in line}
    return value.get("convserve_batch_images_count", 0.0), value.get("convserve_batch_images_sum", 0.0)


def test_concurrent_requests_share_backend_calls_and_keep_their_own_answers(server, images, reference):
    """Good and bad requests at once on both routes: every good one gets its own answer, the batches hold
    several requests (the server's batch-size histogram says so), a bad one fails alone."""
    calls_before, images_before = batch_counts(server)
    good = images * 4
    bad = b"not an image at all" * 10
    expected = reference.predict(good)

    def send(item):
        kind, data = item
        with httpx.Client(timeout=60) as http:
            if kind == "v2":
                return http.post(server.infer_url, json=json_request([data]))
            return http.post(predictions_url(server), content=data, headers={"Content-Type": "image/png"})

    work = [("v2" if k % 2 else "ts", data) for k, data in enumerate(good)] + [("ts", bad), ("v2", bad)]
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(send, work))
    for (kind, _), resp, exp in zip(work, responses, expected, strict=False):
        assert resp.status_code == 200, resp.text
        got = answers(resp.json())[0] if kind == "v2" else resp.json()
        assert list(got) == list(exp)
        if kind == "ts":  # the size of the batch that computed it, as our TorchServe handler tells it
            assert 1 <= int(resp.headers[BATCH_HEADER]) <= 16
    assert [r.status_code for r in responses[len(good) :]] == [415, 415]
    calls, total = batch_counts(server)
    assert total - images_before == len(good)  # the bad ones never reached a batch
    assert calls - calls_before < len(good)  # some calls held several requests


def test_it_listens_on_loopback_only(server):
    listening = [c.laddr for c in psutil.Process(server.pid).connections("inet") if c.status == "LISTEN"]
    assert [(a.ip, a.port) for a in listening] == [("127.0.0.1", server.settings.port)]  # no 0.0.0.0, no gRPC


def test_the_server_survived_all_of_it(server, images, reference):
    """Last in the module: the same processes answer after every bad request above (no worker was replaced)."""
    assert server.proc.poll() is None and server.proc.pid == server.pid
    assert sorted(child.pid for child in psutil.Process(server.pid).children()) == server.workers
    resp = httpx.post(server.infer_url, json=json_request(images[:1]), timeout=60)
    assert_same(answers(resp.json()), reference.predict(images[:1]))


# --- lifecycle ---------------------------------------------------------------------------------------------------


def test_ready_is_false_while_the_model_loads_and_true_after(artifact, tmp_path, monkeypatch, photos):
    monkeypatch.setenv(TEST_LOAD_DELAY_ENV, "4")  # the server process sleeps this long before loading
    server = KServeProcess(settings_for(artifact), tmp_path / "run")
    server.launch()
    try:
        client = triton.InferenceServerClient(server.url.removeprefix("http://"))
        with httpx.Client(timeout=10) as http:
            while True:  # up (importing kserve takes seconds), the model still asleep
                try:
                    if http.get(f"{server.url}/v2/health/live").status_code == 200:
                        break
                except httpx.TransportError:
                    assert server.proc.poll() is None, server.console_text()
            not_ready = http.get(f"{server.url}/v2/health/ready")
            assert not_ready.status_code == 503 and "error" in not_ready.json()
            assert not client.is_server_ready() and not client.is_model_ready(MODEL)
            early = http.post(server.infer_url, json=json_request([photos["chelsea"].read_bytes()]))
            assert early.status_code == 503 and "not ready" in early.json()["error"]
            server.wait_ready()
            assert http.get(f"{server.url}/v2/health/ready").json() == {"ready": True}
        assert client.is_server_ready() and client.is_model_ready(MODEL)
    finally:
        server.stop()


def test_a_model_that_cannot_load_fails_the_start_with_its_reason(artifact, tmp_path):
    broken = tmp_path / "artifact"
    broken.mkdir()
    for path in artifact.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    card = json.loads((broken / "model_card.json").read_text())
    card["files"][0]["sha256"] = "0" * 64
    (broken / "model_card.json").write_text(json.dumps(card))
    server = KServeProcess(settings_for(broken), tmp_path / "run")
    with pytest.raises(ServerStartError, match="does not match the sha256"):
        server.start()
    assert server.proc is None and not (tmp_path / "run" / "server.json").exists()


def cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != TOKEN_ENV} | env
    cmd = [sys.executable, "serving/serve_v2.py", *args]
    return subprocess.run(cmd, cwd=REPO, env=environ, capture_output=True, text=True, timeout=120)


def test_cli_refuses_to_listen_beyond_loopback_without_a_token(artifact, tmp_path):
    result = cli(str(artifact), "--host", "0.0.0.0", "--port", str(free_port()), "--run-dir", str(tmp_path))
    assert result.returncode == 2 and "needs a bearer token" in result.stderr
    short = cli(str(artifact), "--host", "0.0.0.0", "--run-dir", str(tmp_path), **{TOKEN_ENV: "short"})
    assert short.returncode == 2 and "shorter than 16" in short.stderr
    port = str(free_port())
    clash = cli(str(artifact), "--port", port, "--grpc-port", port, "--run-dir", str(tmp_path))
    assert clash.returncode == 2 and f"gRPC port {port}" in clash.stderr
    for flag in ("--port", "--grpc-port"):
        wrong = cli(str(artifact), flag, "70000", "--run-dir", str(tmp_path))
        assert wrong.returncode == 2 and "less than or equal to 65535" in wrong.stderr, wrong.stderr
    assert not (tmp_path / "server.json").exists()


def test_cli_in_the_background_returns_when_ready_and_stops_with_stop(artifact, tmp_path, photos):
    port = free_port()
    run_dir = tmp_path / "run"
    grpc = ("--grpc-port", str(free_port()))
    started = cli(str(artifact), "--model-name", MODEL, "--port", str(port), *grpc, "--run-dir", str(run_dir))
    assert started.returncode == 0, started.stderr
    assert f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer" in started.stdout
    assert f"gRPC (Open Inference Protocol): 127.0.0.1:{grpc[1]}" in started.stdout
    pgid = json.loads((run_dir / "server.json").read_text())["pgid"]
    url = f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer"
    assert httpx.post(url, json=json_request([photos["camera"].read_bytes()]), timeout=60).status_code == 200
    again = cli(str(artifact), "--model-name", MODEL, "--port", str(free_port()), "--run-dir", str(run_dir))
    assert again.returncode == 2 and "still running" in again.stderr
    stopped = cli("--stop", "--run-dir", str(run_dir))
    assert stopped.returncode == 0 and stopped.stdout.startswith("stopped")
    assert not group_members(pgid)  # zombies aside: once the CLI exited, only init may reap the server


def test_cli_foreground_with_a_token_and_a_clean_stop_on_sigterm(artifact, tmp_path, photos):
    port = free_port()
    cmd = [sys.executable, "serving/serve_v2.py", str(artifact), "--model-name", MODEL, "--port", str(port)]
    cmd += ["--grpc-port", str(free_port())]
    cmd += ["--run-dir", str(tmp_path / "run"), "--foreground"]
    env = dict(os.environ, **{TOKEN_ENV: TOKEN})
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "serving in the foreground" in line:
                break
        assert "bearer token required" in "".join(lines), "".join(lines)
        base = f"http://127.0.0.1:{port}"
        body = json_request([photos["coffee"].read_bytes()])
        assert httpx.post(f"{base}/v2/models/{MODEL}/infer", json=body, timeout=60).status_code == 401
        assert httpx.get(f"{base}/metrics").status_code == 401
        assert httpx.get(f"{base}/v2/models/{MODEL}").status_code == 401
        assert httpx.get(f"{base}/v2/health/ready").json() == {"ready": True}  # probes need no token
        wrong = httpx.post(f"{base}/v2/models/{MODEL}/infer", json=body, headers={"Authorization": "Bearer x" * 3})
        assert wrong.status_code == 401 and "bearer token" in wrong.json()["error"]
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        auth = {"Authorization": f"Bearer {TOKEN}"}
        result = client.infer(MODEL, [triton_input([photos["coffee"].read_bytes()])], headers=auth)
        assert result.as_numpy(LABELS).shape[0] == 1
        pgid = json.loads((tmp_path / "run" / "server.json").read_text())["pgid"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
    assert not (tmp_path / "run" / "server.json").exists()
