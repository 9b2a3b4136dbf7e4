"""Top-k predictions for a user's photos: from a checkpoint (eager), an artifact folder, or a TorchServe URL."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from convserve.artifact.card import CARD_FILE
from convserve.common.errors import ConvserveError, InputError
from convserve.common.files import read_image_bytes
from convserve.serving.classifier import Classifier


@dataclass
class Prediction:
    image: str
    top: list[tuple[str, float]]  # (label, probability), most likely first

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.image, "top": [{"label": label, "probability": p} for label, p in self.top]}


class Predictor(Protocol):
    def predict(self, data: bytes, name: str, topk: int) -> list[tuple[str, float]]: ...


class ClassifierPredictor:
    """A checkpoint (eager backend) or an exported artifact folder, through serving's Classifier: the same
    decode → preprocess → infer → top-k that TorchServe's handler runs."""

    def __init__(self, classifier: Classifier):
        self.classifier = classifier

    def predict(self, data: bytes, name: str, topk: int) -> list[tuple[str, float]]:
        self.classifier.k = max(1, min(topk, self.classifier.card.num_classes))
        try:
            (answer,) = self.classifier.predict([data])
        except InputError as exc:  # says what is wrong with the bytes, not which file
            raise ConvserveError(f"cannot decode image {name}: {exc.message}") from None
        return parse_answer(answer, name)[:topk]


class RemotePredictor:
    """POST the image bytes to a TorchServe predictions URL (``http://HOST:8080/predictions/NAME``)."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 60.0):
        if not url.startswith(("http://", "https://")):
            raise ConvserveError(f"--url must start with http:// or https://, got {url!r}")
        self.url, self.token, self.timeout = url, token, timeout

    def predict(self, data: bytes, name: str, topk: int) -> list[tuple[str, float]]:
        headers = {"Content-Type": "application/octet-stream"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            raise ConvserveError(f"{self.url} answered {exc.code} for {name}: {_error_text(exc.read())}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ConvserveError(f"cannot reach {self.url}: {reason}") from None
        try:
            answer = json.loads(body)
        except ValueError:
            raise ConvserveError(f"{self.url} answered with something that is not JSON: {body[:100]!r}") from None
        return parse_answer(answer, name)[:topk]


def _error_text(body: bytes) -> str:
    """TorchServe and our handler answer errors as JSON with a message; show that, else the raw text."""
    try:
        answer = json.loads(body)
        text = str(answer.get("message") or answer.get("error") or answer)
    except (ValueError, AttributeError):
        text = body.decode("utf-8", "replace")
    return " ".join(text.split())[:300]


_LABEL_KEYS = ("label", "class", "name")
_PROB_KEYS = ("probability", "prob", "score", "confidence")


def parse_answer(answer: Any, name: str = "image") -> list[tuple[str, float]]:
    """Read a classifier answer: TorchServe's ``{label: prob}`` or a list of ``{label, probability}`` records."""
    if isinstance(answer, list) and len(answer) == 1 and isinstance(answer[0], dict | list):
        answer = answer[0]  # a batch of one
    if isinstance(answer, dict):
        for key in ("predictions", "top", "topk"):
            if isinstance(answer.get(key), list):
                return parse_answer(answer[key], name)
        if all(isinstance(v, int | float) for v in answer.values()):
            return sorted(((str(k), float(v)) for k, v in answer.items()), key=lambda kv: -kv[1])
    if isinstance(answer, list) and all(isinstance(r, dict) for r in answer):
        out = []
        for record in answer:
            label = next((record[k] for k in _LABEL_KEYS if k in record), None)
            prob = next((record[k] for k in _PROB_KEYS if k in record), None)
            if label is None or not isinstance(prob, int | float):
                break
            out.append((str(label), float(prob)))
        else:
            return sorted(out, key=lambda kv: -kv[1])
    raise ConvserveError(f"unexpected classifier answer for {name}: {json.dumps(answer)[:200]}")


def open_predictor(source: str | None, url: str | None = None, token: str | None = None, topk: int = 5) -> Predictor:
    """A checkpoint file, a run folder (its checkpoints/best.pt), an artifact folder, or a URL."""
    if url:
        return RemotePredictor(url, token)
    if source is None:
        raise ConvserveError("give a checkpoint or artifact folder, or --url")
    path = Path(source)
    if path.is_dir():
        if (path / CARD_FILE).is_file():
            return ClassifierPredictor(Classifier.from_artifact(path, top_k=topk))
        if (path / "checkpoints" / "best.pt").is_file():
            return ClassifierPredictor(Classifier.from_checkpoint(path / "checkpoints" / "best.pt", top_k=topk))
        raise ConvserveError(f"{path} is neither an artifact folder ({CARD_FILE}) nor a run folder")
    return ClassifierPredictor(Classifier.from_checkpoint(path, top_k=topk))


def predict_files(predictor: Predictor, images: list[Path], topk: int) -> list[Prediction]:
    if topk < 1:
        raise ConvserveError(f"--topk must be at least 1, got {topk}")
    out = []
    for path in images:
        out.append(Prediction(str(path), predictor.predict(read_image_bytes(path), str(path), topk)))
    return out


def format_predictions(predictions: list[Prediction]) -> str:
    lines = []
    for pred in predictions:
        lines.append(pred.image)
        width = max((len(label) for label, _ in pred.top), default=0)
        lines += [f"  {k}. {label:<{width}}  {100 * p:6.2f}%" for k, (label, p) in enumerate(pred.top, start=1)]
    return "\n".join(lines)
