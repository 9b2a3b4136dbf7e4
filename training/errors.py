"""The one exception type users can cause; CLIs turn it into a one-line message and exit code 2."""

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn


class ConvserveError(Exception):
    """A problem with the user's input (config, data, checkpoint, paths), not a bug of ours."""


def one_line(exc: BaseException) -> str:
    """The user-facing line of an error; DataLoader workers re-raise ours with their traceback prepended."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    last = lines[-1]
    prefix = f"{ConvserveError.__module__}.{ConvserveError.__name__}: "
    return last.removeprefix(prefix) if len(lines) > 1 else last


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> None:
    """Run a CLI entry point, printing ConvserveError as one line and exiting 2."""
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
