"""Eager model → ONNX file(s): fp32 (torch.onnx's dynamo exporter, or the legacy TorchScript-based one),
simplified with onnxslim, checked with onnx.checker; plus fp16 (GPU) and int8 (CPU) variants.

Why these choices (torch 2.14, onnxscript 0.7, onnxruntime 1.31):
- ``torch.onnx.export(..., dynamo=True)`` exports all our architectures with a symbolic batch axis
  (``torch.export.Dim``) and runs onnxscript's optimiser; ``--legacy`` keeps the TorchScript-based exporter
  (``dynamic_axes``) for models torch.export cannot trace.
- onnxslim then folds what is left (shape arithmetic, identity casts); the parity check runs on the file as
  written, so a simplification that changed numbers would fail the export rather than ship.
- fp16: the model is converted in torch (``.half()``) inside a wrapper that casts the float32 input and the
  logits, so the file takes and returns float32 like the fp32 one. (onnxruntime's own float16 converter
  writes an unsorted graph with ``keep_io_types`` that onnx.checker rejects.)
- int8: onnxruntime.quantization static QDQ, per-channel int8 weights, uint8 activations calibrated on
  training images (min-max), after ``quant_pre_process`` (shape inference + ORT's basic optimisation).
"""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path

import onnx
import torch

from convserve.common.errors import first_line

log = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
LEGACY_DEFAULT_OPSET = 17
MAX_DYNAMIC_BATCH = 4096


class ExportFailed(Exception):
    """torch or onnxruntime could not convert the model (an exporter limitation or our bug, not user input)."""


class _HalfPrecision(torch.nn.Module):
    """float32 in → the model in float16 → float32 logits out."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = copy.deepcopy(model).half().eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.half()).float()


def export_onnx(
    model: torch.nn.Module,
    input_size: int,
    path: Path,
    opset: int | None = None,
    batch: int | None = None,
    legacy: bool = False,
    fp16: bool = False,
) -> int:
    """Write ``path``; ``batch`` None means a dynamic batch axis. Returns the ONNX opset of the file."""
    module = _HalfPrecision(model) if fp16 else model.eval()
    example = torch.randn(batch or 2, 3, input_size, input_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter chatter (deprecations, "training mode" of the wrapper)
        try:
            if legacy:
                _export_legacy(module, example, path, opset, batch)
            else:
                _export_dynamo(module, example, path, opset, batch)
        except Exception as exc:  # the exporters raise many types; this is an exporter limit, not user input
            how = "legacy exporter" if legacy else "dynamo exporter (try --legacy)"
            raise ExportFailed(f"torch.onnx {how} failed: {first_line(exc)}") from exc
    simplify(path)
    check_onnx(path)
    return file_opset(path)


def _export_dynamo(module, example, path: Path, opset: int | None, batch: int | None) -> None:
    # positional (a tuple per argument), so the model's forward may name its input anything
    shapes = None if batch else ({0: torch.export.Dim("batch", min=1, max=MAX_DYNAMIC_BATCH)},)
    program = torch.onnx.export(
        module,
        (example,),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=shapes,
        opset_version=opset,
        dynamo=True,
        optimize=True,
        verbose=False,
    )
    program.save(str(path), external_data=False)


def _export_legacy(module, example, path: Path, opset: int | None, batch: int | None) -> None:
    axes = None if batch else {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    torch.onnx.export(
        module,
        (example,),
        str(path),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes=axes,
        opset_version=opset or LEGACY_DEFAULT_OPSET,
        dynamo=False,
    )


def simplify(path: Path) -> None:
    """onnxslim in place; the unsimplified file stays when slimming fails, breaks the checker, or onnxslim is not
    installed (a bare GPU image: the export extra brings it)."""
    try:
        import onnxslim
    except ImportError:
        log.warning("onnxslim is not installed; keeping the exporter's graph of %s (pip install onnxslim)", path.name)
        return
    try:
        slimmed = onnxslim.slim(onnx.load(str(path)))
        onnx.checker.check_model(slimmed, full_check=True)
    except Exception as exc:  # onnxslim is an optimisation: losing it is a warning, not a failed export
        log.warning("onnxslim could not simplify %s (%s); keeping the exporter's graph", path.name, first_line(exc))
        return
    onnx.save_model(slimmed, str(path))


def file_opset(path: Path) -> int:
    model = onnx.load(str(path), load_external_data=False)
    return next(op.version for op in model.opset_import if op.domain in ("", "ai.onnx"))


def check_onnx(path: Path) -> None:
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportFailed(f"onnx.checker rejects {path.name}: {first_line(exc)}") from None


def quantize_int8(fp32_path: Path, path: Path, calibration: torch.Tensor, batch: int = 32) -> None:
    """Static QDQ int8 of ``fp32_path`` calibrated on ``calibration`` (preprocessed training images)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            chunks = [calibration[i : i + batch] for i in range(0, len(calibration), batch)]
            self.feeds = iter([{INPUT_NAME: c.numpy()} for c in chunks])

        def get_next(self):
            return next(self.feeds, None)

    prepared = path.with_name(f".{path.name}.prep")
    try:
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=False)
        quantize_static(
            str(prepared),
            str(path),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    except Exception as exc:  # onnxruntime.quantization raises many types
        raise ExportFailed(f"onnxruntime int8 quantisation failed: {first_line(exc)}") from exc
    finally:
        prepared.unlink(missing_ok=True)
    check_onnx(path)
