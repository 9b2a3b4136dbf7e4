"""The runtimes that run an artifact's model files, with the settings serving uses: serving loads every exported
file through these, and export's parity check measures each file through the same ones, so what was checked is
what is served. A backend maps a float32 (N, 3, S, S) batch to (N, classes) float32 logits.

- ``OnnxBackend``: ONNX Runtime; CUDA provider when a GPU is visible and asked for, else CPU. The input
  name and dtype are read from the session (exporters name inputs differently; fp16 models take float16).
- ``TorchScriptBackend``: ``torch.jit.load`` of model.ts.pt.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from convserve.common.errors import ConvserveError, first_line
from convserve.common.host_memory import trim_heap
from convserve.hardware.cpu_share import default_threads


class Backend(Protocol):
    name: str
    device: str
    runtime: str  # the runtime and the settings it runs with, as parity reports and the card record them

    def __call__(self, batch: torch.Tensor) -> torch.Tensor: ...


class OnnxBackend:
    name = "onnx"

    def __init__(self, path: Path, device: str = "cpu", threads: int | None = None):
        import onnxruntime as ort

        threads = threads or default_threads()
        options = ort.SessionOptions()
        options.log_severity_level = 3  # warnings such as unused initialisers are not the user's concern
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning pool threads burn the cores that decode, preprocessing and TorchServe's frontend need
        # between calls (docs/benchmarks: what turning it off did to the served p50).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        # No CPU arena: it keeps the largest batch's activations for good, and without it batches 1 and 8
        # measured no slower (docs/benchmarks, the ORT CPU arena).
        options.enable_cpu_mem_arena = False
        providers: list = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            index = int(device.split(":")[1]) if ":" in device else 0
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": index}))
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
            raise ConvserveError(f"ONNX Runtime cannot load {path}: {first_line(exc)}") from None
        trim_heap()  # parsing the model file left its bytes as free heap: return them to the OS
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        self.input_dtype = np.float16 if first.type == "tensor(float16)" else np.float32
        provider = self.session.get_providers()[0]
        self.device = "cuda" if provider == "CUDAExecutionProvider" else "cpu"
        self.runtime = (
            f"onnxruntime {ort.__version__} {provider}, {threads} intra-op threads, spinning off, "
            "CPU arena off, ORT_ENABLE_ALL"
        )

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        feed = batch.detach().cpu().numpy().astype(self.input_dtype, copy=False)
        (logits,) = self.session.run(None, {self.input_name: feed})[:1]
        return torch.from_numpy(np.asarray(logits, dtype=np.float32))


class TorchModuleBackend:
    name = "torch"

    def __init__(self, model: torch.nn.Module, device: str, threads: int | None):
        threads = threads or default_threads()
        torch.set_num_threads(threads)
        self.device = device
        self.model = model.to(device).eval()
        self.runtime = f"torch {torch.__version__} {self.name} on {device}, {threads} intra-op threads"

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model(batch.to(self.device)).float().cpu()


class TorchScriptBackend(TorchModuleBackend):
    name = "torchscript"

    def __init__(self, path: Path, device: str = "cpu", threads: int | None = None):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated; TorchServe 0.12 loads it
                model = torch.jit.load(str(path), map_location=device)
        except (RuntimeError, ValueError, OSError) as exc:
            raise ConvserveError(f"cannot load TorchScript model {path}: {first_line(exc)}") from None
        super().__init__(model, device, threads)
