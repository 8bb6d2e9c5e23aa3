"""`mixln-prepare-data` (`launch/prepare_data.py`): tokenize a data config's text into packed, memory-mappable
shards (training the tokenizer first if needed).

    python launch/prepare_data.py                                      # data=sample into ./data/prepared/sample
    python launch/prepare_data.py data=books data.num_proc=2
    python launch/prepare_data.py data=c4 data.tokenizer.path=/models/t5/spiece.model   # streams C4: network

A no-op when data.dir already holds this dataset. A directory holding a different one is left alone unless
--force, which rebuilds everything. --verify then hashes every shard byte against meta.json (the trainer only
spot-checks). docs/data.md has the details.
"""

from __future__ import annotations

from typing import Optional, Sequence

from .common import parse_config_cli, run

FLAGS = {
    "force": "rebuild the tokenizer and shards, replacing whatever data.dir holds",
    "verify": "afterwards, check every shard's full sha256 against meta.json",
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    cli = parse_config_cli(argv, __doc__, FLAGS)

    def body() -> None:
        from ..config import compose
        from ..data import prepare_dataset, verify_checksums

        cfg = compose(cli.overrides, cli.config_dir)
        prepare_dataset(cfg.data, force=cli.flags.get("force", False))
        if cli.flags.get("verify"):
            verify_checksums(cfg.data.dir)
            print(f"{cfg.data.dir}: every shard matches its sha256")

    return run(body)


if __name__ == "__main__":
    raise SystemExit(main())
