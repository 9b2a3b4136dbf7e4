"""The exporters as users run them: real checkpoints trained on digits, real CLIs in subprocesses, real ONNX
Runtime and torch.jit, real files checked byte for byte against the card."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path
from urllib.error import URLError

import onnx
import pytest
import torch
import torchvision

from convserve.artifact.card import FILE_NAMES, read_card, read_index_to_name, unique_labels, write_card
from convserve.common.errors import ConvserveError
from convserve.common.files import sha256_file
from convserve.export.check_images import image_file_tensor
from convserve.export.pipeline import ExportRequest, run_export
from convserve.export.sources import checkpoint_source, random_weights_note, torchvision_source, weights_sha256
from convserve.models import model_from_checkpoint
from convserve.models.checkpoint import load_checkpoint
from tests.conftest import PYTHON, REPO

pytestmark = pytest.mark.slow

ARCH_EPOCHS = {"mlp": 2, "alexnet": 1, "resnet18": 1}  # the same runs other test modules train


def cli(script: str, *args, cwd: Path = REPO, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(PYTHON), str(REPO / "export" / script), *map(str, args)],
        cwd=cwd, capture_output=True, text=True, timeout=900, env={**os.environ, **(env or {})},
    )  # fmt: skip


def offline_env(torch_home: Path) -> dict[str, str]:
    """A CLI's environment as on a machine without internet and without cached weights, whether or not this one
    has either: an empty $TORCH_HOME, and a proxy on a closed local port, so urllib's download fails at once."""
    proxy = "http://127.0.0.1:9"
    return {"TORCH_HOME": str(torch_home), "http_proxy": proxy, "https_proxy": proxy, "no_proxy": ""}


def offline(monkeypatch, torch_home: Path) -> list[str]:
    """This process as offline_env's: every weight download fails with urllib's URLError; returns the URLs asked."""
    asked: list[str] = []

    def no_network(url: str, dst: str, *args, **kwargs) -> None:
        asked.append(url)
        raise URLError(ConnectionRefusedError(111, "Connection refused"))

    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return asked


def cached_weights(torch_home: Path) -> list[Path]:
    return sorted((torch_home / "hub" / "checkpoints").glob("*")) if torch_home.exists() else []


def one_line_error(result: subprocess.CompletedProcess, fragment: str, code: int = 2) -> None:
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()} if folder.exists() else {}


@pytest.fixture(scope="session")
def exported(digits_run, photos, digit_images, tmp_path_factory):
    """Factory: ``exported("alexnet")`` runs to_onnx then to_torchscript into ONE folder, once per session."""
    cache: dict[str, tuple[Path, Path, str]] = {}

    def make(arch: str) -> tuple[Path, Path, str]:
        if arch not in cache:
            ckpt = digits_run(arch, ARCH_EPOCHS[arch]) / "checkpoints" / "best.pt"
            folder = tmp_path_factory.mktemp(f"artifact-{arch}") / arch
            extra = ["--quantize", "int8", "--fp16"] if arch == "mlp" else []  # cheap on the MLP
            check = [photos["chelsea"], digit_images[0][0]]
            onnx_run = cli("to_onnx.py", ckpt, "--output-dir", folder, "--check-images", *check, *extra)
            assert onnx_run.returncode == 0, onnx_run.stderr
            ts_run = cli("to_torchscript.py", ckpt, "--output-dir", folder, "--check-images", *check)
            assert ts_run.returncode == 0, ts_run.stderr
            cache[arch] = (folder, ckpt, onnx_run.stdout + ts_run.stdout)
        return cache[arch]

    return make


@pytest.mark.parametrize("arch", ["mlp", "resnet18", "alexnet"])
def test_both_exports_land_in_one_verified_artifact(exported, arch):
    folder, ckpt_path, stdout = exported(arch)
    ckpt = load_checkpoint(ckpt_path)
    card = read_card(folder)  # validates against the pydantic ModelCard
    assert {"onnx", "torchscript", "eager"} <= {f.format for f in card.files}
    for entry in card.files:
        path = folder / entry.path
        assert entry.path == FILE_NAMES[entry.format]
        assert entry.sha256 == sha256_file(path) and entry.size_bytes == path.stat().st_size
    onnx.checker.check_model(str(folder / "model.onnx"), full_check=True)
    for fmt in ("onnx", "torchscript"):
        parity = card.file(fmt).parity
        assert parity.passed and parity.top1_agreement == 1.0 and parity.max_abs_prob_diff <= 1e-4
        assert parity.batch_sizes == [1, 16]
        assert parity.sources == {"digits test split": 64, "--check-images": 2, "scikit-image sample photos": 6}
        assert f"parity {fmt}: PASS" in stdout
    assert card.file("onnx").dynamic_batch and card.file("onnx").opset >= 18
    # the facts come from the checkpoint, the file names from the source
    assert card.arch == ckpt.arch and card.class_names == unique_labels(ckpt.class_names)
    assert read_index_to_name(folder) == card.class_names
    pre = card.preprocessing
    assert (pre.input_size, pre.resize_size, pre.channels) == (
        ckpt.preprocessing.input_size,
        ckpt.preprocessing.resize_size,
        ckpt.preprocessing.channels,
    )
    assert pre.mean == ckpt.preprocessing.mean and pre.std == ckpt.preprocessing.std
    assert card.source.checkpoint_sha256 == sha256_file(ckpt_path) and card.source.dataset == "digits"
    assert {"torch", "torchvision", "onnx", "onnxruntime"} <= set(card.versions)
    # the eager copy is our checkpoint without train_state, and every file scores what training measured
    eager = load_checkpoint(folder / "model.pt", expected_arch=arch, with_train_state=True)
    assert eager.train_state is None
    assert all(torch.equal(eager.model_state[k], v) for k, v in ckpt.model_state.items())
    summary = json.loads((ckpt_path.parents[1] / "summary.json").read_text())
    assert card.file("eager").test_acc1 == pytest.approx(summary["test_acc1"], abs=1e-9)
    one_image = 100 / summary["test_count"]
    for fmt in ("onnx", "torchscript"):
        assert abs(card.file(fmt).test_acc1 - summary["test_acc1"]) <= one_image


FRESH_PROCESS = textwrap.dedent(
    """
    # knows only the artifact folder: no convserve imports, every fact from model_card.json
    import hashlib, json, sys
    import numpy as np, onnxruntime as ort, torch
    from PIL import Image
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    folder, photo = sys.argv[1], sys.argv[2]
    card = json.load(open(f"{folder}/model_card.json"))
    pre = card["preprocessing"]
    entry = next(f for f in card["files"] if f["format"] == "onnx")
    data = open(f"{folder}/{entry['path']}", "rb").read()
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    img = Image.open(photo).convert("L" if pre["channels"] == 1 else "RGB")
    x = torch.from_numpy(np.array(img))
    x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)
    x = F.resize(x, [pre["resize_size"]], interpolation=InterpolationMode(pre["interpolation"]), antialias=True)
    x = F.center_crop(x, [pre["input_size"], pre["input_size"]]).expand(3, -1, -1)
    x = F.normalize(F.to_dtype(x, torch.float32, scale=True), pre["mean"], pre["std"])
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: x[None].numpy()})[0][0]
    probs = torch.from_numpy(logits).softmax(0)
    labels = json.load(open(f"{folder}/index_to_name.json"))
    top = probs.topk(5)
    print(json.dumps({"labels": [labels[str(i)] for i in top.indices.tolist()], "probs": top.values.tolist()}))
    """
)


@pytest.mark.parametrize("arch", ["mlp", "resnet18", "alexnet"])
def test_a_fresh_process_with_only_the_folder_reproduces_the_eager_top5(exported, photos, tmp_path, arch):
    folder, ckpt_path, _ = exported(arch)
    script = tmp_path / "classify.py"
    script.write_text(FRESH_PROCESS)
    result = subprocess.run(
        [sys.executable, "-I", str(script), str(folder), str(photos["astronaut"])],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    ckpt = load_checkpoint(ckpt_path)
    with torch.inference_mode():
        probs = model_from_checkpoint(ckpt)(image_file_tensor(photos["astronaut"], ckpt.preprocessing)[None])
    top = probs.softmax(1)[0].topk(5)
    assert answer["labels"] == [ckpt.class_names[i] for i in top.indices.tolist()]
    assert answer["probs"] == pytest.approx(top.values.tolist(), abs=1e-4)


def test_quantized_and_half_precision_files_report_their_accuracy(exported):
    folder, _, stdout = exported("mlp")
    card = read_card(folder)
    fp32, int8, fp16 = card.file("onnx"), card.file("onnx-int8"), card.file("onnx-fp16")
    assert int8.size_bytes < fp32.size_bytes / 3 and fp16.size_bytes < fp32.size_bytes * 0.6
    for entry in (int8, fp16):
        assert entry.parity.passed and entry.test_acc1 is not None and entry.notes
        assert abs(entry.test_acc1 - fp32.test_acc1) <= 5.0  # percentage points on 270 test images
    assert fp16.parity.max_abs_prob_diff <= 1e-2 and "CPU" in fp16.notes[0]
    assert "training images" in int8.notes[0]
    onnx.checker.check_model(str(folder / "model.int8.onnx"))
    assert "parity onnx-int8: PASS" in stdout and "parity onnx-fp16: PASS" in stdout


@pytest.mark.parametrize(
    ("script", "arch", "file"),
    [("to_onnx.py", "alexnet", "alexnet-owt-7be5be79.pth"), ("to_torchscript.py", "resnet18", "resnet18-f37072fd.pth")],
)
def test_torchvision_without_its_weights_is_one_line_naming_the_fix(tmp_path, script, arch, file):
    home, folder = tmp_path / "torch", tmp_path / "tv"
    result = cli(script, "--torchvision", arch, "--output-dir", folder, env=offline_env(home))
    one_line_error(result, f"cannot load torchvision's ImageNet weights for {arch}")
    line = result.stderr.strip()
    assert "Connection refused" in line  # the cause: the download really ran, and failed
    assert f"place {file} in {home / 'hub' / 'checkpoints'}" in line and "pass --random-weights" in line
    assert not folder.exists() and cached_weights(home) == []  # nothing written, no half file left


def test_torchvision_random_weights_are_exported_and_said_first(photos, tmp_path):
    home = tmp_path / "torch"
    args = ["--torchvision", "resnet18", "--random-weights", "--check-images", photos["coffee"]]
    result = cli("to_onnx.py", *args, cwd=tmp_path, env=offline_env(home))
    assert result.returncode == 0, result.stderr
    assert cached_weights(home) == []  # --random-weights downloads nothing
    folder = tmp_path / "artifacts" / "resnet18-imagenet-random"  # the default name says it too
    card = read_card(folder)
    assert card.source.random_weights and card.source.metrics == {}  # torchvision's accuracy is not this model's
    first = card.notes[0]
    assert first.startswith("RANDOM WEIGHTS (--random-weights): seeded random, not trained") and "resnet18" in first
    assert [n for n in card.notes if "RANDOM WEIGHTS" in n] == [first]
    assert "warning: RANDOM WEIGHTS" in result.stderr
    categories = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    assert card.num_classes == 1000 == len(set(card.class_names)) and card.class_names == unique_labels(categories)
    assert read_index_to_name(folder) == card.class_names and card.class_names[134] == "crane bird"
    pre = card.preprocessing
    assert (pre.resize_size, pre.input_size, pre.channels) == (256, 224, 3)
    assert pre.mean == pytest.approx([0.485, 0.456, 0.406]) and pre.std == pytest.approx([0.229, 0.224, 0.225])
    parity = card.file("onnx").parity
    assert parity.passed and parity.sources == {"--check-images": 1, "scikit-image sample photos": 6}
    assert card.source.torchvision_weights == "resnet18:IMAGENET1K_V1" and card.source.weights_sha256
    assert card.file("eager") is not None and card.file("onnx").test_acc1 is None  # no dataset to score on


def test_torchvision_weights_placed_by_hand_are_exported_as_trained(monkeypatch, tmp_path):
    """The fix the offline error names: the file in $TORCH_HOME/hub/checkpoints is loaded, and nothing is random."""
    asked = offline(monkeypatch, tmp_path)
    torch.manual_seed(1)
    state = torchvision.models.resnet18().state_dict()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    source = torchvision_source("resnet18")
    assert asked == [] and not source.card.random_weights and source.name == "resnet18-imagenet"
    assert source.card.weights_sha256 == weights_sha256(state)
    assert source.card.metrics["imagenet_acc1"] == pytest.approx(69.758)  # torchvision's figure for these weights
    # without the file, the same call is the one-line error, and --random-weights the way past it
    (tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth").unlink()
    with pytest.raises(ConvserveError, match="pass --random-weights"):
        torchvision_source("resnet18")
    assert asked == [torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url]
    random = torchvision_source("resnet18", random_weights=True)
    assert random.card.random_weights and random.card.weights_sha256 != weights_sha256(state)
    assert random.card.weights_sha256 == torchvision_source("resnet18", random_weights=True).card.weights_sha256


def test_the_random_weights_note_leads_the_card_and_leaves_with_those_weights(digits_run, tmp_path):
    """The pipeline's part, on a cheap model: an untrained source's note goes first; an earlier export's
    random-weights note (in any wording) does not outlive the weights it described; other notes stay."""
    source = checkpoint_source(digits_run("mlp", 2) / "checkpoints" / "best.pt")
    folder = tmp_path / "artifact"
    request = ExportRequest(formats=["torchscript"], output_dir=folder, dataset_images=8, test_accuracy=False)
    run_export(source, request)
    stale = "RANDOM WEIGHTS: torchvision's mlp:X weights could not be loaded; this model's predictions are meaningless"
    write_card(folder, read_card(folder).model_copy(update={"notes": ["a note of its own", stale]}))
    untrained = replace(
        source, card=source.card.model_copy(update={"random_weights": True, "torchvision_weights": "mlp:X"})
    )
    run_export(untrained, replace(request, force=True))
    assert read_card(folder).notes == [random_weights_note(untrained.card), "a note of its own"]
    run_export(source, replace(request, force=True))
    assert read_card(folder).notes == ["a note of its own"]


# ---------------------------------------------------------------- bad input: exit 2, one line, nothing touched


def test_a_file_that_is_not_a_checkpoint_is_refused(photos, tmp_path):
    folder = tmp_path / "out"
    one_line_error(cli("to_onnx.py", photos["chelsea"], "--output-dir", folder), "is not a PyTorch checkpoint")
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    one_line_error(cli("to_torchscript.py", text, "--output-dir", folder), "is not a PyTorch checkpoint")
    one_line_error(cli("to_onnx.py", tmp_path / "missing.pt", "--output-dir", folder), "does not exist")
    assert not folder.exists()


class Payload:
    """Unpickling this would create a marker file: proof that the loader never unpickles."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickled_object_checkpoint_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "unpickled"
    bad = tmp_path / "evil.pt"
    torch.save({"format": "convserve.checkpoint/v1", "arch": "mlp", "payload": Payload(marker)}, bad)
    result = cli("to_onnx.py", bad, "--output-dir", tmp_path / "out")
    one_line_error(result, "pickled Python objects and was refused")
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_an_unwritable_output_folder_is_refused(digits_run, tmp_path):
    ckpt = digits_run("mlp", 2) / "checkpoints" / "best.pt"
    if os.geteuid() == 0:  # root ignores permission bits; sysfs refuses new folders to everyone
        unwritable = Path("/sys/convserve-export-test")
    else:
        unwritable = tmp_path / "locked"
        unwritable.mkdir(mode=0o555)
    one_line_error(cli("to_torchscript.py", ckpt, "--output-dir", unwritable), "is not writable")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    one_line_error(cli("to_onnx.py", ckpt, "--output-dir", blocker), "exists and is not a folder")


def test_a_foreign_folder_is_refused_and_untouched_then_replaced_with_force(digits_run, tmp_path):
    ckpt = digits_run("mlp", 2) / "checkpoints" / "best.pt"
    folder = tmp_path / "busy"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"someone else's model")
    before = snapshot(folder)
    one_line_error(cli("to_onnx.py", ckpt, "--output-dir", folder), "is not empty")
    assert snapshot(folder) == before
    forced = cli("to_onnx.py", ckpt, "--output-dir", folder, "--force", "--no-test-accuracy")
    assert forced.returncode == 0, forced.stderr
    card = read_card(folder)
    assert card.file("onnx").sha256 == sha256_file(folder / "model.onnx") != before["model.onnx"]


def test_an_existing_file_of_the_same_checkpoint_needs_force(exported):
    folder, ckpt, _ = exported("mlp")
    before = snapshot(folder)
    one_line_error(cli("to_torchscript.py", ckpt, "--output-dir", folder), "model.ts.pt already exists")
    one_line_error(cli("to_onnx.py", ckpt, "--output-dir", folder), "model.onnx already exists")
    assert snapshot(folder) == before


def test_another_checkpoint_cannot_write_into_an_artifact(exported, digits_run, tmp_path):
    folder, _, _ = exported("mlp")
    before = snapshot(folder)
    other = digits_run("alexnet", 1) / "checkpoints" / "best.pt"
    one_line_error(cli("to_torchscript.py", other, "--output-dir", folder), "an artifact of another model")
    assert snapshot(folder) == before


def test_usage_errors_are_one_line(digits_run, photos, tmp_path):
    ckpt = digits_run("mlp", 2) / "checkpoints" / "best.pt"
    one_line_error(cli("to_onnx.py", "--output-dir", tmp_path / "x"), "give either a CHECKPOINT or --torchvision")
    one_line_error(
        cli("to_onnx.py", ckpt, "--random-weights", "--output-dir", tmp_path / "x"), "goes with --torchvision"
    )
    one_line_error(cli("to_onnx.py", ckpt, "--batch", "zero"), "--batch")
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    one_line_error(cli("to_onnx.py", ckpt, "--output-dir", tmp_path / "y", "--check-images", bad), "cannot be decoded")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_a_failed_parity_check_exits_1_and_writes_nothing(digits_run, tmp_path, monkeypatch, capsys):
    """An exporter bug cannot be produced on demand, so the TorchScript exporter is swapped (in-process) for
    one that traces a model with perturbed weights; the real parity check must catch it."""
    import convserve.export.pipeline as pipeline
    from convserve.export.to_torchscript import main

    real = pipeline.export_torchscript

    def buggy(model, input_size, path):
        broken = copy.deepcopy(model)  # same architecture, slightly different numbers
        with torch.no_grad():
            for p in broken.parameters():
                p.add_(0.05 * torch.randn_like(p))
        real(broken, input_size, path)

    monkeypatch.setattr(pipeline, "export_torchscript", buggy)
    ckpt = digits_run("mlp", 2) / "checkpoints" / "best.pt"
    folder = tmp_path / "art"
    assert main([str(ckpt), "--output-dir", str(folder), "--no-test-accuracy"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: parity check failed: torchscript") and "nothing was written" in err[-1]
    assert not folder.exists()  # created for this export, removed again when it failed
