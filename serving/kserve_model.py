"""An artifact's Classifier as a KServe model: Open Inference Protocol (v2) and KServe v1 requests in, top-k out.

v2 (``POST /v2/models/{name}/infer``): one input ``images``, datatype BYTES, shape [N], each element one encoded
image file, either raw bytes (the binary tensor data extension, what tritonclient sends by default) or base64
text in the JSON ``data`` list (a JSON string cannot carry raw bytes). Outputs ``labels`` (BYTES [N, k]) and
``probabilities`` (FP32 [N, k]), the most likely class first in every row.
v1 (``POST /v1/models/{name}:predict``): ``{"instances": [{"b64": "<base64>"}, ...]}`` answered with
``{"predictions": [{label: probability, ...}, ...]}``, TorchServe's answer per image.

A request with a bad element fails as a whole with that element's InputError (4xx, naming the element); other
requests are not affected. Decoding runs on a thread of its own and inference on another, batched across
concurrent requests (serving/dynamic_batching.py), so the event loop keeps answering health checks and reading
requests while a batch computes.
"""

from __future__ import annotations

import asyncio
import json
import struct
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from kserve import InferInput, InferOutput, InferRequest, InferResponse, Model
from kserve.protocol.infer_type import deserialize_bytes_tensor

from convserve.artifact.card import read_card
from convserve.common.errors import InputError
from convserve.serving.backends import pick_model_file, share_cores
from convserve.serving.classifier import TOP_K, Classifier
from convserve.serving.dynamic_batching import DynamicBatcher
from convserve.serving.payload import decode_base64, image_bytes
from convserve.serving.v2_protocol import INPUT, LABELS, MAX_IMAGES, PROBABILITIES

HOW_TO = f'send one BYTES input "{INPUT}" of shape [N], encoded image files: raw (binary extension) or base64 (JSON)'


@dataclass
class Decoded:
    """What preprocess hands to predict: the decoded images and which protocol answers them."""

    protocol: str  # "v2" | "v1"
    images: list[torch.Tensor]
    request: InferRequest | None = None


@dataclass
class Answers:
    protocol: str
    rows: list[dict[str, float]]
    request: InferRequest | None = None


class ClassifierModel(Model):
    """``ClassifierModel("digits", "artifacts/digits")``; ``load()`` reads the model file (seconds)."""

    def __init__(
        self,
        name: str,
        artifact: Path | str,
        backend: str = "auto",
        threads: int | None = None,
        top_k: int = TOP_K,
        device: str = "auto",
        batch_size: int = 1,
        max_batch_delay_ms: float = 0.0,
    ):
        super().__init__(name)
        self.artifact = Path(artifact)
        self.card = read_card(self.artifact)  # a folder that is no artifact fails here, before any port opens
        pick_model_file(self.card, backend)
        self.backend = backend
        self.device = device
        self.threads = threads
        self.top_k = max(1, min(top_k, self.card.num_classes))  # as Classifier keeps it; known before load
        self.classifier: Classifier | None = None
        # one thread decodes requests, another runs the backend: a request's decoding overlaps a batch's inference
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"convserve-{name}-decode")
        self._inference = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"convserve-{name}-infer")
        self.batcher = DynamicBatcher(self._classify, self._inference, batch_size, max_batch_delay_ms / 1000.0, name)

    def load(self) -> bool:
        classifier = Classifier.from_artifact(self.artifact, self.backend, self.device, self.threads, self.top_k)
        share_cores(classifier.backend)
        self.classifier = classifier
        self.ready = True
        return self.ready

    # metadata -------------------------------------------------------------------------------------------------
    def get_input_types(self) -> list[dict]:
        return [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}]

    def get_output_types(self) -> list[dict]:
        return [
            {"name": LABELS, "datatype": "BYTES", "shape": [-1, self.top_k]},
            {"name": PROBABILITIES, "datatype": "FP32", "shape": [-1, self.top_k]},
        ]

    # preprocess → predict → postprocess (KServe times each stage into its Prometheus histograms) ---------------
    def validate(self, payload: Any) -> Any:
        return payload  # checked by preprocess, which knows the tensor this model takes

    async def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> Decoded:
        if isinstance(payload, InferRequest):
            protocol, where, encoded = "v2", INPUT, request_images(payload)
        else:
            protocol, where, encoded = "v1", "instances", instance_images(payload)
        images = await self._in_thread(self._decode_all, encoded, where)
        return Decoded(protocol, images, payload if protocol == "v2" else None)

    async def predict(self, payload: Decoded, headers: dict[str, str] | None = None) -> Answers:
        rows = await self.batcher.classify(payload.images)
        return Answers(payload.protocol, rows, payload.request)

    async def classify_one(self, data: bytes) -> tuple[dict[str, float], int]:
        """One encoded image -> its top-k row and the size of the batch that computed it, through the same decoding
        and batching (TorchServe's route)."""
        image = await self._in_thread(self.classifier.decode, data)
        (row,), batch = await self.batcher.classify_counted([image])
        return row, batch

    def _classify(self, images: list[torch.Tensor]) -> list[dict[str, float]]:
        return self.classifier.classify(images)

    async def postprocess(self, result: Answers, headers: dict[str, str] | None = None) -> InferResponse | dict:
        if result.protocol == "v1":
            return {"predictions": result.rows}
        return v2_response(self.name, result.rows, result.request)

    def _decode_all(self, encoded: list[bytes], where: str) -> list[torch.Tensor]:
        images = []
        for index, data in enumerate(encoded):
            try:
                images.append(self.classifier.decode(data))
            except InputError as exc:
                raise InputError(f"{where}[{index}]: {exc.message}", exc.status) from None
        return images

    async def _in_thread(self, work: Callable, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, work, *args)

    def stop(self) -> None:
        self.batcher.stop()
        for pool in (self._thread, self._inference):
            pool.shutdown(wait=False, cancel_futures=True)
        super().stop()


def request_images(request: InferRequest) -> list[bytes]:
    """The encoded images of a v2 request, or the InputError (400/413) saying what is wrong with its tensor."""
    if len(request.inputs) != 1 or request.inputs[0].name != INPUT:
        names = ", ".join(repr(i.name) for i in request.inputs) or "none"
        raise InputError(f"expected one input {INPUT!r}, got {names}: {HOW_TO}")
    tensor = request.inputs[0]
    if tensor.datatype != "BYTES":
        raise InputError(f"input {INPUT!r} has datatype {tensor.datatype}: {HOW_TO}")
    shape = tensor.shape
    if not isinstance(shape, list) or not all(isinstance(d, int) for d in shape):
        raise InputError(f"input {INPUT!r} has shape {shape!r}: {HOW_TO}")
    if len(shape) != 1:
        raise InputError(f"input {INPUT!r} has shape {shape}: {HOW_TO}")
    if shape[0] < 1:
        raise InputError(f"input {INPUT!r} holds no image (shape {shape})")
    if shape[0] > MAX_IMAGES:
        raise InputError(f"{shape[0]} images in one request, over the limit of {MAX_IMAGES}", 413)
    elements = _elements(tensor)
    if len(elements) != shape[0]:
        raise InputError(f"input {INPUT!r} has shape {shape} but {len(elements)} elements")
    return [_element_bytes(value, f"{INPUT}[{i}]") for i, value in enumerate(elements)]


def _elements(tensor: InferInput) -> list:
    """The tensor's elements in order: raw bytes (binary extension) or what the JSON ``data`` list holds."""
    if tensor._raw_data is not None:  # kserve keeps binary tensor data there; InferInput has no public getter
        try:
            return list(deserialize_bytes_tensor(tensor._raw_data))
        except struct.error:
            raise InputError(
                f"input {INPUT!r}: binary data is not a BYTES tensor (each element: a 4-byte little-endian "
                "length, then its bytes)"
            ) from None
    return list(_flatten(tensor.data or []))


def _flatten(data: list) -> Iterator:
    for value in data:
        if isinstance(value, list):
            yield from _flatten(value)
        else:
            yield value


def _element_bytes(value: Any, where: str) -> bytes:
    if isinstance(value, bytes | bytearray):
        if not value:
            raise InputError(f"{where} is empty: no image bytes")
        return bytes(value)
    if isinstance(value, str):
        return decode_base64(value, where)
    raise InputError(f"{where} is {type(value).__name__}, not base64 text: send each image file as base64 in JSON")


def instance_images(body: Any) -> list[bytes]:
    """The encoded images of a v1 body ``{"instances": [{"b64": ...}, ...]}``."""
    if isinstance(body, bytes | bytearray):  # KServe parses only JSON content types; curl -d sends a form type
        try:
            body = json.loads(body)
        except ValueError:
            raise InputError('a v1 body is JSON: {"instances": [{"b64": "<base64 image>"}, ...]}') from None
    instances = body.get("instances") if isinstance(body, dict) else None
    if not isinstance(instances, list) or not instances:
        raise InputError('expected {"instances": [{"b64": "<base64 image>"}, ...]} with at least one instance')
    if len(instances) > MAX_IMAGES:
        raise InputError(f"{len(instances)} images in one request, over the limit of {MAX_IMAGES}", 413)
    out = []
    for index, instance in enumerate(instances):
        if not isinstance(instance, dict):
            raise InputError(f'instances[{index}] must be an object {{"b64": "<base64 image>"}}')
        try:
            out.append(image_bytes(instance))
        except InputError as exc:
            raise InputError(f"instances[{index}]: {exc.message}", exc.status) from None
    return out


def v2_response(model_name: str, rows: list[dict[str, float]], request: InferRequest) -> InferResponse:
    labels = np.array([list(row) for row in rows], dtype=object)
    probabilities = np.array([list(row.values()) for row in rows], dtype=np.float32)
    outputs = [
        InferOutput(LABELS, list(labels.shape), "BYTES", labels),
        InferOutput(PROBABILITIES, list(probabilities.shape), "FP32", probabilities),
    ]
    if request.from_grpc:  # KServe 0.21's to_grpc() tests an array's truth (ValueError): hand it raw bytes
        for output, array in zip(outputs, (labels, probabilities), strict=True):
            output.set_data_from_numpy(array, binary_data=True)
    return InferResponse(
        request.id or str(uuid.uuid4()),  # the response model requires one; the protocol echoes the request's
        model_name,
        outputs,
        use_binary_outputs=request.use_binary_outputs,
        requested_outputs=request.request_outputs,
    )
