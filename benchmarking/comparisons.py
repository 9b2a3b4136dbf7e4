"""Ratios against the eager baseline (and the stock TorchServe path), and our targets judged on them.

The latency floor is never a constant: it comes from the read bandwidth and GEMM rate measured in the same run
(``convserve.benchmarking.floors``), and latencies are stated as multiples of it.
"""

from __future__ import annotations

from collections.abc import Callable

from convserve.benchmarking.results import BASELINE, BenchmarkResults, InProcessResult, Ratio, ServedResult, TargetCheck
from convserve.benchmarking.served import STOCK


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b not in (None, 0) else None


def model_memory_mb(r: InProcessResult) -> float | None:
    """What loading and running the model added to the process (peak minus the RSS before loading)."""
    if r.peak_rss_mb is None or r.rss_before_load_mb is None:
        return None
    return r.peak_rss_mb - r.rss_before_load_mb


INPROCESS_METRICS: dict[str, Callable[[InProcessResult], float | None]] = {
    "model_b1_p50_ms": lambda r: r.model_b1.p50_ms,
    "model_b1_p99_ms": lambda r: r.model_b1.p99_ms,
    "model_b1_cpu_ms": lambda r: r.model_b1_cpu_ms,
    "end_to_end_b1_p50_ms": lambda r: r.end_to_end_b1.p50_ms,
    "load_s": lambda r: r.load_s,
    "peak_rss_mb": lambda r: r.peak_rss_mb,
    "model_memory_mb": model_memory_mb,
    "anon_rss_mb": lambda r: r.anon_rss_mb,
}
SERVED_METRICS: dict[str, Callable[[ServedResult], float | None]] = {
    "c1_p50_ms": lambda r: r.latency_c1.latency.p50_ms,
    "c1_p99_ms": lambda r: r.latency_c1.latency.p99_ms,
    "c1_worker_cpu_ms": lambda r: r.worker_cpu_at(1),
    "cold_start_s": lambda r: r.cold_start_s,
    "worker_rss_mb": lambda r: r.worker_rss_mb,
    "worker_peak_rss_mb": lambda r: r.worker_peak_rss_mb,
    "worker_anon_mb": lambda r: r.worker_anon_mb,
}


def inprocess_ratios(results: list[InProcessResult]) -> list[Ratio]:
    base = next((r for r in results if r.backend == BASELINE), None)
    if base is None:
        return []
    out = []
    for r in results:
        metrics = dict(INPROCESS_METRICS)
        for point in r.throughput:
            size = point.batch_size
            metrics[f"throughput_b{size}_ips"] = lambda x, s=size: next(
                (p.images_per_s for p in x.throughput if p.batch_size == s), None
            )
        for metric, get in metrics.items():
            value = _ratio(get(r), get(base))
            if value is not None:
                out.append(Ratio(stage="inprocess", metric=metric, subject=r.backend, reference=BASELINE, value=value))
    return out


def served_ratios(results: list[ServedResult], reference_kind: str) -> list[Ratio]:
    """Each configuration against ``reference_kind`` with the same batching setting."""
    out = []
    for r in results:
        if r.kind == reference_kind:
            continue
        ref = next((x for x in results if x.kind == reference_kind and x.batching == r.batching), None)
        if ref is None:
            continue
        metrics = dict(SERVED_METRICS)
        for load in r.loads:
            metrics[f"throughput_c{load.concurrency}_rps"] = lambda x, c=load.concurrency: x.throughput_at(c)
        for metric, get in metrics.items():
            value = _ratio(get(r), get(ref))
            if value is not None:
                subject = f"{r.kind} ({r.batching.label})"
                reference = f"{reference_kind} ({ref.batching.label})"
                out.append(Ratio(stage="served", metric=metric, subject=subject, reference=reference, value=value))
    return out


def all_ratios(results: BenchmarkResults) -> list[Ratio]:
    ours = [r for r in results.served if r.kind != STOCK]
    return inprocess_ratios(results.inprocess) + served_ratios(ours, BASELINE) + served_ratios(results.served, STOCK)


def _check(name: str, target: str, measured: float | None, threshold: float, at_most: bool, detail: str) -> TargetCheck:
    met = None if measured is None else (measured <= threshold if at_most else measured >= threshold)
    return TargetCheck(name=name, target=target, measured=measured, threshold=threshold, met=met, detail=detail)


def _best(items: list, key: Callable, lowest: bool):
    scored = [(key(x), x) for x in items if key(x) is not None]
    if not scored:
        return None, None
    return (min if lowest else max)(scored, key=lambda t: t[0])


def _label(r: ServedResult) -> str:
    return f"{r.kind} ({r.batching.label})"


def served_targets(results: BenchmarkResults) -> list[TargetCheck]:
    ours = [r for r in results.served if r.kind != STOCK]
    stock = [r for r in results.served if r.kind == STOCK]
    top_c = max(results.settings.concurrencies)
    p50 = lambda r: r.latency_c1.latency.p50_ms  # noqa: E731
    rate = lambda r: r.throughput_at(top_c)  # noqa: E731
    our_p50, our_fast = _best(ours, p50, lowest=True)
    stock_p50, stock_fast = _best(stock, p50, lowest=True)
    our_rate, our_top = _best(ours, rate, lowest=False)
    stock_rate, stock_top = _best(stock, rate, lowest=False)
    checks = [
        _check(
            "served_p50_vs_stock",
            "our server at concurrency 1: p50 <= 0.5x the stock TorchServe path",
            _ratio(our_p50, stock_p50),
            0.5,
            True,
            f"best of ours {_label(our_fast)} {our_p50:.1f} ms vs best stock {_label(stock_fast)} {stock_p50:.1f} ms"
            if our_fast and stock_fast
            else "the stock reference or our server was not measured",
        ),
        _check(
            "served_throughput_vs_stock",
            f"our server at concurrency {top_c}: throughput >= 5x the stock TorchServe path",
            _ratio(our_rate, stock_rate),
            5.0,
            False,
            f"best of ours {_label(our_top)} {our_rate:.1f}/s vs best stock {_label(stock_top)} {stock_rate:.1f}/s"
            if our_top and stock_top
            else "the stock reference or our server was not measured",
        ),
    ]
    onnx = [r for r in ours if r.kind == "onnx"]
    eager = {r.batching: r for r in ours if r.kind == BASELINE}
    pairs = [(o, eager[o.batching]) for o in onnx if o.batching in eager]
    rss = [(_ratio(o.worker_rss_mb, e.worker_rss_mb), o, e) for o, e in pairs]
    rss = [t for t in rss if t[0] is not None]
    worst = max(rss, key=lambda t: t[0]) if rss else None
    checks.append(
        _check(
            "onnx_worker_rss_vs_eager",
            "ONNX worker RSS <= 0.7x eager worker RSS",
            worst[0] if worst else None,
            0.7,
            True,
            f"worst pair: onnx {worst[1].worker_rss_mb:.0f} MB vs eager {worst[2].worker_rss_mb:.0f} MB "
            f"({worst[1].batching.label})"
            if worst
            else "onnx and eager were not both served",
        )
    )
    return checks


def floor_multiples(results: BenchmarkResults) -> dict[str, float]:
    """Each backend's batch-1 model p50 as a multiple of its own measured floor (1.0: at the floor)."""
    if results.floors is None:
        return {}
    out = {}
    for r in results.inprocess:
        value = _ratio(r.model_b1.p50_ms, results.floors.backend_ms(r.backend))
        if value is not None:
            out[r.backend] = value
    return out


def _floor_target(results: BenchmarkResults) -> TargetCheck:
    floors = results.floors
    best, fastest = _best(results.inprocess, lambda r: r.model_b1.p50_ms, lowest=True)
    if floors is None:
        target = "best in-process backend at batch 1 within 1.3x of the fp32 weight-read floor (not measured)"
        return _check("best_b1_vs_weight_read_floor", target, None, 1.3, True, "the floors were not measured")
    floor = floors.fp32_read_ms
    target = (
        f"best in-process backend at batch 1 within 1.3x of the fp32 weight-read floor ({floor:.3g} ms: "
        f"{floors.weight_mb['fp32']:.3g} MB of fp32 weights at {floors.read_gbs:.2f} GB/s, measured in this run)"
    )
    if fastest is None:
        return _check("best_b1_vs_weight_read_floor", target, None, 1.3, True, "nothing measured")
    compute = floors.compute_ms.get("fp32")
    own = floors.backend_ms(fastest.backend)
    detail = f"{fastest.backend} p50 {best:.2f} ms = {best / floor:.2f}x the fp32 weight-read floor"
    if compute is not None:
        detail += (
            f"; fp32 compute floor {compute:.3g} ms ({floors.flops_per_image / 1e9:.3g} GFLOPs at "
            f"{floors.matmul_gflops['fp32']:.1f} GFLOP/s, measured in this run)"
        )
    if own is not None:
        detail += f"; {fastest.backend}'s own floor (its file read, compute at its precision) {own:.3g} ms: "
        detail += f"p50 = {best / own:.2f}x it"
    return _check("best_b1_vs_weight_read_floor", target, _ratio(best, floor), 1.3, True, detail)


def inprocess_targets(results: BenchmarkResults) -> list[TargetCheck]:
    onnx = next((r for r in results.inprocess if r.backend == "onnx"), None)
    eager = next((r for r in results.inprocess if r.backend == BASELINE), None)
    onnx_ratio = _ratio(onnx.model_b1.p50_ms, eager.model_b1.p50_ms) if onnx and eager else None
    return [
        _floor_target(results),
        _check(
            "onnx_b1_p50_vs_eager",
            f"ONNX Runtime p50 <= 0.6x eager (model latency, batch 1; our target is set for resnet18; this run: "
            f"{results.model.arch})",
            onnx_ratio,
            0.6,
            True,
            f"onnx {onnx.model_b1.p50_ms:.2f} ms vs eager {eager.model_b1.p50_ms:.2f} ms"
            if onnx_ratio is not None
            else "onnx and eager were not both measured",
        ),
    ]


def evaluate(results: BenchmarkResults) -> BenchmarkResults:
    """``results`` with ratios and target checks filled in from its measurements."""
    return results.model_copy(
        update={"ratios": all_ratios(results), "targets": inprocess_targets(results) + served_targets(results)}
    )
