"""What a model archive tells TorchServe (model-config.yaml) and our handler (its ``handler`` section).

One definition for both sides: the archive builder writes ``ArchiveSettings.model_config``; the handler reads
its section back with ``HandlerSettings``, whose defaults are the ones the builder would have written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class HandlerSettings(BaseModel):
    """The ``handler`` section of model-config.yaml."""

    model_config = ConfigDict(extra="forbid")

    artifact: str = Field("artifact", description="the artifact folder inside the model directory")
    backend: Literal["auto", "onnx", "torchscript", "eager", "onnx-fp16", "onnx-int8"] = Field(
        "auto", description="which model file of the artifact serves; auto: the first the card lists"
    )
    threads: int | None = Field(None, ge=1, description="intra-op threads; None: the worker's share of the CPUs")
    top_k: int = Field(5, ge=1, description="classes in each answer, most likely first")


@dataclass
class ArchiveSettings:
    # TorchServe's dynamic batching, chosen by measurement (docs/benchmarks, "Batching default";
    # benchmarking/choose_batching.py re-measures it): a batch waits at most 2 ms for company, so a lone request
    # pays ~2 ms, while under load the queue fills batches of up to 16 at once
    batch_size: int = 16
    max_batch_delay_ms: int = 2
    # None: not written into the archive, so TorchServe starts default_workers_per_model, which serve.py
    # derives from the CPUs of the machine that serves (not of the one that built the archive)
    min_workers: int | None = None
    max_workers: int | None = None
    response_timeout_s: int = 60
    startup_timeout_s: int = 180
    handler: HandlerSettings = field(default_factory=HandlerSettings)

    def model_config(self, backend: str) -> dict:
        handler = self.handler.model_copy(update={"backend": backend}).model_dump(exclude_none=True)
        workers = {"minWorkers": self.min_workers, "maxWorkers": self.max_workers}
        return {
            **{key: value for key, value in workers.items() if value is not None},
            "batchSize": self.batch_size,
            "maxBatchDelay": self.max_batch_delay_ms,
            "responseTimeout": self.response_timeout_s,
            "startupTimeout": self.startup_timeout_s,
            "handler": handler,
        }
