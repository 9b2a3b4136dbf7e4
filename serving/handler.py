"""TorchServe adapter (the only TorchServe-facing code): requests in, one answer per request out.

A batch of N requests (dynamic batching) gets N independent answers: a bad image gets its own 4xx JSON
error ``{"error": ..., "code": ...}`` while the good ones in the same batch are classified together.
Good answers: ``{label: probability}``, top-5 by softmax probability, descending. Every answer carries the
header X-Convserve-Batch-Size: how many requests were in its batch.

Settings come from the archive's model-config.yaml, section ``handler`` (``HandlerSettings`` in
serving/archive_settings.py: the model the archive builder writes it from).
TorchServe loads the one class of this module, so it holds exactly one class.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from convserve.common.errors import InputError
from convserve.hardware.cpu_share import default_threads, default_workers
from convserve.serving.archive_settings import HandlerSettings
from convserve.serving.backends import share_cores
from convserve.serving.classifier import Classifier
from convserve.serving.http_headers import BATCH_HEADER
from convserve.serving.payload import image_bytes

log = logging.getLogger(__name__)


class ConvserveHandler:
    def __init__(self) -> None:
        self.classifier: Classifier | None = None
        self.initialized = False

    def initialize(self, context: Any) -> None:
        props = context.system_properties
        model_config = getattr(context, "model_yaml_config", None) or {}
        settings = HandlerSettings.model_validate(model_config.get("handler") or {})
        # workers of one model share the machine: split its CPUs between them unless told otherwise
        workers = int(model_config.get("maxWorkers") or default_workers())  # none named: as serve.py chose
        threads = settings.threads or default_threads(workers=workers)
        gpu = props.get("gpu_id")
        device = f"cuda:{gpu}" if gpu is not None and torch.cuda.is_available() else "cpu"
        self.classifier = Classifier.from_artifact(
            Path(props["model_dir"]) / settings.artifact,
            backend=settings.backend,
            device=device,
            threads=threads,
            top_k=settings.top_k,
        )
        backend = self.classifier.backend
        share_cores(backend)
        log.info("convserve: %s backend on %s, %d threads", backend.name, backend.device, threads)
        self.initialized = True

    def preprocess(self, data: list[dict]) -> tuple[list[torch.Tensor], list[InputError | None]]:
        """Decode each request on its own; a bad one becomes its error, the rest carry on."""
        images, errors = [], []
        for request in data:
            try:
                images.append(self.classifier.decode(image_bytes(request)))
                errors.append(None)
            except InputError as exc:
                errors.append(exc)
        return images, errors

    def inference(self, images: list[torch.Tensor]) -> list[dict[str, float]]:
        return self.classifier.classify(images)

    def postprocess(self, answers: list[dict], errors: list[InputError | None], context: Any) -> list[dict]:
        """Interleave answers and errors back into request order, setting each request's status."""
        pending = iter(answers)
        out = []
        for idx, error in enumerate(errors):
            context.set_response_content_type(idx, "application/json")
            # how many requests TorchServe batched with this one: load tests read dynamic batching from it
            context.set_response_header(idx, BATCH_HEADER, str(len(errors)))
            if error is None:
                out.append(next(pending))
            else:
                context.set_response_status(error.status, error.reason, idx=idx)
                out.append(error.to_json())
        return out

    def handle(self, data: list[dict], context: Any) -> list[dict]:
        images, errors = self.preprocess(data)
        return self.postprocess(self.inference(images), errors, context)
