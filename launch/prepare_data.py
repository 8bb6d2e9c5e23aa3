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

from mixln_dist.config import ConfigError, compose, split_cli_args
from mixln_dist.data import DataError, prepare_dataset, verify_checksums

FLAGS = {
    "force": "rebuild the tokenizer and shards, replacing whatever data.dir holds",
    "verify": "afterwards, check every shard's full sha256 against meta.json",
}


def main(argv=None) -> int:
    overrides, flags = split_cli_args(sys.argv[1:] if argv is None else argv)
    if flags.pop("help", False):
        print(__doc__ + "\nOptions:\n" + "\n".join(f"  --{k:<8} {v}" for k, v in FLAGS.items()))
        return 0
    unknown = [f"--{k}" for k in flags if k not in FLAGS]
    if unknown:
        print(f"error: unknown option {', '.join(unknown)}; options: {', '.join('--' + k for k in FLAGS)}",
              file=sys.stderr)
        return 2
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
