"""The Open Inference Protocol's gRPC service of the v2 server, through Triton's own gRPC client
(tritonclient.grpc), on a real ModelServer with a bearer token and two worker processes."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import numpy as np
import psutil
import pytest
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException

from convserve.serving.classifier import Classifier
from convserve.serving.kserve_process import KServeProcess, V2ServerSettings
from convserve.serving.v2_protocol import INPUT, LABELS, PROBABILITIES
from tests.integration.test_serve_v2 import assert_same, triton_answers
from tests.serving_helpers import build_artifact, free_port

pytestmark = pytest.mark.slow
MODEL = "digits"
TOKEN = "grpc-test-token-0123456789"
AUTH = {"authorization": f"Bearer {TOKEN}"}
MAX_BODY = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def artifact(digits_run, tmp_path_factory) -> Path:
    return build_artifact(digits_run("mlp", 2), tmp_path_factory.mktemp("v2-grpc") / "artifact", formats=("onnx",))


@pytest.fixture(scope="module")
def server(artifact, tmp_path_factory):
    settings = V2ServerSettings(
        artifact=artifact, model_name=MODEL, port=free_port(), grpc_port=free_port(), workers=2, max_body_bytes=MAX_BODY
    )
    with KServeProcess(settings, tmp_path_factory.mktemp("v2-grpc-run"), token=TOKEN) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with triton_grpc.InferenceServerClient(server.grpc_target) as c:
        yield c


@pytest.fixture(scope="module")
def images(photos, digit_images) -> list[bytes]:
    return [
        photos["chelsea"].read_bytes(),
        photos["coffee"].read_bytes(),
        *(p.read_bytes() for p, _ in digit_images[:2]),
    ]


def grpc_input(images: list[bytes]) -> triton_grpc.InferInput:
    tensor = triton_grpc.InferInput(INPUT, [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=object))
    return tensor


def refused(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as raised:
        call()
    return raised.value


def test_health_needs_no_token_and_metadata_does(client, server):
    assert client.is_server_live() and client.is_server_ready()
    assert "UNAUTHENTICATED" in refused(lambda: client.is_model_ready(MODEL)).status()
    assert client.is_model_ready(MODEL, headers=AUTH)
    meta = client.get_model_metadata(MODEL, headers=AUTH, as_json=True)
    assert meta["inputs"] == [{"name": INPUT, "datatype": "BYTES", "shape": ["-1"]}]
    assert [o["name"] for o in meta["outputs"]] == [LABELS, PROBABILITIES]


def test_infer_with_a_bytes_tensor_answers_what_http_and_the_classifier_answer(client, artifact, images):
    reference = Classifier.from_artifact(artifact, backend="onnx", device="cpu")
    result = client.infer(MODEL, [grpc_input(images)], headers=AUTH)
    assert result.as_numpy(PROBABILITIES).dtype == np.float32
    assert_same(triton_answers(result), reference.predict(images))


def test_a_bad_image_is_invalid_argument_naming_it(client, images):
    error = refused(lambda: client.infer(MODEL, [grpc_input([images[0], b"not an image", images[1]])], headers=AUTH))
    assert "INVALID_ARGUMENT" in error.status() and "images[1]" in error.message()


def test_a_wrong_tensor_is_invalid_argument_naming_it(client):
    tensor = triton_grpc.InferInput("pixels", [1, 3], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
    error = refused(lambda: client.infer(MODEL, [tensor], headers=AUTH))
    assert "INVALID_ARGUMENT" in error.status() and "'pixels'" in error.message()


def test_without_or_with_a_wrong_token_infer_is_unauthenticated(client, images):
    for headers in (None, {"authorization": "Bearer " + "x" * 30}):
        error = refused(lambda h=headers: client.infer(MODEL, [grpc_input(images[:1])], headers=h))
        assert "UNAUTHENTICATED" in error.status() and "bearer token" in error.message()


def test_the_repository_api_is_off(client):
    # (kserve's own protobuf stubs cannot live in one process beside tritonclient's: both define "inference.*")
    for call in (client.unload_model, client.load_model):
        error = refused(lambda c=call: c(MODEL, headers=AUTH))
        assert "UNIMPLEMENTED" in error.status() and "repository API is off" in error.message()
    assert client.is_model_ready(MODEL, headers=AUTH)


def test_a_message_over_the_body_limit_is_refused(client):
    error = refused(lambda: client.infer(MODEL, [grpc_input([b"\0" * (MAX_BODY + 1)])], headers=AUTH))
    assert "RESOURCE_EXHAUSTED" in error.status()


def ipv4(address: str) -> str:
    ip = ipaddress.ip_address(address)
    return str(getattr(ip, "ipv4_mapped", None) or ip)


def test_every_worker_listens_on_both_ports_on_loopback_only(server):
    workers = psutil.Process(server.proc.pid).children()
    assert len(workers) == 2
    for worker in workers:
        # gRPC binds 127.0.0.1 through an IPv6 socket: ::ffff:127.0.0.1 is the same loopback address
        listening = {(ipv4(c.laddr.ip), c.laddr.port) for c in worker.connections("inet") if c.status == "LISTEN"}
        assert listening == {("127.0.0.1", server.settings.port), ("127.0.0.1", server.settings.grpc_port)}
