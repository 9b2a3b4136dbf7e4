"""The plain-Python classifier: real artifact folders, real ONNX Runtime / TorchScript / eager models, no server."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from ts.context import Context, RequestProcessor

from convserve.artifact.card import read_card, write_card
from convserve.common.errors import ConvserveError, InputError
from convserve.common.preprocessing import Preprocessing, prepare_batch, resize_and_crop
from convserve.serving.classifier import Classifier
from convserve.serving.handler import ConvserveHandler
from convserve.training.data.presets import EvalPreset
from tests.serving_helpers import EagerReference, build_artifact, random_run

BACKENDS = ("onnx", "torchscript", "eager")


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def gray_run(tmp_path_factory) -> Path:
    return random_run(tmp_path_factory.mktemp("gray") / "run", channels=1)


@pytest.fixture(scope="module")
def gray_artifact(gray_run, tmp_path_factory) -> Path:
    return build_artifact(gray_run, tmp_path_factory.mktemp("gray-artifact"))


@pytest.fixture(scope="module")
def color_run(tmp_path_factory) -> Path:
    return random_run(tmp_path_factory.mktemp("color") / "run", channels=3, input_size=24)


@pytest.fixture(scope="module")
def color_artifact(color_run, tmp_path_factory) -> Path:
    return build_artifact(color_run, tmp_path_factory.mktemp("color-artifact"))


@pytest.fixture(scope="module")
def images(photos, digit_images) -> list[bytes]:
    """Real photos (JPEG, grayscale PNG) and real digits, all different sizes."""
    return [photos[n].read_bytes() for n in ("chelsea", "coffee", "camera")] + [
        p.read_bytes() for p, _ in digit_images[:3]
    ]


# --- preprocessing ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_batch_preprocessing_is_eval_preset_bit_for_bit(photos, channels):
    facts = dict(input_size=56, resize_size=64, mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3], channels=channels)
    card, pre = Preprocessing(**facts), Preprocessing(**facts)
    mode = "L" if channels == 1 else "RGB"
    tensors = []
    for name in ("chelsea", "astronaut", "camera"):  # 451x300, 512x512, 512x512 gray
        array = np.asarray(Image.open(photos[name]).convert(mode))
        t = torch.from_numpy(array.copy())
        tensors.append(t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1))
    batch = prepare_batch(tensors, card)
    assert batch.shape == (3, 3, 56, 56) and batch.dtype == torch.float32
    expected = torch.stack([EvalPreset(pre)(t) for t in tensors])
    assert torch.equal(batch, expected)


@pytest.mark.parametrize("mode", ["bilinear", "bicubic", "nearest"])
@pytest.mark.parametrize("shape", [(3, 300, 451), (1, 8, 8), (3, 97, 40), (3, 64, 64)])
def test_resize_and_crop_is_torchvision_bit_for_bit(photos, mode, shape):
    """Down- and up-scaling, portrait and landscape, HWC-strided like decoded images; no torchvision inside."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    channels, height, width = shape
    array = np.asarray(Image.open(photos["chelsea"]).convert("RGB" if channels == 3 else "L").resize((width, height)))
    t = torch.from_numpy(array.copy())
    image = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)
    card = Preprocessing(input_size=56, resize_size=64, mean=[0.5] * 3, std=[0.25] * 3, interpolation=mode)
    ours = resize_and_crop(image, card)
    resized = F.resize(image, [64], interpolation=InterpolationMode(mode), antialias=True)
    assert torch.equal(ours, F.center_crop(resized, [56, 56]))


def test_onnx_serving_path_does_not_import_torchvision(color_artifact, photos):
    """TorchServe workers pay for every import in RSS; the ONNX path needs torch (TorchServe) but not torchvision."""
    code = (
        "import sys; from convserve.serving.classifier import Classifier; "
        f"c = Classifier.from_artifact({str(color_artifact)!r}, backend='onnx'); "
        f"c.predict([open({str(photos['chelsea'])!r}, 'rb').read()]); "
        "print('torchvision' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[2], check=True
    )
    assert out.stdout.strip() == "False"


# --- backends ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("which", ["gray", "color"])
def test_every_backend_matches_the_eager_checkpoint(request, images, backend, which):
    run = request.getfixturevalue(f"{which}_run")
    clf = Classifier.from_artifact(request.getfixturevalue(f"{which}_artifact"), backend=backend)
    reference = EagerReference(run)
    assert clf.backend.name == backend
    answers = clf.predict(images)
    for data, answer in zip(images, answers, strict=True):
        expected = reference.probabilities(data)
        top = expected.topk(5)
        assert list(answer) == [f"class-{i}" for i in top.indices.tolist()]
        assert np.allclose(list(answer.values()), top.values.tolist(), atol=1e-5)


def test_a_batch_answers_like_one_image_at_a_time(gray_artifact, images):
    clf = Classifier.from_artifact(gray_artifact, backend="onnx")
    together = clf.predict(images)
    alone = [clf.predict([data])[0] for data in images]
    for a, b in zip(together, alone, strict=True):
        assert list(a) == list(b)
        assert np.allclose(list(a.values()), list(b.values()), atol=1e-6)


def test_answers_are_top5_softmax_descending(color_artifact, images):
    clf = Classifier.from_artifact(color_artifact)
    for answer in clf.predict(images):
        probs = list(answer.values())
        assert len(answer) == 5
        assert probs == sorted(probs, reverse=True)
        assert all(0 < p <= 1 for p in probs) and sum(probs) <= 1 + 1e-6
    full = clf.probabilities(clf.preprocess([clf.decode(images[0])]))
    assert torch.allclose(full.sum(dim=1), torch.ones(1))


def test_fewer_classes_than_k(tmp_path, images):
    artifact = build_artifact(random_run(tmp_path / "run", num_classes=3), tmp_path / "artifact", ("onnx",))
    answer = Classifier.from_artifact(artifact).predict(images[:1])[0]
    assert sorted(answer) == ["class-0", "class-1", "class-2"]
    assert sum(answer.values()) == pytest.approx(1.0, abs=1e-5)


def test_labels_come_from_index_to_name(gray_artifact, tmp_path, images):
    folder = tmp_path / "renamed"
    shutil.copytree(gray_artifact, folder)
    (folder / "index_to_name.json").write_text(json.dumps({str(i): f"digit {i}" for i in range(10)}))
    answer = Classifier.from_artifact(folder).predict(images[:1])[0]
    assert all(label.startswith("digit ") for label in answer)


def test_grayscale_card_turns_color_into_one_channel(gray_artifact, photos):
    clf = Classifier.from_artifact(gray_artifact)
    assert clf.decode(photos["chelsea"].read_bytes()).shape[0] == 1


def test_auto_prefers_onnx_and_falls_back(gray_artifact, tmp_path):
    assert Classifier.from_artifact(gray_artifact).backend.name == "onnx"
    folder = tmp_path / "no-onnx"
    shutil.copytree(gray_artifact, folder)
    card = read_card(folder)
    card.files = [f for f in card.files if f.format != "onnx"]
    write_card(folder, card)
    assert Classifier.from_artifact(folder).backend.name == "torchscript"
    with pytest.raises(ConvserveError, match="no onnx model file"):
        Classifier.from_artifact(folder, backend="onnx")
    with pytest.raises(ConvserveError, match="unknown backend"):
        Classifier.from_artifact(folder, backend="tensorrt")


def test_a_changed_model_file_is_refused(gray_artifact, tmp_path):
    folder = tmp_path / "tampered"
    shutil.copytree(gray_artifact, folder)
    data = bytearray((folder / "model.ts.pt").read_bytes())
    data[-100] ^= 0xFF
    (folder / "model.ts.pt").write_bytes(bytes(data))
    with pytest.raises(ConvserveError, match="sha256"):
        Classifier.from_artifact(folder, backend="torchscript")
    (folder / "model.onnx").unlink()
    with pytest.raises(ConvserveError, match="missing"):
        Classifier.from_artifact(folder, backend="onnx")


def test_onnx_asked_for_cuda_says_where_it_really_runs(gray_artifact, images):
    """An explicit cuda without a GPU is a one-line error (as in every CLI); ONNX Runtime without its CUDA
    provider runs on its CPU provider, and the backend reports that."""
    if not torch.cuda.is_available():
        with pytest.raises(ConvserveError, match="no CUDA GPU is available"):
            Classifier.from_artifact(gray_artifact, backend="onnx", device="cuda")
        return
    import onnxruntime

    clf = Classifier.from_artifact(gray_artifact, backend="onnx", device="cuda")
    has_provider = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    assert clf.backend.device == ("cuda" if has_provider else "cpu")
    assert clf.predict(images[:1])[0]


def test_bad_image_raises_input_error(gray_artifact, images):
    clf = Classifier.from_artifact(gray_artifact)
    with pytest.raises(InputError) as info:
        clf.predict([images[0], images[0][:1000]])
    assert info.value.status == 400 and "truncated" in info.value.message


# --- the TorchServe handler, driven with TorchServe's own Context (no server) --------------------------------------


def test_handler_answers_each_request_of_a_batch(gray_artifact, tmp_path, images):
    model_dir = tmp_path / "model"
    shutil.copytree(gray_artifact, model_dir / "artifact")
    config = {"maxWorkers": 1, "handler": {"backend": "torchscript", "top_k": 3}}
    context = Context("alexnet", str(model_dir), {"model": {}}, 4, None, "0.12.0", model_yaml_config=config)
    handler = ConvserveHandler()
    handler.initialize(context)
    batch = [{"body": images[0]}, {"body": b"not an image"}, {"data": images[3]}, {"body": b""}]
    context.request_processor = [RequestProcessor({}) for _ in batch]
    out = handler.handle(batch, context)
    expected = handler.classifier.predict([images[0], images[3]])
    assert out[0] == expected[0] and out[2] == expected[1] and len(out[0]) == 3
    assert out[1]["code"] == 415 and "supported" in out[1]["error"]
    assert out[3]["code"] == 400 and "empty" in out[3]["error"]
    assert [context.get_response_status(i)[0] for i in range(4)] == [200, 415, 200, 400]
    assert all(context.get_response_content_type(i) == "application/json" for i in range(4))


@pytest.mark.slow
def test_trained_digits_model_answers_like_training(digits_run, digit_images, tmp_path):
    """A really trained model: served top-1 equals the checkpoint's own eager top-1 on real digit images."""
    run = digits_run("mlp", 2)
    clf = Classifier.from_artifact(build_artifact(run, tmp_path / "artifact", ("onnx",)))
    reference = EagerReference(run)
    data = [path.read_bytes() for path, _ in digit_images]
    for item, answer in zip(data, clf.predict(data), strict=True):
        label, margin = reference.top1(item)
        assert next(iter(answer)) == label or margin < 1e-5
