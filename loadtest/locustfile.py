"""Locust load test of a convserve TorchServe endpoint, for those who prefer Locust to loadtest/loadtest.py.

Headless run (16 users, 4 started per second, 30 s), against a local server only unless you mean otherwise:

    CONVSERVE_IMAGES=cat.jpg:dog.jpg locust -f loadtest/locustfile.py --headless -u 16 -r 4 -t 30s \\
        --host http://127.0.0.1:8080

Paced (open-loop-like): 20 users at 2 requests/s each offer 40 requests/s, using Locust's constant_throughput:

    CONVSERVE_IMAGES=cat.jpg locust -f loadtest/locustfile.py --headless -u 20 -r 20 -t 60s \
        --host http://127.0.0.1:8080 --user-rate 2

Environment:
    CONVSERVE_IMAGES     image files sent as request bodies, cycled (os.pathsep-separated; required)
    CONVSERVE_MODEL      model name in /predictions/<name> (default alexnet)
    CONVSERVE_TOKEN      bearer token (TorchServe inference key) when token authorization is on
    CONVSERVE_USER_RATE  requests per second per user, the same as --user-rate (default 0: no pacing)

Without --user-rate each user keeps one request in flight (no think time), as loadtest.py's concurrency does.
With it each user starts a request every 1/rate s: users x rate is the offered rate as long as answers come
within 1/rate s; a slower answer delays that user's next request (Locust users wait for their answers), so
past that point the load closes its loop again. loadtest/loadtest.py --rate is the true open loop, timed from
each request's scheduled send. Any non-2xx answer is a failure, reported by Locust under its status code.
"""

from __future__ import annotations

import argparse
import itertools
import mimetypes
import os
from pathlib import Path

from locust import HttpUser, constant_throughput, events, task


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


def _user_rate(text: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        rate = -1.0
    if not rate >= 0:
        raise argparse.ArgumentTypeError(f"--user-rate takes requests per second per user (>= 0), got {text!r}")
    return rate


@events.init_command_line_parser.add_listener
def _add_arguments(parser) -> None:
    parser.add_argument(
        "--user-rate",
        type=_user_rate,
        env_var="CONVSERVE_USER_RATE",
        default=0.0,
        help="requests per second per user (Locust's constant_throughput); 0: each user sends back to back",
    )


class PredictionUser(HttpUser):
    def on_start(self) -> None:
        self.bodies = itertools.cycle(IMAGES)
        self.auth = {"Authorization": f"Bearer {TOKEN}"} if TOKEN else {}
        options = self.environment.parsed_options
        rate = options.user_rate if options is not None else 0.0
        self.pacing = constant_throughput(rate) if rate > 0 else None

    def wait_time(self) -> float:
        return self.pacing(self) if self.pacing is not None else 0.0

    @task
    def predict(self) -> None:
        name, data, content_type = next(self.bodies)
        self.client.post(
            f"/predictions/{MODEL}",
            data=data,
            headers={"Content-Type": content_type, **self.auth},
            name=f"/predictions/{MODEL}",
        )
