"""The benchmark's results.json: pydantic models (the file validates against ``BenchmarkResults``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from convserve.benchmarking.floors import Floors
from convserve.hardware.machine import MachineInfo
from convserve.hardware.procfs import ProcessMemory
from convserve.loadtest.latency_stats import LatencyStats
from convserve.loadtest.loadgen import LoadResult

# v2: floors measured in the run (``floors``) instead of a fixed bandwidth; affinity and usable CPUs recorded
RESULTS_SCHEMA = "convserve.benchmark/v2"
BASELINE = "eager"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageInfo(_Model):
    name: str
    bytes: int
    width: int
    height: int


class ModelInfo(_Model):
    name: str
    arch: str
    num_classes: int
    input_size: int
    resize_size: int
    source: str  # the checkpoint path or "torchvision:<arch>"
    random_weights: bool = False
    parameters: int
    fp32_weights_mb: float  # parameters x 4 bytes: what one batch-1 forward pass must read from memory


class ThroughputPoint(_Model):
    batch_size: int
    images_per_s: float
    batch_latency: LatencyStats


class InProcessResult(_Model):
    """One backend measured in its own fresh process (so the process's memory is that backend's)."""

    backend: str  # eager | torchscript | onnx | onnx-int8 | onnx-fp16
    model_file: str
    model_file_mb: float
    device: str
    threads: int
    load_s: float  # Classifier.from_artifact: reading and preparing the model
    rss_before_load_mb: float | None  # interpreter + torch + onnxruntime imported, images decoded
    rss_after_load_mb: float | None
    peak_rss_mb: float | None  # VmHWM at the end of the process
    anon_rss_mb: float | None = None  # RssAnon at the end: private memory (libraries' shared pages excluded)
    peak_gpu_mb: float | None = None
    model_b1: LatencyStats  # backend call only, batch 1, preprocessed tensor ready
    # process CPU time (all threads) per call: less sensitive than wall time to other processes on the machine,
    # but spinning thread pools count in it
    model_b1_cpu_ms: float | None = None
    end_to_end_cpu_ms: float | None = None
    end_to_end_b1: LatencyStats  # encoded bytes → top-k answer: decode + preprocess + model + softmax/top-k
    decode: LatencyStats  # bytes → uint8 tensor (Pillow)
    preprocess: LatencyStats  # resize, crop, normalise (one image)
    # the stock image_classifier's own decode + transforms on the same bytes, for reference (eager process only,
    # when the model's card matches what that handler does)
    stock_decode_preprocess: LatencyStats | None = None
    throughput: list[ThroughputPoint]
    wall_s: float


class InProcessFailure(_Model):
    backend: str
    error: str


class Batching(_Model):
    model_config = ConfigDict(extra="forbid", frozen=True)  # hashable: configurations are paired by it

    batch_size: int = Field(ge=1)
    max_batch_delay_ms: int = Field(ge=0)

    @property
    def label(self) -> str:
        return "no batching" if self.batch_size == 1 else f"batch {self.batch_size}/{self.max_batch_delay_ms} ms"


class LoadCpu(_Model):
    """CPU time the server spent per request during one load (warm-up included), from /proc/<pid>/stat."""

    concurrency: int
    requests: int
    worker_ms_per_request: float | None
    frontend_ms_per_request: float | None


class ServedResult(_Model):
    """One TorchServe configuration: a model archive kind with one batching setting, on its own server."""

    kind: str  # onnx | torchscript | eager | stock
    handler: str  # "convserve" or "stock image_classifier"
    batching: Batching
    workers: int
    archive_mb: float
    cold_start_s: float  # TorchServe process start → READY workers → a first prediction answered
    latency_c1: LoadResult  # concurrency 1
    loads: list[LoadResult]  # throughput per concurrency (concurrency 1 is latency_c1)
    memory: list[ProcessMemory]  # frontend and workers, read from /proc after the loads
    cpu: list[LoadCpu] = []
    errors: dict[str, int]  # summed over every load

    @property
    def worker_rss_mb(self) -> float | None:
        values = [m.rss_mb for m in self.memory if m.role == "worker" and m.rss_mb is not None]
        return sum(values) if values else None

    @property
    def worker_peak_rss_mb(self) -> float | None:
        values = [m.peak_rss_mb for m in self.memory if m.role == "worker" and m.peak_rss_mb is not None]
        return sum(values) if values else None

    @property
    def worker_anon_mb(self) -> float | None:
        values = [m.anon_mb for m in self.memory if m.role == "worker" and m.anon_mb is not None]
        return sum(values) if values else None

    def worker_cpu_at(self, concurrency: int) -> float | None:
        found = next((c for c in self.cpu if c.concurrency == concurrency), None)
        return found.worker_ms_per_request if found else None

    def throughput_at(self, concurrency: int) -> float | None:
        found = next((r for r in self.loads if r.concurrency == concurrency), None)
        return found.throughput_rps if found else None


class ServedSkip(_Model):
    kind: str
    batching: Batching | None = None
    reason: str


class Ratio(_Model):
    """``value`` of ``subject`` divided by the same figure of ``reference`` (< 1: smaller, e.g. faster)."""

    stage: Literal["inprocess", "served"]
    metric: str
    subject: str
    reference: str
    value: float


class TargetCheck(_Model):
    name: str
    target: str  # our target, in words
    measured: float | None  # the ratio / figure compared with ``threshold``
    threshold: float
    met: bool | None  # None: could not be measured in this run
    detail: str


class RunSettings(_Model):
    quick: bool
    device: str
    threads: int | None
    iterations: int
    warmup: int
    batch_sizes: list[int]
    concurrencies: list[int]
    load_duration_s: float
    latency_requests: int
    batchings: list[Batching]
    served_kinds: list[str]
    workers: int


class BenchmarkResults(_Model):
    schema_version: Literal["convserve.benchmark/v2"] = RESULTS_SCHEMA
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    command: str
    wall_s: float = 0.0
    model: ModelInfo
    artifact: str
    images: list[ImageInfo]
    machine: MachineInfo
    settings: RunSettings
    floors: Floors | None  # weight-read and compute floors from rates measured in this run; None: not measured
    inprocess: list[InProcessResult] = []
    inprocess_failures: list[InProcessFailure] = []
    served: list[ServedResult] = []
    served_skipped: list[ServedSkip] = []
    ratios: list[Ratio] = []
    targets: list[TargetCheck] = []
    notes: list[str] = []
