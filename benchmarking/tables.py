"""results.md: the benchmark's tables in Markdown (machine, targets, in-process, served, ratios)."""

from __future__ import annotations

from convserve.benchmarking.comparisons import floor_multiples, model_memory_mb
from convserve.benchmarking.floors import PRECISION
from convserve.benchmarking.results import BenchmarkResults, Ratio


def _f(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _g(value: float | None) -> str:
    """Three significant digits: floors run from microseconds (small models) to seconds."""
    return "–" if value is None else f"{value:.3g}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + [""]


def _flags(flags: list[str] | None) -> str:
    if flags is None:  # recorded before the flags were
        return ""
    return f" ({', '.join(flags) or 'none of AVX2, AVX-512, bf16, AMX'})"


def machine_section(res: BenchmarkResults) -> list[str]:
    m = res.machine
    versions = ", ".join(f"{k} {v}" for k, v in m.versions.items())
    threads = f"torch intra-op {m.torch_threads}, inter-op {m.torch_interop_threads}"
    env = ", ".join(f"{k}={v}" for k, v in m.thread_env.items()) or "no thread variables set"
    end = f"; at the end {', '.join(map(str, m.load_average_end))}" if m.load_average_end else ""
    return [
        "## Machine",
        "",
        f"- CPU: {m.cpu_model}{_flags(m.cpu_flags)}, {m.logical_cpus} logical CPUs, "
        f"{m.affinity_cpus} in this process's affinity, "
        f"cgroup quota {_f(m.cpu_quota, 2) if m.cpu_quota else 'none'}: **{m.usable_cpus} usable**, {m.ram_gb} GB RAM"
        + (f", GPU {m.gpu}" if m.gpu else ", no GPU"),
        f"- **Load average (1, 5, 15 min) at the start: {', '.join(map(str, m.load_average))}{end}**",
        f"- Threads: {threads}; {env}; backends use {res.settings.threads or 'their default'} intra-op threads",
        f"- Python {m.python}; {versions}; {m.java or 'java unknown'}",
        f"- {m.platform}",
        "",
    ]


def title_line(res: BenchmarkResults) -> str:
    """The first line of results.md: a table of an untrained model says so before any figure is read."""
    mdl = res.model
    title = f"# Benchmark: {mdl.name} ({mdl.arch}, {mdl.input_size} px, {mdl.num_classes} classes)"
    if mdl.random_weights:
        title += " — RANDOM WEIGHTS (not trained: predictions meaningless; timings do not depend on weight values)"
    return title


def header_section(res: BenchmarkResults) -> list[str]:
    mdl, s = res.model, res.settings
    images = ", ".join(f"{i.name} ({i.width}x{i.height}, {i.bytes // 1024} kB)" for i in res.images)
    lines = [
        title_line(res),
        "",
        f"- Run {res.created_at}, {res.wall_s / 60:.1f} min{' (QUICK mode: few iterations)' if s.quick else ''}",
        f"- Command: `{res.command}`",
        f"- Model: {mdl.source}; {mdl.parameters / 1e6:.1f} M parameters, {mdl.fp32_weights_mb:.0f} MB fp32"
        + (" — random weights, not trained" if mdl.random_weights else ""),
        f"- Images: {images} (JPEG, cycled)",
        f"- In-process: {s.iterations} iterations at batch 1 after {s.warmup} warm-up, batches {s.batch_sizes}; "
        f"device {s.device}",
        f"- Served: concurrency {s.concurrencies}, {s.latency_requests} requests at concurrency 1, "
        f"{s.load_duration_s:g} s per other concurrency, {s.workers} worker(s); batching: "
        + ", ".join(b.label for b in s.batchings),
        "",
    ]
    return lines + [f"> {note}" for note in res.notes] + ([""] if res.notes else [])


def targets_section(res: BenchmarkResults) -> list[str]:
    rows = []
    for t in res.targets:
        verdict = "not measured" if t.met is None else ("**met**" if t.met else "**missed**")
        rows.append([t.target, _f(t.measured, 2), f"{t.threshold:g}", verdict, t.detail])
    return ["## Targets", "", *_table(["target", "measured", "threshold", "verdict", "detail"], rows)]


def floors_section(res: BenchmarkResults) -> list[str]:
    fl = res.floors
    if fl is None:
        return ["## Floors", "", "Not measured in this run (no in-process stage).", ""]
    gemm = ", ".join(f"{p} {v:.1f} GFLOP/s" for p, v in fl.matmul_gflops.items())
    flops = f"{_g(fl.flops_per_image / 1e9)} GFLOPs" if fl.flops_per_image else "not counted"
    rows = [
        [f"read {name} weights", f"{_g(fl.weight_mb[name])} MB", _g(fl.weight_read_ms[name])] for name in fl.weight_mb
    ]
    rows += [[f"compute at {p}", flops, _g(ms)] for p, ms in fl.compute_ms.items()]
    return [
        "## Floors (measured in this run)",
        "",
        f"Rates measured on {fl.device} with {fl.threads} threads just before the backends ran: read bandwidth "
        f"**{fl.read_gbs:.2f} GB/s** (torch.sum over 256 MB, best of N), matrix multiply **{gemm}** "
        f"(square torch.mm, best of N). One batch-1 forward pass: {flops} (torch FlopCounterMode). A floor is the "
        "time to read those weights once at that bandwidth, or to compute those FLOPs at that rate; a backend's own "
        "floor is the slower of its file's read and the compute at its precision ("
        + ", ".join(f"{k} {v}" for k, v in PRECISION.items())
        + "; no int8 rate is measured). Weights small enough to stay in the caches between calls can beat the "
        "read floor, which uses the bandwidth from memory.",
        "",
        *_table(["floor", "size", "ms"], rows),
    ]


def inprocess_section(res: BenchmarkResults) -> list[str]:
    if not res.inprocess and not res.inprocess_failures:
        return []
    sizes = res.settings.batch_sizes
    header = ["backend", "file MB", "load s", "model p50", "p90", "p99", "model CPU ms", "end-to-end p50", "decode p50"]
    header += ["preprocess p50", *[f"b{b} img/s" for b in sizes], "peak RSS MB", "anon MB", "model MB"]
    header += ["p50 vs eager", "own floor ms", "p50 / floor"]
    ratios = {(r.subject, r.metric): r.value for r in res.ratios if r.stage == "inprocess"}
    multiples = floor_multiples(res)
    rows = []
    for r in res.inprocess:
        rates = {p.batch_size: p.images_per_s for p in r.throughput}
        rows.append(
            [
                r.backend,
                _f(r.model_file_mb),
                _f(r.load_s, 2),
                _f(r.model_b1.p50_ms, 2),
                _f(r.model_b1.p90_ms, 2),
                _f(r.model_b1.p99_ms, 2),
                _f(r.model_b1_cpu_ms, 2),
                _f(r.end_to_end_b1.p50_ms, 2),
                _f(r.decode.p50_ms, 2),
                _f(r.preprocess.p50_ms, 2),
                *[_f(rates.get(b)) for b in sizes],
                _f(r.peak_rss_mb, 0),
                _f(r.anon_rss_mb, 0),
                _f(model_memory_mb(r), 0),
                _f(ratios.get((r.backend, "model_b1_p50_ms")), 2),
                _g(res.floors.backend_ms(r.backend) if res.floors else None),
                _f(multiples.get(r.backend), 2),
            ]
        )
    lines = [
        "## In-process (each backend in its own fresh process)",
        "",
        "Latencies in ms. *model*: the backend call on a ready batch-1 tensor; *end-to-end*: JPEG bytes → top-5 "
        "(decode + preprocess + model + softmax/top-k); *decode* / *preprocess*: those steps alone; *model CPU ms*: "
        "process CPU time (all threads) per model call. *model MB*: "
        "peak RSS minus the RSS before loading (interpreter, torch and onnxruntime already imported); *anon*: RssAnon "
        "at the end (private memory). *own floor*: the backend's floor measured in this run (see Floors); "
        "*p50 / floor*: model p50 as a multiple of it.",
        "",
        *_table(header, rows),
    ]
    stock = next((r.stock_decode_preprocess for r in res.inprocess if r.stock_decode_preprocess), None)
    if stock:
        lines += [
            f"The stock image_classifier's decode + transforms (PIL, torchvision v1) on the same JPEGs: p50 "
            f"{stock.p50_ms:.2f} ms, p99 {stock.p99_ms:.2f} ms (ours: decode + preprocess columns above).",
            "",
        ]
    gpu = [r for r in res.inprocess if r.peak_gpu_mb is not None]
    if gpu:
        lines += [f"Peak GPU memory: {', '.join(f'{r.backend} {r.peak_gpu_mb:.0f} MB' for r in gpu)}", ""]
    for f in res.inprocess_failures:
        lines += [f"- {f.backend} FAILED: {f.error}"]
    return lines + ([""] if res.inprocess_failures else [])


def served_section(res: BenchmarkResults) -> list[str]:
    if not res.served and not res.served_skipped:
        return []
    conc = res.settings.concurrencies
    header = ["kind", "handler", "batching", "cold start s", "c1 p50", "c1 p90", "c1 p99", "c1 max"]
    header += [f"c{c} req/s" for c in conc] + [f"c{max(conc)} p50", "worker CPU ms/req c1", f"c{max(conc)}"]
    header += ["worker RSS MB", "worker peak MB", "worker anon MB"]
    header += ["errors"]
    rows = []
    for r in res.served:
        lat = r.latency_c1.latency
        top = next((x for x in r.loads if x.concurrency == max(conc)), None)
        errors = ", ".join(f"{k}: {v}" for k, v in r.errors.items()) or "0"
        rows.append(
            [
                r.kind,
                r.handler,
                r.batching.label,
                _f(r.cold_start_s),
                _f(lat.p50_ms),
                _f(lat.p90_ms),
                _f(lat.p99_ms),
                _f(lat.max_ms),
                *[_f(r.throughput_at(c)) for c in conc],
                _f(top.latency.p50_ms if top else None),
                _f(r.worker_cpu_at(1)),
                _f(r.worker_cpu_at(max(conc))),
                _f(r.worker_rss_mb, 0),
                _f(r.worker_peak_rss_mb, 0),
                _f(r.worker_anon_mb, 0),
                errors,
            ]
        )
    lines = [
        "## Through TorchServe (one server per row, run one at a time)",
        "",
        "Latencies in ms, measured by the client (loadtest/loadgen.py) on loopback. *cold start*: TorchServe "
        "process start → READY worker → first prediction answered. Worker RSS from /proc/<pid>/status (VmRSS, "
        "VmHWM) of the worker processes under the java frontend, read after the loads; *anon*: RssAnon, the private "
        "part (VmRSS also counts the pages of shared libraries: torch alone maps ~500 MB into every worker). "
        "*worker CPU ms/req*: the workers' CPU time (/proc/<pid>/stat) during a load divided by its requests.",
        "",
        *_table(header, rows),
    ]
    frontends = [m.rss_mb for r in res.served for m in r.memory if m.role == "frontend" and m.rss_mb]
    if frontends:
        lines += [f"Java frontend RSS: {min(frontends):.0f}–{max(frontends):.0f} MB per server.", ""]
    batches = [(r, x) for r in res.served for x in r.loads if x.batch_sizes and r.batching.batch_size > 1]
    if batches:
        lines += ["Batch sizes the handler saw (X-Convserve-Batch-Size), with dynamic batching:", ""]
        lines += [
            f"- {r.kind} c{x.concurrency}: " + ", ".join(f"{k}×{v}" for k, v in x.batch_sizes.items())
            for r, x in batches
        ]
        lines.append("")
    for s in res.served_skipped:
        lines.append(f"- {s.kind}{f' ({s.batching.label})' if s.batching else ''} not served: {s.reason}")
    return lines + ([""] if res.served_skipped else [])


def ratios_section(res: BenchmarkResults) -> list[str]:
    if not res.ratios:
        return []
    groups: dict[tuple[str, str], list[Ratio]] = {}
    for r in res.ratios:
        groups.setdefault((r.stage, r.reference), []).append(r)
    lines = [
        "## Ratios",
        "",
        "Each figure divided by the reference's (latency, memory: < 1 is better; throughput: > 1 is better).",
        "",
    ]
    for (stage, reference), items in groups.items():
        metrics = list(dict.fromkeys(r.metric for r in items))
        subjects = list(dict.fromkeys(r.subject for r in items))
        value = {(r.subject, r.metric): r.value for r in items}
        rows = [[s, *[_f(value.get((s, m)), 2) for m in metrics]] for s in subjects]
        lines += [f"### {stage}: against {reference}", "", *_table(["subject", *metrics], rows)]
    return lines


def render_markdown(res: BenchmarkResults) -> str:
    sections = [
        header_section(res),
        targets_section(res),
        floors_section(res),
        inprocess_section(res),
        served_section(res),
        ratios_section(res),
        machine_section(res),
        ["Charts: latency_by_backend.png, throughput_vs_concurrency.png, throughput_vs_batch.png, memory.png", ""],
    ]
    return "\n".join(line for section in sections for line in section)
