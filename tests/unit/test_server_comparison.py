"""The side-by-side benchmark's request bodies: every v2 body shares one Inference-Header-Content-Length (a load
generator sends one set of headers) and still parses as the binary data extension says."""

from __future__ import annotations

import json
import struct

import pytest

from convserve.benchmarking.server_comparison import ComparisonPlan, v2_payloads
from convserve.serving.v2_protocol import BINARY_HEADER, INPUT, binary_request


def test_v2_bodies_of_different_images_share_one_header_and_parse(tmp_path):
    images = [("a.jpg", b"\xff\xd8" + b"a" * 7, "image/jpeg"), ("b.png", b"\x89PNG" + b"b" * 12345, "image/png")]
    payloads, headers = v2_payloads(ComparisonPlan(artifact=tmp_path, images=images, work_dir=tmp_path))
    length = int(headers[BINARY_HEADER])
    for payload, (_, data, _) in zip(payloads, images, strict=True):
        head = json.loads(payload.data[:length])  # spaces after the JSON are allowed
        (spec,) = head["inputs"]
        assert (spec["name"], spec["datatype"], spec["shape"]) == (INPUT, "BYTES", [1])
        tensor = payload.data[length:]
        assert spec["parameters"]["binary_data_size"] == len(tensor)
        assert struct.unpack("<I", tensor[:4])[0] == len(data) and tensor[4:] == data
        assert payload.content_type == "application/octet-stream"


def test_padding_never_cuts_the_json():
    body, headers = binary_request([b"x"])
    with pytest.raises(ValueError, match="more than header_length"):
        binary_request([b"x"], header_length=int(headers[BINARY_HEADER]) - 1)
