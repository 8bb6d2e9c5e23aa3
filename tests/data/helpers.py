"""Helpers for the data tests: configs over small real corpora, independent document splitting, synthetic shards."""

import gzip
from dataclasses import replace
from pathlib import Path

import numpy as np

from conftest import SAMPLE_CORPUS
from mixln_dist.config import DataConfig, TokenizerConfig
from mixln_dist.data import DatasetMeta, SplitMeta
from mixln_dist.data.prepare import ShardWriter

SAMPLE = SAMPLE_CORPUS
VOCAB = 512


def novel(pattern: str, chars: int) -> str:
    """The first `chars` characters (and the rest of that paragraph) of a bundled novel."""
    path = next(SAMPLE.glob(f"*/*{pattern}*"))
    text = gzip.open(path, "rt", encoding="utf-8").read()
    return text[: text.index("\n\n", chars) + 1]


def make_cfg(corpus: Path, out: Path, **changes) -> DataConfig:
    """A data config over the `corpus` fixture preparing into `out`. Keywords replace fields; tokenizer={...}
    replaces tokenizer fields."""
    tokenizer = TokenizerConfig(path=str(out / "tokenizer.model"), vocab_size=VOCAB, character_coverage=1.0)
    tokenizer = replace(tokenizer, **changes.pop("tokenizer", {}))
    cfg = DataConfig(name="test", train=[str(corpus / "train/*")], validation=[str(corpus / "val/c.txt")],
                     dir=str(out), tokenizer=tokenizer, seq_len=64, num_proc=2)
    return replace(cfg, **changes)


def documents(path: Path, sample_by: str = "paragraph") -> list:
    """The documents of a .txt(.gz) file, split here independently of `datasets` (empty ones dropped)."""
    text = (gzip.open if path.suffix == ".gz" else open)(path, "rt", encoding="utf-8").read()
    parts = {"paragraph": text.split("\n\n"), "line": text.split("\n"), "document": [text]}[sample_by]
    return [d for d in parts if d and not d.isspace()]


def write_dataset(data_dir: Path, train: np.ndarray, validation: np.ndarray, shard_tokens: int = 1000) -> Path:
    """A prepared-dataset directory holding exactly these token streams (what the loader tests read)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    splits = {}
    for name, tokens in (("train", train), ("validation", validation)):
        writer = ShardWriter(data_dir, name, tokens.dtype, shard_tokens)
        writer.write(tokens, np.array([len(tokens)]))
        writer.finish()
        splits[name] = SplitMeta(len(tokens), 1, 0, "synthetic", writer.shards)
    vocab = int(max(train.max(), validation.max())) + 1
    DatasetMeta("synthetic", train.dtype.name, vocab, "0" * 64, "none", -1, splits, {}).save(data_dir)
    return data_dir
