"""Export to ONNX: ``python export/to_onnx.py CKPT [--output-dir DIR] [--opset N] [--batch dynamic|N]
[--check-images IMG...] [--force] [--quantize int8] [--fp16] [--legacy]``, or ``--torchvision ARCH
[--random-weights]`` for CKPT.

Writes model.onnx (+ model.int8.onnx, model.fp16.onnx), model.pt (eager weights), model_card.json and
index_to_name.json into the artifact folder, after checking each file against the eager model with ONNX
Runtime on real images. Exit 0: exported; 1: the export failed its parity check (nothing written);
2: bad input (one ``error:`` line).
"""

from __future__ import annotations

from convserve.common.errors import run_cli
from convserve.export.cli_common import base_request, build_parser, export_and_report, open_source


def batch_size(text: str) -> int | None:
    if text == "dynamic":
        return None
    if not text.isdigit() or int(text) < 1:
        raise ValueError(text)
    return int(text)


batch_size.__name__ = "'dynamic' or a positive integer"  # argparse names the type in its error


def main(argv: list[str] | None = None) -> int:
    p = build_parser(__doc__.splitlines()[0])
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's own, 18 or later)")
    p.add_argument("--batch", type=batch_size, default=None, metavar="dynamic|N", help="batch axis (default dynamic)")
    p.add_argument("--quantize", choices=["int8"], help="also write model.int8.onnx (static QDQ, for CPU)")
    p.add_argument("--fp16", action="store_true", help="also write model.fp16.onnx (for GPU)")
    p.add_argument("--legacy", action="store_true", help="TorchScript-based torch.onnx exporter (dynamo=False)")
    args = p.parse_args(argv)
    if args.opset is not None and not 7 <= args.opset <= 23:
        p.error(f"--opset {args.opset}: choose 7..23")
    source = open_source(p, args)
    formats = ["onnx", *(["onnx-int8"] if args.quantize else []), *(["onnx-fp16"] if args.fp16 else [])]
    request = base_request(args, formats)
    request.opset, request.batch, request.legacy = args.opset, args.batch, args.legacy
    return export_and_report(source, request)


def cli() -> None:
    """Run as a script: ``main`` behind the one-line error edge, as ``convserve <command>`` runs it."""
    run_cli(main)


if __name__ == "__main__":
    cli()
