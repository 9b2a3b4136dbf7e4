"""The errors users can cause, and the CLI edge that turns them into one line and exit code 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from convserve.common.logs import configure_cli_logging

REASONS = {400: "Bad Request", 413: "Payload Too Large", 415: "Unsupported Media Type"}


class ConvserveError(Exception):
    """A problem with the user's input (config, data, checkpoint, paths), not a bug of ours."""


class InputError(ConvserveError):
    """Bad client input (an image, a request): answered with ``status`` (4xx) and a one-line ``message``."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status

    @property
    def reason(self) -> str:
        return REASONS.get(self.status, "Client Error")

    def to_json(self) -> dict[str, str | int]:
        return {"error": self.message, "code": self.status}


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type's name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def validation_message(exc: Any, what: str = "value") -> str:
    """A pydantic ValidationError as one line naming every bad field: ``optim.lr: Input should be greater
    than 0 (got -1.0); ...``; ``what`` names a failure at the top level."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or what
        got = err.get("input")
        shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
        parts.append(f"{where}: {err['msg']}{shown}")
    return "; ".join(parts)


def one_line(exc: BaseException) -> str:
    """The user-facing line of an error; DataLoader workers re-raise ours with their traceback prepended."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    last = lines[-1]
    for cls in (ConvserveError, InputError):
        last = last.removeprefix(f"{cls.__module__}.{cls.__name__}: ") if len(lines) > 1 else last
    return last


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> None:
    """Run a CLI entry point with our logging set up, printing ConvserveError as one line and exiting 2."""
    configure_cli_logging()
    try:
        code = main(argv)
    except ConvserveError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


class CliParser(argparse.ArgumentParser):
    """argparse with a one-line usage error (``error: ...``, exit 2) instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)
