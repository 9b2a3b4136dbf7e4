"""The one error type a request can cause: it carries the HTTP status the server answers with."""

from __future__ import annotations

from training.errors import ConvserveError

REASONS = {400: "Bad Request", 413: "Payload Too Large", 415: "Unsupported Media Type"}


class InputError(ConvserveError):
    """Bad client input (not our bug): answered with ``status`` (4xx) and a one-line ``message``."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status

    @property
    def reason(self) -> str:
        return REASONS.get(self.status, "Client Error")

    def to_json(self) -> dict[str, str | int]:
        return {"error": self.message, "code": self.status}
