"""The v2 (Open Inference Protocol) face of a convserve model, without kserve: tensor names, request bodies, answers.

One input ``images`` (BYTES, shape [N]: encoded image files); outputs ``labels`` (BYTES [N, k]) and
``probabilities`` (FP32 [N, k]), the most likely class first. A request body is either JSON with each image as
base64 text, or the binary data extension: JSON of ``Inference-Header-Content-Length`` bytes, then the tensor's
bytes (each element a 4-byte little-endian length and the file's bytes), as tritonclient sends it by default.
"""

from __future__ import annotations

import base64
import json
import struct

INPUT = "images"
LABELS = "labels"
PROBABILITIES = "probabilities"
BINARY_HEADER = "Inference-Header-Content-Length"
MAX_IMAGES = 64  # per request: a body of many tiny images must not become a multi-gigabyte batch tensor


def b64(data: bytes) -> str:
    """An image file as the base64 text a JSON request (v2 ``data``, v1 ``{"b64": ...}``) carries."""
    return base64.b64encode(data).decode("ascii")


def json_request(images: list[bytes]) -> dict:
    return {"inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [len(images)], "data": [b64(i) for i in images]}]}


def binary_request(images: list[bytes], header_length: int | None = None) -> tuple[bytes, dict[str, str]]:
    """Body and headers of a binary-extension request (outputs come back as JSON). ``header_length`` pads the JSON
    part with spaces to that many bytes, so that bodies of different images can share one header value (a load
    generator sends the same headers with every body)."""
    tensor = b"".join(struct.pack("<I", len(data)) + data for data in images)
    spec = {"name": INPUT, "datatype": "BYTES", "shape": [len(images)], "parameters": {"binary_data_size": len(tensor)}}
    head = json.dumps({"inputs": [spec]}).encode()
    if header_length is not None:
        if header_length < len(head):
            raise ValueError(f"the JSON part takes {len(head)} bytes, more than header_length={header_length}")
        head = head.ljust(header_length)
    headers = {"Content-Type": "application/octet-stream", BINARY_HEADER: str(len(head))}
    return head + tensor, headers


def answers(response: dict) -> list[dict[str, float]]:
    """A JSON v2 response as one ``{label: probability}`` per image, most likely first (TorchServe's answer)."""
    outputs = {o["name"]: o for o in response["outputs"]}
    labels, probs = outputs[LABELS], outputs[PROBABILITIES]
    rows, k = labels["shape"]
    return [
        dict(zip(labels["data"][r * k : (r + 1) * k], probs["data"][r * k : (r + 1) * k], strict=True))
        for r in range(rows)
    ]
