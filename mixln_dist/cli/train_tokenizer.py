"""`mixln-train-tokenizer` (`launch/train_tokenizer.py`): train the SentencePiece tokenizer of a data config (or
check an adopted one), with the trainer's overrides.

    python launch/train_tokenizer.py                                   # data=sample: 8k BPE, Austen's novels
    python launch/train_tokenizer.py data=books data.tokenizer.vocab_size=16384 data.num_proc=2
    python launch/train_tokenizer.py data=c4 data.tokenizer.path=/models/t5/spiece.model   # adopt T5's

A no-op when data.tokenizer.path was already trained with these settings; --force trains it again (and is needed
to replace a tokenizer trained differently). docs/data.md has the details.
"""

from __future__ import annotations

from typing import Optional, Sequence

from .common import parse_config_cli, run

FLAGS = {"force": "train again even when the tokenizer is up to date, or replace one trained differently"}


def main(argv: Optional[Sequence[str]] = None) -> int:
    cli = parse_config_cli(argv, __doc__, FLAGS)

    def body() -> None:
        from ..config import compose
        from ..data import train_tokenizer

        cfg = compose(cli.overrides, cli.config_dir)
        print(train_tokenizer(cfg.data, force=cli.flags.get("force", False)))

    return run(body)


if __name__ == "__main__":
    raise SystemExit(main())
