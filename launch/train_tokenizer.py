#!/usr/bin/env python
"""Train a data config's SentencePiece tokenizer (mixln_dist/cli/train_tokenizer.py; `mixln-train-tokenizer`).

    python launch/train_tokenizer.py data=books data.tokenizer.vocab_size=16384
"""

from mixln_dist.cli.train_tokenizer import main

if __name__ == "__main__":
    raise SystemExit(main())
