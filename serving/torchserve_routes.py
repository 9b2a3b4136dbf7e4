"""TorchServe's inference API on the v2 server: ``POST``/``PUT /predictions/{name}`` with the bodies TorchServe's
handler takes (raw image bytes, a multipart upload, JSON ``{"image": "<base64>"}``), the same answer (top-k
``{label: probability}``, most likely first) and the same 4xx ``{"error": ..., "code": N}``; ``GET /ping``. A
client of ``/predictions/alexnet`` switches servers by changing the port.

The request goes through the model's own decoding and its dynamic batching, as a v2 request does.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from convserve.common.errors import InputError
from convserve.serving.http_headers import BATCH_HEADER
from convserve.serving.kserve_model import ClassifierModel
from convserve.serving.payload import image_bytes


async def torchserve_request(request: Request) -> dict[str, Any]:
    """The dict TorchServe's worker hands a handler: form fields for multipart, the parsed object for JSON, else
    ``{"body": bytes}`` (the handler's payload rules take it from there)."""
    if request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        form = await request.form()
        return {key: (await value.read()) if hasattr(value, "read") else value for key, value in form.items()}
    return {"body": await request.body()}  # a JSON body is parsed by payload.image_bytes, with its errors


def add_torchserve_routes(app: FastAPI, models: dict[str, ClassifierModel]) -> None:
    """``models``: the served models by name (the v2 server serves one)."""

    async def predictions(model_name: str, request: Request) -> JSONResponse:
        model = models.get(model_name)
        if model is None:
            error = InputError(f"model {model_name!r} is not served here (served: {', '.join(models)})", 404)
            return JSONResponse(error.to_json(), status_code=404)
        if not model.ready:
            return JSONResponse({"error": f"model {model_name!r} is still loading", "code": 503}, status_code=503)
        try:
            row, batch = await model.classify_one(image_bytes(await torchserve_request(request)))
        except InputError as exc:
            return JSONResponse(exc.to_json(), status_code=exc.status)
        return JSONResponse(row, headers={BATCH_HEADER: str(batch)})  # as our TorchServe handler tells it

    async def ping() -> JSONResponse:
        ready = bool(models) and all(model.ready for model in models.values())
        return JSONResponse({"status": "Healthy" if ready else "Unhealthy"}, status_code=200 if ready else 503)

    app.add_api_route("/predictions/{model_name}", predictions, methods=["POST", "PUT"])
    app.add_api_route("/ping", ping, methods=["GET"])
