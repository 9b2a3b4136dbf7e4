"""The one exception type users can cause; CLIs turn it into a one-line message and exit code 2."""

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn


class ConvserveError(Exception):
    """A problem with the user's input (config, data, checkpoint, paths), not a bug of ours."""


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> None:
    """Run a CLI entry point, printing ConvserveError as one line and exiting 2."""
    try:
        code = main(argv)
    except ConvserveError as exc:
        print(f"error: {exc}", file=sys.stderr)
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
