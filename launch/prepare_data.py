#!/usr/bin/env python
"""Tokenize a data config's text into packed shards (mixln_dist/cli/prepare_data.py; `mixln-prepare-data`).

    python launch/prepare_data.py                                   # data=sample into ./data/prepared/sample
    python launch/prepare_data.py data=books --verify
"""

from mixln_dist.cli.prepare_data import main

if __name__ == "__main__":
    raise SystemExit(main())
