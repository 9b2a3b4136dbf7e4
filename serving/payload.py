"""One TorchServe request (the dict the worker builds from an HTTP request) → the encoded image bytes.

Accepted forms, one image per request:
- raw image bytes as the body (``curl --data-binary @x.jpg -H "Content-Type: image/jpeg"``, ``curl -T x.jpg``):
  TorchServe hands them over as ``{"body": bytes}``;
- a multipart upload (``curl -F "data=@x.jpg"``): ``{"<field>": bytes}``; the field is ``data``, ``image``,
  ``file`` or ``b64``, or any name when it is the only field;
- base64 text where bytes are expected (a form field ``image=<base64>``, an octet-stream body of base64);
- JSON ``{"image": "<base64>"}`` (or ``"data"`` / ``"b64"``); the worker parses application/json bodies into a
  dict; a ``data:image/...;base64,`` prefix and URL-safe base64 are accepted.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from convserve.common.errors import InputError

IMAGE_FIELDS = ("data", "image", "file", "b64", "body")
JSON_FIELDS = ("image", "data", "b64")
HOW_TO = 'send image bytes (Content-Type: image/*), a multipart file upload, or JSON {"image": "<base64>"}'
_DATA_URL = re.compile(r"^data:[\w/+.-]*;base64,", re.IGNORECASE)
# base64 text sent as bytes (a form field, an octet-stream of a .b64 file); encoded images never match: their
# headers hold bytes outside this alphabet
_BASE64_BYTES = re.compile(rb"^(data:[\w/+.-]*;base64,)?[A-Za-z0-9+/=_\-\s]+$", re.IGNORECASE)


def image_bytes(request: dict[str, Any] | None) -> bytes:
    """The encoded image carried by one request; InputError (400/415) when there is none or it is malformed."""
    if not request:
        raise InputError(f"empty request: {HOW_TO}")
    field = next((name for name in IMAGE_FIELDS if request.get(name) is not None), None)
    if field is None:
        if len(request) != 1:
            raise InputError(f"no image field in the request (fields: {', '.join(sorted(request))}): {HOW_TO}")
        field = next(iter(request))
    return _value_bytes(field, request[field])


def _value_bytes(field: str, value: Any) -> bytes:
    if isinstance(value, bytes | bytearray):
        if not value:
            raise InputError(f"empty body: {HOW_TO}")
        if value.lstrip()[:1] == b"{":  # a JSON body the worker did not parse (wrong or missing Content-Type)
            return _from_json(_parse_json(bytes(value)))
        if _BASE64_BYTES.match(value):
            return decode_base64(value.decode("ascii"), field)
        return bytes(value)
    if isinstance(value, dict):
        return _from_json(value)
    if isinstance(value, str):
        if field == "body":  # a text/* body: the worker decoded it to text, so it cannot be image bytes
            raise InputError(f"text body is not an image: {HOW_TO}", 415)
        return decode_base64(value, field)
    raise InputError(f"JSON body must be an object with an image, got {type(value).__name__}: {HOW_TO}")


def _parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"body is not valid JSON: {exc}") from None


def _from_json(document: Any) -> bytes:
    if not isinstance(document, dict):
        raise InputError(f"JSON body must be an object, got {type(document).__name__}: {HOW_TO}")
    key = next((k for k in JSON_FIELDS if k in document), None)
    if key is None:
        raise InputError(f'JSON body has no "image" field (keys: {", ".join(sorted(document)) or "none"})')
    value = document[key]
    if not isinstance(value, str):
        raise InputError(f'JSON "{key}" must be a base64 string, got {type(value).__name__}')
    return decode_base64(value, key)


def decode_base64(text: str, field: str = "image") -> bytes:
    """Standard or URL-safe base64, padding optional, line breaks and a data-URL prefix ignored.

    Spaces are read as '+': form decoding (application/x-www-form-urlencoded) turns an unescaped '+' into one.
    """
    compact = "".join(_DATA_URL.sub("", text.strip()).replace(" ", "+").split())
    if not compact:
        raise InputError(f'empty "{field}": no base64 data')
    padded = compact + "=" * (-len(compact) % 4)
    altchars = b"-_" if ("-" in compact or "_" in compact) else None
    try:
        data = base64.b64decode(padded, altchars=altchars, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError(f'"{field}" is not valid base64: {exc}') from None
    if not data:
        raise InputError(f'"{field}" decodes to no bytes')
    return data
