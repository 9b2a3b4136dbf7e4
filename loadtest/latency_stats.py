"""Latency samples → the summary every table and JSON file uses (milliseconds, linear-interpolated percentiles)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator


class LatencyStats(BaseModel):
    model_config = ConfigDict(extra="forbid")

    count: int = Field(ge=0)
    mean_ms: float | None = None
    min_ms: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> LatencyStats:
        """A summary whose percentiles are out of order is a bug of ours: refuse to write it."""
        values = [self.min_ms, self.p50_ms, self.p90_ms, self.p95_ms, self.p99_ms, self.max_ms]
        present = [v for v in values if v is not None]
        if self.count and len(present) != len(values):
            raise ValueError("latency stats with samples need every percentile")
        if any(b < a - 1e-9 for a, b in zip(present, present[1:], strict=False)):
            raise ValueError(f"latency percentiles out of order: {present}")
        return self

    @classmethod
    def from_seconds(cls, samples: Sequence[float]) -> LatencyStats:
        """Summary of durations given in seconds (an empty list gives count 0 and no figures)."""
        if len(samples) == 0:
            return cls(count=0)
        ms = np.asarray(samples, dtype=np.float64) * 1000.0
        p50, p90, p95, p99 = np.percentile(ms, [50, 90, 95, 99])
        return cls(
            count=len(ms),
            mean_ms=float(ms.mean()),
            min_ms=float(ms.min()),
            p50_ms=float(p50),
            p90_ms=float(p90),
            p95_ms=float(p95),
            p99_ms=float(p99),
            max_ms=float(ms.max()),
        )
