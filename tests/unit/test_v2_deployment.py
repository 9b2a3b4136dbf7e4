"""The v2 server's deployments without a cluster or a Docker engine: k8s/kserve renders with kustomize, its
InferenceService validates (strictly) against KServe's own CRD schema (vendored from a named release), its pods are
as locked down as the Deployment's and probed on the protocol's health routes; the compose profile ``v2`` and
docker/pipeline.sh's serve step pick the server by CONVSERVE_SERVER."""

from __future__ import annotations

import copy
import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.serving_helpers import build_artifact, random_run
from tests.unit.test_k8s_manifests import kubectl, reachable_ports, security_problems

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "k8s" / "kserve" / "schema" / "inferenceservice-v1beta1.json.gz"
ISVC_POD_LABELS = {"serving.kserve.io/inferenceservice": "convserve-v2"}  # what KServe puts on predictor pods


def render(k8s: Path, path: str) -> list[dict]:
    result = subprocess.run([kubectl(), "kustomize", str(k8s / path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[dict]]:
    k8s = tmp_path_factory.mktemp("k8s") / "k8s"  # a copy: the Secret's token file is git-ignored
    shutil.copytree(ROOT / "k8s", k8s, ignore=shutil.ignore_patterns("token.txt"))
    (k8s / "base" / "token.txt").write_text("test-token-not-a-secret\n")
    return {path: render(k8s, path) for path in ("kserve", "overlays/cpu", "overlays/gpu")}


def names(docs: list[dict]) -> set[tuple[str, str]]:
    return {(d["kind"], d["metadata"]["name"]) for d in docs}


def isvc(docs: list[dict]) -> dict:
    (found,) = [d for d in docs if d["kind"] == "InferenceService"]
    return found


def strict(schema: dict) -> dict:
    """The schema with unknown object fields made errors (kubectl --validate=strict), except where Kubernetes
    keeps unknown fields on purpose."""
    schema = copy.deepcopy(schema)

    def visit(node):
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(schema)
    return schema


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(strict(json.loads(gzip.decompress(SCHEMA.read_bytes()))))


def problems(validator, doc: dict) -> list[str]:
    return [f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]


# --- k8s/kserve --------------------------------------------------------------------------------------------------


def test_kserve_adds_the_inference_service_and_its_network_policy_to_the_cpu_overlay(rendered):
    added = names(rendered["kserve"]) - names(rendered["overlays/cpu"])
    assert added == {
        ("InferenceService", "convserve-v2"),
        ("NetworkPolicy", "convserve-v2-inference-only"),
        ("Service", "convserve-v2-grpc"),
    }
    assert names(rendered["overlays/cpu"]) <= names(rendered["kserve"])
    for overlay in ("overlays/cpu", "overlays/gpu"):  # clusters without KServe's CRDs apply these as before
        assert not [d for d in rendered[overlay] if d["apiVersion"].startswith("serving.kserve.io/")]
    assert all(d["metadata"].get("namespace") == "convserve" for d in rendered["kserve"] if d["kind"] != "Namespace")


def test_the_inference_service_validates_against_kserves_crd_schema(rendered, validator):
    service = isvc(rendered["kserve"])
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    assert problems(validator, service) == []


def test_the_schema_check_catches_mistakes(rendered, validator):
    service = isvc(rendered["kserve"])
    typo = copy.deepcopy(service)
    typo["spec"]["predictor"]["containers"][0]["readinesProbe"] = typo["spec"]["predictor"]["containers"][0].pop(
        "readinessProbe"
    )
    assert any("readinesProbe" in p for p in problems(validator, typo))
    wrong_type = copy.deepcopy(service)
    wrong_type["spec"]["predictor"]["minReplicas"] = "one"
    assert any(p.startswith("spec.predictor.minReplicas") for p in problems(validator, wrong_type))
    no_spec = copy.deepcopy(service)
    no_spec["spec"]["predictr"] = no_spec["spec"].pop("predictor")
    assert problems(validator, no_spec)


def test_the_other_added_objects_validate_against_kubernetes(rendered):
    for doc in rendered["kserve"]:
        if not doc["apiVersion"].startswith("serving.kserve.io/"):
            kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_the_predictor_is_locked_down_and_sized_like_the_deployment(rendered):
    service = isvc(rendered["kserve"])
    as_workload = {
        "kind": "Deployment",
        "metadata": service["metadata"],
        "spec": {"template": {"spec": service["spec"]["predictor"]}},
    }
    assert security_problems([as_workload]) == []
    broken = copy.deepcopy(as_workload)
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False
    assert security_problems([broken])  # the borrowed check does look at the predictor
    mounts = {m["mountPath"] for m in service["spec"]["predictor"]["containers"][0]["volumeMounts"]}
    assert "/tmp" in mounts  # the run folder and temp files, with the root filesystem read-only


def test_the_predictor_runs_the_v2_server_with_the_shared_token_and_protocol_probes(rendered):
    docs = rendered["kserve"]
    service = isvc(docs)
    assert service["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    (container,) = service["spec"]["predictor"]["containers"]
    assert container["name"] == "kserve-container" and container["image"] == "convserve-serve:cpu"
    assert container["command"][-2:] == ["/app/docker/pipeline.sh", "serve"]
    env = {e["name"]: e for e in container["env"]}
    assert env["CONVSERVE_SERVER"]["value"] == "kserve" and env["CONVSERVE_SERVE_PORT"]["value"] == "8080"
    secret = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"].startswith("convserve-inference"))
    assert env["CONVSERVE_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": secret["metadata"]["name"], "key": "token"}
    assert [p["containerPort"] for p in container["ports"]] == [8080, 8081]
    assert env["CONVSERVE_GRPC_PORT"]["value"] == "8081"
    (grpc,) = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "convserve-v2-grpc"]
    assert grpc["spec"]["selector"] == {"serving.kserve.io/inferenceservice": "convserve-v2"}
    assert [(p["port"], p["targetPort"]) for p in grpc["spec"]["ports"]] == [(8081, 8081)]
    probes = {name: container[name]["httpGet"] for name in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"] == {"path": "/v2/health/ready", "port": 8080}
    assert probes["startupProbe"]["path"] == "/v2/health/ready" and probes["livenessProbe"]["path"] == "/v2/health/live"
    claim = next(v for v in service["spec"]["predictor"]["volumes"] if v["name"] == "data")
    assert claim["persistentVolumeClaim"]["claimName"] == "convserve-data"
    init = service["spec"]["predictor"]["initContainers"][0]
    assert init["image"] == "convserve-serve:cpu" and "model_card.json" in init["args"][0]


def test_only_the_v2_ports_of_the_predictor_pods_are_reachable(rendered):
    assert reachable_ports(rendered["kserve"], ISVC_POD_LABELS) == {8080, 8081}  # REST, gRPC


# --- compose and the pipeline's serve step ------------------------------------------------------------------------


def test_compose_profile_v2_serves_the_artifact_with_kserve():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    v2 = services["serve-v2"]
    assert v2["profiles"] == ["v2"] and v2["image"] == services["serve"]["image"]
    assert v2["command"] == ["sh", "/app/docker/pipeline.sh", "serve"]
    assert v2["environment"]["CONVSERVE_SERVER"] == "kserve"
    assert v2["environment"]["CONVSERVE_TOKEN"] == "${CONVSERVE_TOKEN:-}"  # none: the server refuses to start
    assert v2["read_only"] is True and v2["cap_drop"] == ["ALL"]
    assert v2["environment"]["CONVSERVE_SERVE_DIR"].startswith("/tmp/")  # writable: the tmpfs
    assert v2["ports"] == [
        "${CONVSERVE_BIND:-127.0.0.1}:${CONVSERVE_V2_PORT:-8090}:8080",
        "${CONVSERVE_BIND:-127.0.0.1}:${CONVSERVE_V2_GRPC_PORT:-8091}:8081",
    ]
    assert "convserve-data:/data:ro" in v2["volumes"]
    assert v2["depends_on"]["export"]["condition"] == "service_completed_successfully"
    assert "/v2/health/ready" in " ".join(v2["healthcheck"]["test"])
    assert "profiles" not in services["serve"]  # TorchServe stays the default server


def pipeline_serve(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "CONVSERVE_APP_DIR": str(ROOT),
        "CONVSERVE_SERVE_DIR": str(tmp_path / "run"),
        "CONVSERVE_ARTIFACT": str(tmp_path / "artifact"),
        "CONVSERVE_MODEL_STORE": str(tmp_path / "store"),
        **env,
    }
    cmd = ["sh", str(ROOT / "docker" / "pipeline.sh"), "serve"]
    return subprocess.run(cmd, env=environ, capture_output=True, text=True, timeout=120)


def test_pipeline_serve_picks_the_server_and_says_what_is_missing(tmp_path):
    unknown = pipeline_serve(tmp_path, CONVSERVE_SERVER="triton")
    assert unknown.returncode == 2 and "must be torchserve or kserve, not 'triton'" in unknown.stderr
    no_artifact = pipeline_serve(tmp_path, CONVSERVE_SERVER="kserve")
    assert no_artifact.returncode == 2 and "no artifact at" in no_artifact.stderr
    build_artifact(random_run(tmp_path / "run-dir"), tmp_path / "artifact", formats=("onnx",))
    # the container default listens on 0.0.0.0: without a token serve_v2.py refuses before opening any port
    no_token = pipeline_serve(tmp_path, CONVSERVE_SERVER="kserve")
    assert no_token.returncode == 2 and "needs a bearer token" in no_token.stderr
    torchserve = pipeline_serve(tmp_path)  # the default: TorchServe, which wants the archive
    assert torchserve.returncode == 2 and "alexnet.mar does not exist" in torchserve.stderr
