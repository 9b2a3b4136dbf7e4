"""The GPU check: every GPU-only promise of convserve measured in one command (``bash scripts/gpu_check.sh``).

Run from the source tree (PYTHONPATH, never an install) on any CUDA machine, or with ``--dry-run`` on a CPU.
Each check is one function producing one row of the report (``suite.CHECKS``).
"""
