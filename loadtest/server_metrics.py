"""TorchServe's own account of a load run: its Prometheus counters read before and after, as a per-request split.

TorchServe 0.12 (``metrics_mode=prometheus``, serving/config.properties) counts, per model and per request:

- ``ts_inference_requests_total``: requests answered;
- ``ts_queue_latency_microseconds``: time from the frontend receiving a request to a worker taking it (this
  includes waiting for a dynamic batch to fill, up to ``maxBatchDelay``);
- ``ts_inference_latency_microseconds``: time from receiving a request to its answer, queue included.

So over a run, per answered request: ``server_queue_ms`` = Δqueue / Δrequests, and ``server_compute_ms`` =
(Δinference − Δqueue) / Δrequests, the time a worker held it (handler plus the frontend↔worker transfer).
Its other model metrics (``HandlerTime``, ``PredictionTime``) are gauges holding the last batch only, so they
cannot be averaged over a run and are not used. The page is parsed with prometheus_client's parser.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, ConfigDict

from convserve.common.errors import ConvserveError

if TYPE_CHECKING:  # the load generator reads pages, not /proc: it need not import the process helpers
    from convserve.loadtest.recorded_server import RecordedServer

DEFAULT_METRICS_PORT = 8082
REQUESTS = "ts_inference_requests"  # family names as the parser gives them (the "_total" suffix goes)
QUEUE_US = "ts_queue_latency_microseconds"
INFERENCE_US = "ts_inference_latency_microseconds"
# /predictions/NAME[/VERSION] (TorchServe), /v1/models/NAME:predict and /v2/models/NAME/infer (KServe)
_MODEL_IN_PATH = re.compile(r"/(?:predictions|v1/models|v2/models)/([^/:]+)")


@dataclass(frozen=True)
class ServerCounters:
    """One reading of the three counters for one model (or summed over all models when none is named)."""

    requests: float
    queue_us: float
    inference_us: float


class ServerSplit(BaseModel):
    """Per answered request, over one run: time queued in the frontend and time a worker held it (ms)."""

    model_config = ConfigDict(extra="forbid")

    requests: int  # answered by the server between the two readings (warm-up requests included)
    server_queue_ms: float
    server_compute_ms: float


def model_from_url(url: str) -> str | None:
    """The model a prediction URL names (``/predictions/alexnet`` → ``alexnet``), or None."""
    match = _MODEL_IN_PATH.search(urlsplit(url).path)
    return match.group(1) if match else None


def default_metrics_url(url: str, port: int = DEFAULT_METRICS_PORT) -> str:
    """The metrics page beside a prediction URL: same scheme and host, TorchServe's metrics port."""
    parts = urlsplit(url)
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
    return urlunsplit((parts.scheme, f"{host}:{port}", "/metrics", "", ""))


def recorded_metrics_url(server: RecordedServer) -> str:
    """The metrics page of a server serve.py started (its run folder's config.properties); a wildcard bind is
    reached on loopback."""
    address = server.addresses.get("metrics_address")
    if not address:
        raise ConvserveError(f"{server.run_dir / 'config.properties'} names no metrics_address")
    parts = urlsplit(address)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(parts.hostname or "", parts.hostname or "")
    host = f"[{host}]" if ":" in host else host
    return urlunsplit((parts.scheme, f"{host}:{parts.port or DEFAULT_METRICS_PORT}", "/metrics", "", ""))


def parse_counters(text: str, model: str | None = None) -> ServerCounters | None:
    """The counters of ``model`` (all models summed when None) from a Prometheus text page; None when the page
    has no such samples (not TorchServe, or the model never answered yet and is not listed)."""
    totals = {REQUESTS: 0.0, QUEUE_US: 0.0, INFERENCE_US: 0.0}
    seen = False
    for family in text_string_to_metric_families(text):
        if family.name not in totals:
            continue
        for sample in family.samples:
            if model is None or sample.labels.get("model_name") == model:
                totals[family.name] += sample.value
                seen = True
    return ServerCounters(totals[REQUESTS], totals[QUEUE_US], totals[INFERENCE_US]) if seen else None


def split(before: ServerCounters | None, after: ServerCounters | None) -> ServerSplit | None:
    """The per-request split between two readings; None without both or when no request was answered between.
    A model that had answered nothing before the run is absent from the page: it counts from zero."""
    if after is None:
        return None
    before = before or ServerCounters(0.0, 0.0, 0.0)
    requests = after.requests - before.requests
    if requests <= 0:
        return None
    queue = (after.queue_us - before.queue_us) / requests / 1000.0
    total = (after.inference_us - before.inference_us) / requests / 1000.0
    return ServerSplit(requests=round(requests), server_queue_ms=queue, server_compute_ms=max(total - queue, 0.0))


async def scrape(session: aiohttp.ClientSession, metrics_url: str, model: str | None) -> ServerCounters | None:
    """Read the page once; raises aiohttp/OS errors and ValueError (a page that is not Prometheus text)."""
    async with session.get(metrics_url, timeout=aiohttp.ClientTimeout(total=10.0)) as resp:
        resp.raise_for_status()
        text = await resp.text()
    return parse_counters(text, model)
