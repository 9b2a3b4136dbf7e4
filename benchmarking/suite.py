"""One benchmark run: export the model once, measure every backend in-process and through TorchServe on the
same real JPEGs, judge the targets, write results.json, results.md and the PNG charts.

Order: images → artifact (exported with the exporter's own pipeline, or given) → this machine's GEMM rate and
read bandwidth, measured now, and the floors they give the model → in-process, one fresh process per backend,
eager first → TorchServe, one server at a time → ratios, targets → files. Nothing runs in parallel: every
measurement has the machine to itself (as far as this run is concerned).
"""

from __future__ import annotations

import io
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from convserve.artifact.card import ModelCard, read_card
from convserve.benchmarking.charts import write_charts
from convserve.benchmarking.comparisons import evaluate
from convserve.benchmarking.floors import Floors, compute_floors, forward_flops, measure_rates
from convserve.benchmarking.inprocess import InProcessSpec, measure_isolated
from convserve.benchmarking.results import (
    BASELINE,
    Batching,
    BenchmarkResults,
    ImageInfo,
    InProcessFailure,
    InProcessResult,
    ModelInfo,
    RunSettings,
)
from convserve.benchmarking.served import STOCK, ServedPlan, default_batching, measure_served
from convserve.benchmarking.tables import render_markdown
from convserve.common.devices import choose_device
from convserve.common.errors import ConvserveError
from convserve.common.files import write_text_atomic
from convserve.hardware.cpu_share import default_threads
from convserve.hardware.machine import describe_machine, load_average
from convserve.loadtest.loadgen import read_payloads
from convserve.models import model_from_checkpoint
from convserve.models.checkpoint import Checkpoint, load_checkpoint
from convserve.serving.backends import AUTO_ORDER

# scikit-image's bundled colour photos (the stock handler cannot take grayscale): 300 to 640 px, real JPEGs
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
OUTPUT_FILES = ("results.json", "results.md")
STAGES = ("inprocess", "served")


@dataclass
class BenchmarkOptions:
    output_dir: Path
    checkpoint: Path | None = None
    torchvision: str | None = None
    random_weights: bool = False  # with torchvision: a seeded untrained model (--random-weights), said in every table
    artifact: Path | None = None  # an existing artifact folder: no export
    work_dir: Path | None = None  # kept when given (exports reused by a later run); else a temporary folder
    quick: bool = False
    force: bool = False
    device: str = "auto"
    threads: int | None = None
    formats: list[str] | None = None  # export formats; None: onnx, torchscript, onnx-int8 (+ onnx-fp16 on GPU)
    backends: list[str] | None = None  # in-process subset; None: every file the artifact has
    served_kinds: list[str] = field(default_factory=lambda: ["onnx", "torchscript", "eager", STOCK])
    batchings: list[Batching] | None = None
    concurrencies: list[int] | None = None
    iterations: int | None = None
    load_duration_s: float | None = None
    latency_requests: int | None = None
    workers: int = 1
    stages: tuple[str, ...] = STAGES
    command: str = "python benchmarking/benchmark.py"


def run_settings(opts: BenchmarkOptions, device: str) -> RunSettings:
    """Defaults of a full or a quick run, with the options' overrides."""
    quick = opts.quick
    # the headline rows are what a user gets (the archive's default batching); no batching beside it for reference
    default, no_batching = default_batching(), Batching(batch_size=1, max_batch_delay_ms=0)
    served_batchings = [default] if quick else list(dict.fromkeys([default, no_batching]))
    return RunSettings(
        quick=quick,
        device=device,
        threads=opts.threads,
        iterations=opts.iterations or (10 if quick else 200),
        warmup=2 if quick else 20,
        batch_sizes=[8] if quick else [8, 32, 64],
        concurrencies=opts.concurrencies or ([1, 4] if quick else [1, 4, 16]),
        load_duration_s=opts.load_duration_s or (1.5 if quick else 20.0),
        latency_requests=opts.latency_requests or (10 if quick else 300),
        batchings=opts.batchings or served_batchings,
        served_kinds=opts.served_kinds,
        workers=opts.workers,
    )


def write_photos(folder: Path) -> tuple[list[Path], list[ImageInfo]]:
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    paths, infos = [], []
    for name in PHOTOS:
        array = getattr(data, name)()
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format="JPEG", quality=90)
        path = folder / f"{name}.jpg"
        path.write_bytes(buf.getvalue())
        paths.append(path)
        infos.append(ImageInfo(name=path.name, bytes=len(buf.getvalue()), width=array.shape[1], height=array.shape[0]))
    return paths, infos


def default_formats(device: str) -> list[str]:
    return ["onnx", "torchscript", "onnx-int8", *(["onnx-fp16"] if device.startswith("cuda") else [])]


def export_artifact(
    opts: BenchmarkOptions, work: Path, formats: list[str], images: list[Path], say
) -> tuple[Path, list[str]]:
    """WORK/<source name>/ from the exporter's pipeline (parity checked); an earlier export of the same weights
    with every wanted format is reused. An int8 file failing parity is dropped and said in the notes."""
    from convserve.export.parity import ParityError
    from convserve.export.pipeline import ExportRequest, run_export
    from convserve.export.sources import checkpoint_source, torchvision_source

    if opts.torchvision:
        source = torchvision_source(opts.torchvision, random_weights=opts.random_weights)
    else:
        source = checkpoint_source(opts.checkpoint)
    folder = work / source.name
    try:
        existing = read_card(folder)
    except ConvserveError:
        existing = None
    same = existing is not None and existing.source.weights_sha256 == source.card.weights_sha256
    if same and all(existing.file(f) is not None for f in formats):
        say(f"artifact {folder}: reusing the earlier export ({', '.join(formats)})")
        return folder, []
    request = ExportRequest(formats=formats, output_dir=folder, force=True, check_images=images, test_accuracy=False)
    try:
        run_export(source, request)
        return folder, []
    except ParityError as exc:
        if "onnx-int8" not in formats:
            raise ConvserveError(f"export failed its parity check: {exc}") from None
        reason = str(exc)
    request.formats = [f for f in formats if f != "onnx-int8"]
    run_export(source, request)
    return folder, [f"onnx-int8 was not benchmarked: its export failed the exporter's parity check ({reason})"]


def eager_checkpoint(card: ModelCard, folder: Path) -> Checkpoint:
    eager = card.file("eager")
    if eager is None:
        raise ConvserveError(f"artifact {folder} has no eager model file (model.pt): the baseline needs it")
    return load_checkpoint(folder / eager.path)


def model_info(card: ModelCard, ckpt: Checkpoint, source: str) -> ModelInfo:
    state = ckpt.model_state
    params = sum(t.numel() for k, t in state.items() if t.is_floating_point() and not k.endswith("running_var"))
    return ModelInfo(
        name=card.name,
        arch=card.arch,
        num_classes=card.num_classes,
        input_size=card.preprocessing.input_size,
        resize_size=card.preprocessing.resize_size,
        source=source,
        random_weights=card.source.random_weights,
        parameters=params,
        fp32_weights_mb=params * 4 / 1e6,
    )


def measure_floors(card: ModelCard, ckpt: Checkpoint, model: ModelInfo, s: RunSettings, say) -> Floors:
    """This machine's rates, measured now on the backends' thread count, and the floors they give the model."""
    threads = s.threads or default_threads()
    rates = measure_rates(s.device, threads)
    flops = forward_flops(model_from_checkpoint(ckpt), model.input_size, s.device)
    weight_bytes = {"fp32": model.parameters * 4, **{f.format: f.size_bytes for f in card.files}}
    floors = compute_floors(rates, flops, weight_bytes)
    gemm = ", ".join(f"{p} {v:.1f} GFLOP/s" for p, v in floors.matmul_gflops.items())
    say(
        f"floors ({threads} threads): read {floors.read_gbs:.2f} GB/s, GEMM {gemm}; fp32 weight read "
        f"{floors.fp32_read_ms:.2f} ms, fp32 compute {floors.compute_ms.get('fp32', float('nan')):.2f} ms "
        f"({flops / 1e9:.2f} GFLOPs per image)"
    )
    return floors


def inprocess_backends(card: ModelCard, wanted: list[str] | None) -> list[str]:
    present = [f.format for f in card.files]
    order = [BASELINE, *[f for f in AUTO_ORDER if f != BASELINE]]
    chosen = [f for f in order if f in present and (wanted is None or f in wanted)]
    if BASELINE not in chosen:
        chosen.insert(0, BASELINE)  # ratios need the baseline
    return chosen


def measure_inprocess(
    folder: Path, backends: list[str], images: list[Path], s: RunSettings, say
) -> tuple[list[InProcessResult], list[InProcessFailure]]:
    results, failures = [], []
    for backend in backends:
        spec = InProcessSpec(
            artifact=str(folder),
            backend=backend,
            images=[str(p) for p in images],
            device=s.device,
            threads=s.threads,
            iterations=s.iterations,
            warmup=s.warmup,
            batch_sizes=s.batch_sizes,
            batch_iterations=3 if s.quick else 20,
            budget_s=2.0 if s.quick else 20.0,
        )
        say(f"in-process {backend}: measuring in a fresh process")
        found = measure_isolated(spec)
        if isinstance(found, InProcessFailure):
            say(f"in-process {backend}: FAILED: {found.error}")
            failures.append(found)
        else:
            say(
                f"in-process {backend}: model p50 {found.model_b1.p50_ms:.2f} ms, end-to-end p50 "
                f"{found.end_to_end_b1.p50_ms:.2f} ms, peak RSS {found.peak_rss_mb:.0f} MB"
            )
            results.append(found)
    return results, failures


def check_output_dir(opts: BenchmarkOptions) -> None:
    existing = [opts.output_dir / name for name in OUTPUT_FILES if (opts.output_dir / name).exists()]
    if existing and not opts.force:
        raise ConvserveError(f"{existing[0]} exists; pass --force to overwrite the results in {opts.output_dir}")
    if (opts.checkpoint is None) + (opts.torchvision is None) + (opts.artifact is None) != 2:
        raise ConvserveError("give exactly one of --checkpoint, --torchvision or --artifact")
    if opts.random_weights and opts.torchvision is None:
        raise ConvserveError("--random-weights goes with --torchvision (a checkpoint or an artifact has its weights)")
    if opts.checkpoint is not None and not Path(opts.checkpoint).is_file():
        raise ConvserveError(f"checkpoint {opts.checkpoint} does not exist")
    unknown = [s for s in opts.stages if s not in STAGES]
    if unknown:
        raise ConvserveError(f"unknown stage {unknown[0]!r}; choose from {', '.join(STAGES)}")


def run_benchmark(opts: BenchmarkOptions, say: Callable[[str], None] = print) -> BenchmarkResults:
    check_output_dir(opts)
    started = time.perf_counter()
    device = str(choose_device(opts.device))
    settings = run_settings(opts, device)
    machine = describe_machine()
    say(f"machine: {machine.cpu_model}, {machine.usable_cpus} CPUs, load average {machine.load_average}")
    work = Path(opts.work_dir) if opts.work_dir else Path(tempfile.mkdtemp(prefix="convserve-bench-"))
    try:
        return _run(opts, settings, machine, work, started, say)
    finally:
        if opts.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


def _run(opts, settings: RunSettings, machine, work: Path, started: float, say) -> BenchmarkResults:
    images, infos = write_photos(work / "images")
    notes: list[str] = []
    if opts.artifact is not None:
        folder, source = Path(opts.artifact), f"artifact {opts.artifact}"
    else:
        source = f"torchvision:{opts.torchvision}" if opts.torchvision else str(opts.checkpoint)
        folder, dropped = export_artifact(opts, work, opts.formats or default_formats(settings.device), images, say)
        notes += dropped
    card = read_card(folder)
    ckpt = eager_checkpoint(card, folder)
    model = model_info(card, ckpt, source)
    # measured before the backends run (the machine is as idle as this run leaves it); the in-process target needs it
    floors = measure_floors(card, ckpt, model, settings, say) if "inprocess" in opts.stages else None
    del ckpt  # the parent holds no weights while the backends' processes run
    results = BenchmarkResults(
        command=opts.command,
        model=model,
        artifact=str(folder),
        images=infos,
        machine=machine,
        settings=settings,
        floors=floors,
        notes=notes + card.notes,
    )
    if "inprocess" in opts.stages:
        found, failed = measure_inprocess(folder, inprocess_backends(card, opts.backends), images, settings, say)
        results = results.model_copy(update={"inprocess": found, "inprocess_failures": failed})
    if "served" in opts.stages:
        plan = ServedPlan(
            artifact=folder,
            payloads=read_payloads(images),
            work_dir=work,
            kinds=settings.served_kinds,
            batchings=settings.batchings,
            concurrencies=settings.concurrencies,
            latency_requests=settings.latency_requests,
            load_duration_s=settings.load_duration_s,
            warmup=2 if settings.quick else 10,
            workers=settings.workers,
            threads=settings.threads,
        )
        served, skipped = measure_served(plan, say)
        results = results.model_copy(update={"served": served, "served_skipped": skipped})
    machine = results.machine.model_copy(update={"load_average_end": load_average()})
    results = results.model_copy(update={"machine": machine, "wall_s": time.perf_counter() - started})
    return evaluate(results)


def write_results(results: BenchmarkResults, folder: Path) -> list[Path]:
    """results.json (validated on the way out), results.md and the charts."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    checked = BenchmarkResults.model_validate_json(results.model_dump_json())
    write_text_atomic(folder / "results.json", checked.model_dump_json(indent=1) + "\n")
    write_text_atomic(folder / "results.md", render_markdown(checked))
    return [folder / "results.json", folder / "results.md", *write_charts(checked, folder)]
