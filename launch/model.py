#!/usr/bin/env python
"""A model's size and per-layer norm placement (mixln_dist/cli/model.py; `mixln-model`).

    python launch/model.py model=llama_7b norm=mix norm.post_layers=2
"""

from mixln_dist.cli.model import main

if __name__ == "__main__":
    raise SystemExit(main())
