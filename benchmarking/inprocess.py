"""In-process measurements of one backend, each in a fresh Python process so its memory is that backend's.

``measure_isolated(spec)`` runs ``python -m convserve.benchmarking.inprocess SPEC.json OUT.json`` and reads the result;
``measure(spec)`` is what that child does: load the artifact with ``Classifier.from_artifact`` (timed), then
time the model alone at batch 1, the end-to-end path (encoded bytes → top-k), decode and preprocess on their
own, and the model at larger batches, and finally read the process's peak RSS from /proc.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from convserve.benchmarking.results import InProcessFailure, InProcessResult, ThroughputPoint
from convserve.hardware.procfs import own_peak_rss_mb, process_memory
from convserve.loadtest.latency_stats import LatencyStats


class InProcessSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    artifact: str
    backend: str
    images: list[str]
    device: str = "cpu"
    threads: int | None = None
    iterations: int = 200  # per latency measurement (fewer when ``budget_s`` runs out first)
    warmup: int = 10
    batch_sizes: list[int] = [8, 32, 64]
    batch_iterations: int = 20
    budget_s: float = 20.0  # per measurement; at least ``MIN_SAMPLES`` are always taken


MIN_SAMPLES = 3


def timed(
    fn: Callable[[], object], iterations: int, warmup: int, budget_s: float, cpu: list[float] | None = None
) -> list[float]:
    """Seconds per call of ``fn`` after ``warmup`` untimed calls; stops early when ``budget_s`` is spent.

    ``cpu``: receives the process CPU seconds per call (all threads), averaged over the timed calls.
    """
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    start, cpu_start = time.perf_counter(), time.process_time()
    while len(samples) < iterations:
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
        if len(samples) >= MIN_SAMPLES and time.perf_counter() - start > budget_s:
            break
    if cpu is not None:
        cpu.append((time.process_time() - cpu_start) / len(samples))
    return samples


def _rss_mb(anon: bool = False) -> float | None:
    import os

    found = process_memory(os.getpid(), "self")
    return (found.anon_mb if anon else found.rss_mb) if found else None


def _gpu_peak_mb(device: str, backend_name: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    import torch

    if backend_name != "onnx":  # torch's allocator sees its own tensors only
        return torch.cuda.max_memory_reserved() / 2**20
    return _nvidia_smi_mb()


def _nvidia_smi_mb() -> float | None:
    """ONNX Runtime allocates outside torch: ask the driver what this process holds."""
    import os

    query = ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
    try:
        out = subprocess.run(query, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        pid, _, used = line.partition(",")
        if pid.strip() == str(os.getpid()):
            return float(used)
    return None


def measure(spec: InProcessSpec) -> InProcessResult:
    import onnxruntime  # noqa: F401  every backend's process holds both runtimes: the baselines compare

    from convserve.hardware.cpu_share import default_threads
    from convserve.serving.backends import share_cores
    from convserve.serving.classifier import Classifier

    wall = time.perf_counter()
    encoded = [Path(p).read_bytes() for p in spec.images]
    rss_before = _rss_mb()
    start = time.perf_counter()
    clf = Classifier.from_artifact(spec.artifact, backend=spec.backend, device=spec.device, threads=spec.threads)
    load_s = time.perf_counter() - start
    share_cores(clf.backend)  # as the TorchServe worker does
    rss_after = _rss_mb()
    model_file = Path(spec.artifact) / next(f.path for f in clf.card.files if f.format == spec.backend)
    figures = _latencies(clf, encoded, spec)
    points = _throughput(clf, encoded, spec)
    # memory now, before the stock reference timing imports TorchServe's handler (and captum) into this process
    peak, anon, gpu = own_peak_rss_mb(), _rss_mb(anon=True), _gpu_peak_mb(spec.device, clf.backend.name)
    stock = _stock_timing(clf.card, encoded, spec) if spec.backend == "eager" else None
    return InProcessResult(
        backend=spec.backend,
        model_file=model_file.name,
        model_file_mb=model_file.stat().st_size / 2**20,
        device=clf.backend.device,
        threads=spec.threads or default_threads(),
        load_s=load_s,
        rss_before_load_mb=rss_before,
        rss_after_load_mb=rss_after,
        peak_rss_mb=peak,
        anon_rss_mb=anon,
        peak_gpu_mb=gpu,
        **figures,
        stock_decode_preprocess=LatencyStats.from_seconds(stock) if stock else None,
        throughput=points,
        wall_s=time.perf_counter() - wall,
    )


def _latencies(clf, encoded: list[bytes], spec: InProcessSpec) -> dict:
    """Batch-1 figures: the model alone, end to end, decode and preprocess alone."""
    decoded = [clf.decode(b) for b in encoded]
    tensors = [clf.preprocess([d]) for d in decoded]
    n, w, budget = spec.iterations, spec.warmup, spec.budget_s
    nxt = _cycler(len(encoded))
    cpu: list[float] = []
    model_b1 = timed(lambda: clf.backend(tensors[nxt()]), n, w, budget, cpu)
    end_to_end = timed(lambda: clf.predict([encoded[nxt()]]), n, w, budget, cpu)
    decode = timed(lambda: clf.decode(encoded[nxt()]), n, w, budget)
    preprocess = timed(lambda: clf.preprocess([decoded[nxt()]]), n, w, budget)
    return {
        "model_b1": LatencyStats.from_seconds(model_b1),
        "model_b1_cpu_ms": cpu[0] * 1e3,
        "end_to_end_b1": LatencyStats.from_seconds(end_to_end),
        "end_to_end_cpu_ms": cpu[1] * 1e3,
        "decode": LatencyStats.from_seconds(decode),
        "preprocess": LatencyStats.from_seconds(preprocess),
    }


def _throughput(clf, encoded: list[bytes], spec: InProcessSpec) -> list[ThroughputPoint]:
    """The model alone on batches of preprocessed images (the photos repeated)."""
    import torch

    tensors = [clf.preprocess([clf.decode(b)]) for b in encoded]
    points = []
    for size in spec.batch_sizes:
        batch = torch.cat([tensors[i % len(tensors)] for i in range(size)])
        samples = timed(lambda b=batch: clf.backend(b), spec.batch_iterations, min(spec.warmup, 2), spec.budget_s)
        points.append(
            ThroughputPoint(
                batch_size=size,
                images_per_s=size * len(samples) / sum(samples),
                batch_latency=LatencyStats.from_seconds(samples),
            )
        )
    return points


def _stock_timing(card, encoded: list[bytes], spec: InProcessSpec) -> list[float] | None:
    """The stock handler's PIL decode + torchvision (v1) transforms, on the same bytes."""
    import io

    from PIL import Image

    from convserve.benchmarking.stock import stock_unsupported

    if stock_unsupported(card):
        return None
    from ts.torch_handler.image_classifier import ImageClassifier

    transform = ImageClassifier.image_processing
    nxt = _cycler(len(encoded))
    return timed(lambda: transform(Image.open(io.BytesIO(encoded[nxt()]))), spec.iterations, spec.warmup, spec.budget_s)


def _cycler(n: int) -> Callable[[], int]:
    counter = itertools.count()
    return lambda: next(counter) % n


def measure_isolated(spec: InProcessSpec, timeout_s: float = 1800.0) -> InProcessResult | InProcessFailure:
    """``measure`` in a fresh interpreter; a crash or timeout becomes an InProcessFailure with the last error."""
    with tempfile.TemporaryDirectory(prefix="convserve-bench-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(spec.model_dump_json())
        cmd = [sys.executable, "-m", "convserve.benchmarking.inprocess", str(spec_path), str(out_path)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return InProcessFailure(backend=spec.backend, error=f"timed out after {timeout_s:.0f} s")
        if done.returncode != 0 or not out_path.exists():
            lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
            return InProcessFailure(backend=spec.backend, error=lines[-1] if lines else f"exit {done.returncode}")
        return InProcessResult.model_validate_json(out_path.read_text())


def _child(argv: list[str]) -> int:
    spec = InProcessSpec.model_validate_json(Path(argv[0]).read_text())
    result = measure(spec)
    Path(argv[1]).write_text(json.dumps(result.model_dump(mode="json")))
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
