#!/usr/bin/env python
"""Export a checkpoint to a verified Hugging Face folder (mixln_dist/cli/export_hf.py; `mixln-export-hf`).

    python launch/export_hf.py runs/debug-mix0.25 hf/debug-mix
"""

from mixln_dist.cli.export_hf import main

if __name__ == "__main__":
    raise SystemExit(main())
