"""The one logging setup of every CLI: libraries log, the CLI decides where lines go.

Information goes to stdout as the bare message (the run's narrative: what was chosen, what was written);
warnings go to stderr prefixed ``warning:``, so a bad input still ends as one line there. A CLI whose stdout is
machine-readable (``--json``) sends information to stderr instead. Third-party libraries stay at WARNING: the ONNX
optimiser and quantiser, for one, log chatty INFO lines.
"""

from __future__ import annotations

import logging
import sys


class _Plain(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        return message if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {message}"


def configure_cli_logging(level: int = logging.INFO, stdout_is_data: bool = False) -> None:
    """Route our packages' records at ``level`` and above to plain lines (idempotent, callable again)."""
    info = logging.StreamHandler(sys.stderr if stdout_is_data else sys.stdout)
    info.addFilter(lambda record: record.levelno < logging.WARNING)
    warnings = logging.StreamHandler(sys.stderr)
    warnings.setLevel(logging.WARNING)
    for handler in (info, warnings):
        handler.setFormatter(_Plain())
    logging.basicConfig(level=logging.WARNING, handlers=[info, warnings], force=True)
    logging.getLogger("convserve").setLevel(level)  # every module logs under convserve.<room>.<module>
