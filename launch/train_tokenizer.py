#!/usr/bin/env python
"""Train the SentencePiece tokenizer of a data config (or check an adopted one), with the trainer's overrides.

    python launch/train_tokenizer.py                                   # data=sample: 8k BPE, Austen's novels
    python launch/train_tokenizer.py data=books data.tokenizer.vocab_size=16384 data.num_proc=2
    python launch/train_tokenizer.py data=c4 data.tokenizer.path=/models/t5/spiece.model   # adopt T5's

A no-op when data.tokenizer.path was already trained with these settings; --force trains it again (and is needed
to replace a tokenizer trained differently). docs/data.md has the details.
"""

import sys

from mixln_dist.config import ConfigError, compose, parse_cli
from mixln_dist.data import DataError, train_tokenizer

FLAGS = {"force": "train again even when the tokenizer is up to date, or replace one trained differently"}


def main(argv=None) -> int:
    overrides, flags = parse_cli(argv, __doc__, FLAGS)
    try:
        cfg = compose(overrides)
        tok = train_tokenizer(cfg.data, force=flags.get("force", False))
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(tok)
    return 0


if __name__ == "__main__":
    sys.exit(main())
