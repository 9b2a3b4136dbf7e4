"""Which batching setting to ship: the same ONNX artifact archived once per candidate setting, every archive served
side by side by one TorchServe (one worker each), or one v2 server per setting, latency at concurrency 1 and
throughput at concurrency 16 measured in short turns, and our rule applied to the figures.

TorchServe's batch aggregator waits up to maxBatchDelay for batchSize requests. Under light load the batch never
fills, so every request waits the whole delay; under heavy load the queue fills a batch at once and the delay
costs nothing. The default must therefore keep concurrency-1 latency close to no batching AND keep most of the
throughput the best setting reaches at concurrency 16.

Turns, not one long run per setting: on a machine others share, the load they add changes over minutes. Every
round measures every setting once (a short c1 run, then a short c16 run), in alternating order, so each setting
sees the same mixture of quiet and busy moments; the figures are medians (latency) and totals (throughput) over
the rounds.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from convserve.benchmarking.results import Batching
from convserve.benchmarking.served import ServedPlan, build, default_batching
from convserve.loadtest.loadgen import LoadPlan, LoadResult, Payload, run_load_sync
from convserve.serving.kserve_process import KServeProcess, V2ServerSettings
from convserve.serving.server_lifecycle import free_port
from convserve.serving.torchserve_process import ServerSettings, TorchServeProcess

# our rule for the default: c1 p50 within this multiple of no batching ...
LATENCY_LIMIT = 1.15
# ... and c16 throughput within this share of the best setting measured
THROUGHPUT_SHARE = 0.90
NO_BATCHING = Batching(batch_size=1, max_batch_delay_ms=0)
CANDIDATES = (
    NO_BATCHING,
    Batching(batch_size=4, max_batch_delay_ms=50),  # convserve's default before this sweep
    Batching(batch_size=4, max_batch_delay_ms=1),
    Batching(batch_size=4, max_batch_delay_ms=2),
    Batching(batch_size=4, max_batch_delay_ms=5),
    Batching(batch_size=8, max_batch_delay_ms=1),
    Batching(batch_size=8, max_batch_delay_ms=2),
    Batching(batch_size=8, max_batch_delay_ms=5),
    Batching(batch_size=8, max_batch_delay_ms=10),
    Batching(batch_size=16, max_batch_delay_ms=2),
)


@dataclass
class SweepPlan:
    artifact: Path
    payloads: list[Payload]
    work_dir: Path
    candidates: list[Batching] = field(default_factory=lambda: list(CANDIDATES))
    high_concurrency: int = 16
    latency_requests: int = 40  # per round, at concurrency 1
    load_duration_s: float = 5.0  # per round, at the high concurrency
    rounds: int = 8
    startup_timeout_s: float = 900.0  # one worker per candidate loads the model


@dataclass
class SweepRow:
    batching: Batching
    c1_p50_ms: float  # median over the rounds of each round's p50
    high_rps: float  # 2xx answers over the rounds / their seconds
    high_p50_ms: float  # median over the rounds
    errors: int
    batch_sizes: dict[str, int]  # X-Convserve-Batch-Size at the high concurrency, all rounds
    latency_ratio: float = float("nan")  # c1 p50 / no batching's
    throughput_share: float = float("nan")  # high req/s / the best setting's

    @property
    def meets_rule(self) -> bool:
        return self.latency_ratio <= LATENCY_LIMIT and self.throughput_share >= THROUGHPUT_SHARE


def _row(batching: Batching, c1: list[LoadResult], high: list[LoadResult]) -> SweepRow:
    sizes: Counter = Counter()
    for r in high:
        sizes.update(r.batch_sizes)
    return SweepRow(
        batching=batching,
        c1_p50_ms=statistics.median(r.latency.p50_ms or float("nan") for r in c1),
        high_rps=sum(r.ok for r in high) / max(sum(r.elapsed_s for r in high), 1e-9),
        high_p50_ms=statistics.median(r.latency.p50_ms or float("nan") for r in high),
        errors=sum(r.error_count + r.unfinished for r in c1 + high),
        batch_sizes=dict(sorted(sizes.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else 0)),
    )


def _turn(plan: SweepPlan, url: str) -> tuple[LoadResult, LoadResult]:
    """One setting's turn: concurrency 1 bounded by count, then the high concurrency bounded by time."""
    c1 = LoadPlan(url, plan.payloads, 1, requests=plan.latency_requests, warmup=2, timeout_s=120.0)
    c1.max_duration_s = plan.latency_requests * 5.0 + 120.0
    high = LoadPlan(url, plan.payloads, plan.high_concurrency, duration_s=plan.load_duration_s, timeout_s=120.0)
    high.warmup, high.max_duration_s = plan.high_concurrency, plan.load_duration_s + 240.0
    return run_load_sync(c1), run_load_sync(high)


def sweep(plan: SweepPlan, server: str = "torchserve", say: Callable[[str], None] = print) -> list[SweepRow]:
    """Serve the artifact with every candidate at once (TorchServe: one model each; the v2 server: one server
    each) and measure them in turns."""
    candidates = list(dict.fromkeys([NO_BATCHING, *plan.candidates]))  # the ratios need no batching
    serve = _torchserve_urls if server == "torchserve" else _v2_urls
    with ExitStack() as stack:
        urls = serve(plan, candidates, stack, say)
        c1, high = _rounds(plan, candidates, urls, say)
    return judge([_row(b, c1[b], high[b]) for b in candidates])


def _rounds(plan: SweepPlan, candidates: list[Batching], urls: dict[Batching, str], say) -> tuple[dict, dict]:
    c1: dict[Batching, list[LoadResult]] = {b: [] for b in candidates}
    high: dict[Batching, list[LoadResult]] = {b: [] for b in candidates}
    for round_no in range(plan.rounds):
        order = candidates if round_no % 2 == 0 else candidates[::-1]
        for b in order:
            low, busy = _turn(plan, urls[b])
            c1[b].append(low)
            high[b].append(busy)
        say(f"round {round_no + 1} of {plan.rounds} done")
    return c1, high


def _torchserve_urls(plan: SweepPlan, candidates: list[Batching], stack: ExitStack, say) -> dict[Batching, str]:
    store = plan.work_dir / "model_store"
    served = ServedPlan(artifact=plan.artifact, payloads=plan.payloads, work_dir=plan.work_dir, workers=1)
    archives = {b: build(served, "onnx", b, store) for b in candidates}
    settings = ServerSettings(
        model_store=store,
        models={a.stem: a.name for a in archives.values()},
        port=free_port(),
        management_port=free_port(),
        metrics_port=free_port(),
        run_dir=plan.work_dir / "servers" / "batching",
        startup_timeout=plan.startup_timeout_s,
    )
    say(f"starting TorchServe with {len(candidates)} models (one per batching setting)")
    server = stack.enter_context(TorchServeProcess(settings))
    return {b: server.predictions_url(archives[b].stem) for b in candidates}


def _v2_urls(plan: SweepPlan, candidates: list[Batching], stack: ExitStack, say) -> dict[Batching, str]:
    say(f"starting {len(candidates)} v2 servers (one per batching setting, each with its default workers)")
    urls = {}
    for b in candidates:
        settings = V2ServerSettings(
            artifact=plan.artifact, model_name="model", port=free_port(), backend="onnx",
            batch_size=b.batch_size, max_batch_delay_ms=b.max_batch_delay_ms,
        )  # fmt: skip
        run_dir = plan.work_dir / "servers" / f"v2-b{b.batch_size}-{b.max_batch_delay_ms}ms"
        server = stack.enter_context(KServeProcess(settings, run_dir, startup_timeout=plan.startup_timeout_s))
        urls[b] = f"{server.url}/predictions/model"
    return urls


def judge(rows: list[SweepRow]) -> list[SweepRow]:
    """Fill in each row's ratios against no batching (latency) and the best setting (throughput)."""
    off = next(r for r in rows if r.batching == NO_BATCHING)
    best = max(r.high_rps for r in rows)
    for r in rows:
        r.latency_ratio = r.c1_p50_ms / off.c1_p50_ms
        r.throughput_share = r.high_rps / best
    return rows


def pick(rows: list[SweepRow]) -> SweepRow | None:
    """The setting that meets the rule with the most throughput (None when none does)."""
    passing = [r for r in rows if r.meets_rule]
    return max(passing, key=lambda r: r.high_rps) if passing else None


def table_lines(rows: list[SweepRow], high: int) -> list[str]:
    default = default_batching()
    lines = [
        f"| batching | c1 p50 ms | vs no batching | c{high} req/s | vs best | c{high} p50 ms | errors | "
        f"batch sizes at c{high} | meets rule |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        label = r.batching.label + (" **(default)**" if r.batching == default else "")
        sizes = ", ".join(f"{k}×{v}" for k, v in r.batch_sizes.items()) or "–"
        lines.append(
            f"| {label} | {r.c1_p50_ms:.1f} | {r.latency_ratio:.2f}x | {r.high_rps:.1f} | {r.throughput_share:.0%} | "
            f"{r.high_p50_ms:.1f} | {r.errors} | {sizes} | {'yes' if r.meets_rule else 'no'} |"
        )
    return lines


def verdict_lines(rows: list[SweepRow], high: int) -> list[str]:
    rule = f"c1 p50 <= {LATENCY_LIMIT:g}x no batching and c{high} throughput >= {THROUGHPUT_SHARE:.0%} of the best"
    chosen = pick(rows)
    default = default_batching()
    current = next((r for r in rows if r.batching == default), None)
    lines = [f"rule: {rule}"]
    lines.append(f"best setting by the rule here: {chosen.batching.label}" if chosen else "no setting meets the rule")
    if current is None:
        lines.append(f"the default ({default.label}) was not among the settings measured")
    else:
        verdict = "meets" if current.meets_rule else "MISSES"
        lines.append(
            f"the default ({default.label}) {verdict} the rule here: c1 p50 {current.latency_ratio:.2f}x no "
            f"batching, throughput {current.throughput_share:.0%} of the best"
        )
    return lines
