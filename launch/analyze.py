#!/usr/bin/env python
"""Depth diagnostics of a trained model: angular distance between layers, validation-loss drop when a layer is
removed, per-layer gradient norms; and a markdown report comparing runs (docs/diagnostics.md).

    python launch/analyze.py all runs/debug-mix                  # CSVs, PNGs, JSON in runs/debug-mix/analysis/
    python launch/analyze.py report runs/debug-pre runs/debug-mix --out report.md
    python launch/analyze.py --help
"""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # analysis never downloads anything
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from mixln_dist.diagnostics.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
