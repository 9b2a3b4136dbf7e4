"""From the GPU-trained checkpoint to serving: ONNX fp32 and fp16 and TorchScript exports with their parity
checks, then serving's Classifier on the device with the eager and TorchScript backends."""

from __future__ import annotations

import io
import time
from pathlib import Path

import torch
from PIL import Image

from gpu_check.context import Context
from gpu_check.plan import Plan
from gpu_check.report import Row, verdict
from gpu_check.runs import call_cli
from gpu_check.training_checks import autocast_run

FORMATS = ("onnx", "onnx-fp16", "torchscript")
# cuDNN runs fp32 convolutions in TF32 by default: ~1e-3 relative differences from the CPU, so an image whose
# two best classes the CPU scores this close may come out in the other order on the GPU
TIE = 1e-3


def artifact(ctx: Context) -> Path:
    """model.onnx, model.fp16.onnx and model.ts.pt exported from the autocast run's best.pt (export CLIs)."""

    def make() -> Path:
        from convserve.export import to_onnx, to_torchscript

        ckpt = autocast_run(ctx).folder / "checkpoints" / "best.pt"
        folder = ctx.work / "artifact"
        call_cli(to_onnx.main, [str(ckpt), "--output-dir", str(folder), "--fp16"], ctx.log("export"))
        call_cli(to_torchscript.main, [str(ckpt), "--output-dir", str(folder)], ctx.log("export"))
        return folder

    return ctx.once("the export of the autocast run's checkpoint", make)


def check_export(ctx: Context) -> Row:
    from convserve.artifact.card import read_card

    card = read_card(artifact(ctx))
    parts, accs, ok = [], [], True
    for fmt in FORMATS:
        entry = card.file(fmt)
        if entry is None or entry.parity is None:
            parts.append(f"{fmt} missing")
            ok = False
            continue
        p = entry.parity
        ok = ok and p.passed
        parts.append(f"{fmt} {'PASS' if p.passed else 'FAIL'} |Δp| {p.max_abs_prob_diff:.1e}")
        accs.append(f"{entry.test_acc1:.2f}" if entry.test_acc1 is not None else "n/a")
    images = next((f.parity.images for f in card.files if f.parity), 0)
    return Row(
        "export-parity",
        verdict(ok),
        f"{'; '.join(parts)} ({images} images); test top-1 {' / '.join(accs)} %",
        "parity passed for ONNX fp32, ONNX fp16 and TorchScript",
        "`export/to_onnx.py best.pt --fp16` and `export/to_torchscript.py best.pt` on the checkpoint trained on "
        f"{ctx.plan.device} (train-autocast); figures from model_card.json's parity fields, which export measures "
        "on the CPU through serving's own backends (onnxruntime CPU provider, torch.jit) at batch 1 and 16. ONNX "
        "fp16 here is ONNX Runtime's CPU provider, which computes fp16 nodes through casts to fp32: GPU fp16 "
        "arithmetic is the fp16-half-model row.",
        {
            fmt: (card.file(fmt).parity.model_dump() if card.file(fmt) and card.file(fmt).parity else None)
            for fmt in FORMATS
        },  # fmt: skip
    )


def check_image_bytes(ctx: Context) -> list[bytes]:
    """PNG bytes of the checkpoint's own test images (its dataset as loaded for training) and the sample photos."""

    def make() -> list[bytes]:
        from convserve.export.check_images import sample_photo_bytes
        from convserve.models.checkpoint import load_checkpoint
        from convserve.training.data.registry import data_config_for, load_raw

        ckpt = load_checkpoint(autocast_run(ctx).folder / "checkpoints" / "best.pt")
        cfg, seed = data_config_for(ckpt, None, None)
        test = load_raw(cfg, seed).test
        out = []
        for k in range(min(ctx.plan.check_images, len(test))):
            pixels = test[k][0]
            array = pixels[0].numpy() if pixels.shape[0] == 1 else pixels.permute(1, 2, 0).numpy()
            buf = io.BytesIO()
            Image.fromarray(array).save(buf, format="PNG")
            out.append(buf.getvalue())
        return out + sample_photo_bytes()

    return ctx.once("the check images", make)


def agreement(reference: list[dict[str, float]], answers: list[dict[str, float]]) -> int:
    """Images whose top-1 label matches the CPU's, or where the CPU scores both labels within TIE."""
    agree = 0
    for ref, got in zip(reference, answers, strict=True):
        (ref_label, ref_p), got_label = next(iter(ref.items())), next(iter(got))
        agree += got_label == ref_label or ref_p - ref.get(got_label, -1.0) <= TIE
    return agree


def serving_speed(clf, images: list[bytes], plan: Plan) -> tuple[float, float]:
    """(p50 ms of single-image predict() calls, images/s of predict() calls of ``plan.serve_batch`` images)."""
    from convserve.loadtest.latency_stats import LatencyStats

    batch = [images[i % len(images)] for i in range(plan.serve_batch)]
    for _ in range(3):  # warm-up: cuDNN's algorithm choice, the allocator
        clf.predict(images[:1])
        clf.predict(batch)
    samples = []
    for i in range(plan.latency_repeats):
        start = time.perf_counter()
        clf.predict([images[i % len(images)]])  # returns CPU tensors' values: the device work is done
        samples.append(time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(plan.batch_repeats):
        clf.predict(batch)
    per_s = plan.batch_repeats * len(batch) / (time.perf_counter() - start)
    return LatencyStats.from_seconds(samples).p50_ms, per_s


def check_serve(ctx: Context, backend: str) -> Row:
    from convserve.export.check_images import SAMPLE_PHOTOS
    from convserve.serving.classifier import Classifier

    plan, folder, images = ctx.plan, artifact(ctx), check_image_bytes(ctx)
    threads = plan.serve_threads
    reference = Classifier.from_artifact(folder, backend=backend, device="cpu", threads=threads).predict(images)
    if plan.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    clf = Classifier.from_artifact(folder, backend=backend, device=plan.device, threads=threads)
    agree = agreement(reference, clf.predict(images))
    p50, per_s = serving_speed(clf, images, plan)
    peak = torch.cuda.max_memory_allocated() / 2**20 if plan.device == "cuda" else None
    ok = agree == len(images) and (plan.dry_run or bool(peak))
    photos = len(SAMPLE_PHOTOS)
    return Row(
        f"serve-{backend}",
        verdict(ok),
        f"top-1 equal to CPU on {agree}/{len(images)} images; batch-1 p50 {p50:.2f} ms; batch-{plan.serve_batch} "
        f"{per_s:,.0f} img/s; " + (f"peak GPU {peak:.0f} MB" if peak else "no GPU memory (CPU)"),
        "top-1 equal to the CPU on every check image" + ("" if plan.dry_run else "; GPU memory measured"),
        f"convserve.serving.classifier.Classifier.from_artifact(ARTIFACT, backend={backend!r}, device={plan.device!r}) "
        "against the same backend on the CPU, on encoded PNG bytes (decode, preprocess, model, top-5 as a request "
        f"is served): {len(images) - photos} test images of the checkpoint's dataset and {photos} scikit-image "
        f"photos. p50 of {plan.latency_repeats} single-image predict() calls; throughput of {plan.batch_repeats} "
        f"predict() calls of {plan.serve_batch} images (decode and preprocess on the CPU included); peak "
        f"torch.cuda memory while serving. Top-1 may differ only where the CPU's two best probabilities are "
        f"within {TIE:g} (TF32).",
        {
            "agree": agree,
            "images": len(images),
            "p50_ms": p50,
            "batch": plan.serve_batch,
            "images_per_s": per_s,
            "peak_gpu_mem_mb": peak,
        },  # fmt: skip
    )


HALF_TIE = 1e-2  # fp16 keeps ~3 significant digits: classes the CPU scores this close may swap


def check_half_model(ctx: Context) -> Row:
    """The checkpoint's model in torch's float16 on the device against its fp32 logits on the CPU, on the
    preprocessed check images: where fp16 overflow or accumulation would show (ONNX fp16 is checked at export,
    on ONNX Runtime's CPU provider, which computes its fp16 nodes through casts)."""
    from convserve.models import model_from_checkpoint
    from convserve.models.checkpoint import load_checkpoint
    from convserve.serving.classifier import Classifier

    plan = ctx.plan
    ckpt = load_checkpoint(autocast_run(ctx).folder / "checkpoints" / "best.pt")
    clf = Classifier.from_artifact(artifact(ctx), backend="eager", device="cpu", threads=plan.serve_threads)
    batch = clf.preprocess([clf.decode(data) for data in check_image_bytes(ctx)])
    with torch.inference_mode():
        reference = torch.softmax(model_from_checkpoint(ckpt).eval()(batch).float(), dim=1)
        half = model_from_checkpoint(ckpt).eval().half().to(plan.device)
        probs = torch.softmax(half(batch.half().to(plan.device)).float().cpu(), dim=1)
    finite = bool(torch.isfinite(probs).all())
    top_ref, top_half = reference.argmax(1), probs.argmax(1)
    margin = reference.gather(1, top_ref[:, None]) - reference.gather(1, top_half[:, None])
    agree = int(((top_ref == top_half) | (margin[:, 0] <= HALF_TIE)).sum())
    diff = float((probs - reference).abs().max()) if finite else float("inf")
    ok = finite and agree == len(batch)
    return Row(
        "fp16-half-model",
        verdict(ok),
        f"top-1 equal to CPU fp32 on {agree}/{len(batch)} images; max |Δp| {diff:.1e}; "
        f"{'all finite' if finite else 'NaN/inf in the fp16 logits'}",
        "finite fp16 logits; top-1 equal to CPU fp32 on every check image (ties within 1e-2 excepted)",
        f"model_from_checkpoint(best.pt).half() on {plan.device} against the same weights in fp32 on the CPU, "
        f"on the check images decoded and preprocessed as serving does ({len(batch)} images). The export-parity "
        "row's onnx-fp16 figure is ONNX Runtime's CPU provider, not a GPU.",
        {"agree": agree, "images": len(batch), "max_abs_prob_diff": diff, "finite": finite, "device": plan.device},
    )
