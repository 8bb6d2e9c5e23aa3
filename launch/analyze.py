#!/usr/bin/env python
"""Depth diagnostics of a checkpoint, and a report comparing runs (mixln_dist/cli/analyze.py; `mixln-analyze`).

    python launch/analyze.py all runs/debug-mix0.25
    python launch/analyze.py report runs/debug-pre runs/debug-mix0.25 --out report.md
"""

from mixln_dist.cli.analyze import main

if __name__ == "__main__":
    raise SystemExit(main())
