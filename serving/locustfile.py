"""Locust load test of a convserve TorchServe endpoint, for those who prefer Locust to serving/loadtest.py.

Headless run (16 users, 4 started per second, 30 s), against a local server only unless you mean otherwise:

    CONVSERVE_IMAGES=cat.jpg:dog.jpg locust -f serving/locustfile.py --headless -u 16 -r 4 -t 30s \\
        --host http://127.0.0.1:8080

Environment:
    CONVSERVE_IMAGES   image files sent as request bodies, cycled (os.pathsep-separated; required)
    CONVSERVE_MODEL    model name in /predictions/<name> (default alexnet)
    CONVSERVE_TOKEN    bearer token (TorchServe inference key) when token authorization is on

Each user keeps one request in flight (no think time), as loadtest.py's concurrency does. Any non-2xx answer is
a failure, reported by Locust under its status code.
"""

from __future__ import annotations

import itertools
import mimetypes
import os
from pathlib import Path

from locust import HttpUser, constant, task


def _images() -> list[tuple[str, bytes, str]]:
    raw = os.environ.get("CONVSERVE_IMAGES", "")
    paths = [Path(p) for p in raw.split(os.pathsep) if p]
    if not paths:
        raise SystemExit("error: set CONVSERVE_IMAGES to one or more image files (os.pathsep-separated)")
    out = []
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SystemExit(f"error: cannot read image {path}: {exc.strerror}") from None
        out.append((path.name, data, mimetypes.guess_type(str(path))[0] or "application/octet-stream"))
    return out


IMAGES = _images()
MODEL = os.environ.get("CONVSERVE_MODEL", "alexnet")
TOKEN = os.environ.get("CONVSERVE_TOKEN")


class PredictionUser(HttpUser):
    wait_time = constant(0)

    def on_start(self) -> None:
        self.bodies = itertools.cycle(IMAGES)
        self.auth = {"Authorization": f"Bearer {TOKEN}"} if TOKEN else {}

    @task
    def predict(self) -> None:
        name, data, content_type = next(self.bodies)
        self.client.post(
            f"/predictions/{MODEL}",
            data=data,
            headers={"Content-Type": content_type, **self.auth},
            name=f"/predictions/{MODEL}",
        )
