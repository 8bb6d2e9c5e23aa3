#!/usr/bin/env python
"""Tokenize a data config's text into packed, memory-mappable shards (training the tokenizer first if needed).

    python launch/prepare_data.py                                      # data=sample into data/prepared/sample
    python launch/prepare_data.py data=books data.num_proc=2
    python launch/prepare_data.py data=c4 data.tokenizer.path=/models/t5/spiece.model   # streams C4: network

A no-op when data.dir already holds this dataset. A directory holding a different one is left alone unless
--force, which rebuilds everything. --verify then hashes every shard byte against meta.json (the trainer only
spot-checks). docs/data.md has the details.
"""

import sys

from mixln_dist.config import ConfigError, compose, parse_cli
from mixln_dist.data import DataError, prepare_dataset, verify_checksums

FLAGS = {
    "force": "rebuild the tokenizer and shards, replacing whatever data.dir holds",
    "verify": "afterwards, check every shard's full sha256 against meta.json",
}


def main(argv=None) -> int:
    overrides, flags = parse_cli(argv, __doc__, FLAGS)
    try:
        cfg = compose(overrides)
        prepare_dataset(cfg.data, force=flags.get("force", False))
        if flags.get("verify"):
            verify_checksums(cfg.data.dir)
            print(f"{cfg.data.dir}: every shard matches its sha256")
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
