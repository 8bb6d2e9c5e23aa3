#!/usr/bin/env python
"""Perplexity and bits per byte of a checkpoint or HF folder (mixln_dist/cli/evaluate.py; `mixln-evaluate`).

    python launch/evaluate.py runs/debug-mix0.25 --shards
    python launch/evaluate.py runs/debug-mix0.25 --text notes.txt.gz
"""

from mixln_dist.cli.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main())
