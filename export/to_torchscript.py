"""Export to TorchScript: ``python export/to_torchscript.py CKPT [--output-dir DIR] [--check-images IMG...]
[--force]``, or ``--torchvision ARCH [--random-weights]`` for CKPT.

Writes model.ts.pt (traced, frozen), model.pt (eager weights), model_card.json and index_to_name.json into
the artifact folder (the same folder format as to_onnx; both can write into one folder), after checking
the file against the eager model with torch.jit on real images. Exit 0: exported; 1: the export failed
its parity check (nothing written); 2: bad input (one ``error:`` line).
"""

from __future__ import annotations

from convserve.common.errors import run_cli
from convserve.export.cli_common import base_request, build_parser, export_and_report, open_source


def main(argv: list[str] | None = None) -> int:
    p = build_parser(__doc__.splitlines()[0])
    args = p.parse_args(argv)
    source = open_source(p, args)
    return export_and_report(source, base_request(args, ["torchscript"]))


def cli() -> None:
    """Run as a script: ``main`` behind the one-line error edge, as ``convserve <command>`` runs it."""
    run_cli(main)


if __name__ == "__main__":
    cli()
