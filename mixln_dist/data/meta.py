"""What a prepared dataset directory holds, and the checks that it is whole and fits the run.

    data/prepared/sample/
      meta.json                   DatasetMeta: dtype, tokenizer checksum and size, per-split counts and shards
      train-00000.bin ...         token ids, raw little-endian uint16 (uint32 when the vocabulary exceeds 65536)
      validation-00000.bin
      tokenizer.model(.json)      when data.tokenizer.path points inside the directory (the default)

Each split is one stream of ids (every document followed by EOS) cut into shards of data.shard_tokens ids.
meta.json is written last, so a directory with a meta.json is complete.

Checksums: every shard has a sha256 of the whole file and a "spot" sha256 of 16 evenly spaced 4 KiB blocks.
check_dataset() runs on every rank at every start, so it checks sizes and spot checksums only (64 KiB per shard,
32 MB for 100 GB in 200 MB shards): that catches missing, truncated, swapped or regenerated shards, not every
flipped byte. verify_checksums() hashes every byte (`python launch/prepare_data.py --verify`); do it once after
copying a dataset.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Union

import numpy as np

from ..errors import DataError
from ..files import fsync_dir, write_atomic

FORMAT = 1  # bump when the directory layout or meta.json changes meaning
META_FILE = "meta.json"
LOCK_FILE = ".lock"
SPLITS = ("train", "validation")
SPOT_BLOCKS, SPOT_BYTES = 16, 4096

PathLike = Union[str, Path]


@dataclass
class ShardMeta:
    file: str  # name inside the dataset directory
    num_tokens: int
    sha256: str  # of the whole file (verify_checksums)
    spot_sha256: str  # of 16 evenly spaced 4 KiB blocks (check_dataset, every start)


@dataclass
class SplitMeta:
    num_tokens: int  # EOS tokens included
    num_documents: int
    skipped_documents: int  # empty or whitespace-only documents, not written
    source: str  # where the text came from, for people
    shards: List[ShardMeta] = field(default_factory=list)

    def num_samples(self, seq_len: int) -> int:
        """Samples of seq_len + 1 tokens; sample i is tokens[i*seq_len : i*seq_len + seq_len + 1]."""
        return max(0, (self.num_tokens - 1) // seq_len)


@dataclass
class DatasetMeta:
    name: str
    dtype: str  # uint16 | uint32 (little-endian)
    vocab_size: int  # pieces of the tokenizer the ids come from
    tokenizer_sha256: str
    tokenizer_path: str  # where it was at preparation (for people; checks read data.tokenizer.path)
    eos_id: int  # ends every document
    splits: Dict[str, SplitMeta]
    recipe: Dict[str, Any]  # everything the contents depend on: preparing with an equal recipe is a no-op
    format: int = FORMAT
    seconds: float = 0.0  # how long preparation took

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype).newbyteorder("<")

    def save(self, data_dir: PathLike) -> None:
        write_atomic(Path(data_dir) / META_FILE, json.dumps(asdict(self), indent=1).encode())

    @classmethod
    def find(cls, data_dir: PathLike) -> Optional["DatasetMeta"]:
        """The dataset in data_dir, or None when there is none (or meta.json is not one of ours)."""
        try:
            return cls.load(data_dir)
        except DataError:
            return None

    @classmethod
    def load(cls, data_dir: PathLike) -> "DatasetMeta":
        path = Path(data_dir) / META_FILE
        if not path.is_file():
            raise DataError(
                f"no prepared dataset in {data_dir} ({META_FILE} is missing); prepare it with "
                "`python launch/prepare_data.py data=NAME` (plus your overrides) or set data.auto_prepare=true"
            )
        try:
            raw = json.loads(path.read_text())
            splits = {k: SplitMeta(**{**v, "shards": [_typed(ShardMeta(**s)) for s in v["shards"]]})
                      for k, v in raw.pop("splits").items()}
            meta = _typed(cls(**raw, splits={k: _typed(v) for k, v in splits.items()}))
            if meta.dtype not in ("uint16", "uint32"):
                raise ValueError(f"dtype {meta.dtype!r} is not uint16 or uint32")
        except (ValueError, TypeError, KeyError, AttributeError) as e:  # not JSON, missing or wrong-typed fields
            raise DataError(f"{path} is not a dataset description written by mixln_dist ({e}); "
                            "prepare the dataset again with --force") from e
        if meta.format != FORMAT:
            raise DataError(f"{path} has format {meta.format}, this code reads format {FORMAT}; "
                            "prepare the dataset again with --force")
        return meta


def _typed(record):
    """A dataclass read from JSON, each field checked against its annotation (int, str, float, list, dict), so a
    damaged meta.json fails here, naming the field, instead of deep in the loader."""
    kinds = {"int": int, "str": str, "float": (int, float), "List[ShardMeta]": list, "Dict[str, SplitMeta]": dict,
             "Dict[str, Any]": dict}
    counts = ("num_tokens", "num_documents", "skipped_documents", "vocab_size")
    for f in fields(record):
        value, kind = getattr(record, f.name), kinds[f.type]
        if not isinstance(value, kind) or isinstance(value, bool) or (f.name in counts and value < 0):
            what = "a non-negative int" if f.name in counts else f"a {f.type}"
            raise ValueError(f"{type(record).__name__}.{f.name} = {value!r} is not {what}")
    return record


def check_dataset(data_cfg, model_vocab_size: int, seq_len: int) -> DatasetMeta:
    """Every rank, before any work: the prepared dataset is complete, matches its tokenizer and fits the model.

    Needs only data.dir and data.tokenizer.path, not the raw text, so prepared shards can be copied to machines
    that never see the sources. Raises DataError naming the problem and the fix.
    """
    data_dir = Path(data_cfg.dir)
    meta = DatasetMeta.load(data_dir)
    tok_path = Path(data_cfg.tokenizer.path)
    if not tok_path.is_file():
        raise DataError(
            f"tokenizer {tok_path} (data.tokenizer.path) does not exist, but {data_dir} was prepared with one "
            f"({meta.vocab_size} pieces, sha256 {meta.tokenizer_sha256[:12]}, then at {meta.tokenizer_path}); "
            "copy it there or point data.tokenizer.path at it"
        )
    sha = sha256_file(tok_path)
    if sha != meta.tokenizer_sha256:
        raise DataError(
            f"{data_dir} was prepared with tokenizer sha256 {meta.tokenizer_sha256[:12]} ({meta.vocab_size} pieces) "
            f"but {tok_path} is sha256 {sha[:12]}: its ids would mean different pieces. Point data.tokenizer.path "
            "at the tokenizer the data was prepared with, or prepare the data again with --force"
        )
    if meta.vocab_size > model_vocab_size:
        raise DataError(
            f"tokenizer {tok_path} has {meta.vocab_size} pieces but model.vocab_size={model_vocab_size}; "
            f"set model.vocab_size>={meta.vocab_size} or use a smaller tokenizer"
        )
    check_shards(meta, data_dir)
    for name in SPLITS:
        split = meta.splits.get(name)
        tokens = split.num_tokens if split else 0
        if tokens < seq_len + 1:
            raise DataError(
                f"the {name} split of {data_dir} has {tokens:,} tokens, fewer than data.seq_len + 1 = {seq_len + 1}, "
                f"so not one sample; lower data.seq_len or give the {name} split more text and prepare again"
            )
    return meta


def check_shards(meta: DatasetMeta, data_dir: PathLike, full: bool = False) -> None:
    """Every shard present, with its recorded size and checksum (spot checksum unless full)."""
    data_dir = Path(data_dir)
    fix = "the dataset is damaged: prepare it again with --force, or copy it again"
    for split_name, split in meta.splits.items():
        for shard in split.shards:
            path = data_dir / shard.file
            if not path.is_file():
                raise DataError(f"shard {path} of the {split_name} split is missing; {fix}")
            size, expected = path.stat().st_size, shard.num_tokens * meta.np_dtype.itemsize
            if size != expected:
                state = "truncated" if size < expected else "longer than recorded"
                raise DataError(f"shard {path} is {state}: {size:,} bytes, meta.json records {expected:,}; {fix}")
            digest, recorded = (sha256_file(path), shard.sha256) if full else (spot_sha256(path), shard.spot_sha256)
            if digest != recorded:
                kind = "sha256" if full else "spot sha256"
                raise DataError(f"shard {path} does not match its {kind} in meta.json (corrupted bytes); {fix}")


def verify_checksums(data_dir: PathLike) -> DatasetMeta:
    """Hash every byte of every shard against meta.json (slow for big corpora; check_dataset spot-checks)."""
    meta = DatasetMeta.load(data_dir)
    check_shards(meta, data_dir, full=True)
    return meta


# Files --------------------------------------------------------------------------------------------------------


def sha256_file(path: PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def spot_sha256(path: PathLike) -> str:
    """sha256 of SPOT_BLOCKS blocks of SPOT_BYTES spread evenly through the file (all of it when smaller)."""
    size = os.path.getsize(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= SPOT_BLOCKS * SPOT_BYTES:
            h.update(f.read())
        else:
            for k in range(SPOT_BLOCKS):
                f.seek((size - SPOT_BYTES) * k // (SPOT_BLOCKS - 1))
                h.update(f.read(SPOT_BYTES))
    return h.hexdigest()


@contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold directory/.lock exclusively: concurrent preparers take turns, and the second finds the work done."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK_FILE, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process that is preparing {directory}", flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        yield  # closing the file releases the lock, also when the body raises


def recipe_changes(old: Dict[str, Any], new: Dict[str, Any]) -> str:
    """What differs between two recipes, for people: "data.tokenizer.vocab_size 8192 -> 4096, ..."."""
    changes = []
    for key in list(new) + [k for k in old if k not in new]:
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, list) or isinstance(b, list):  # source fingerprints: one dict per file or hub dataset
            names_a, names_b = ([f.get("file") or f.get("hub") for f in x or []] for x in (a, b))
            if names_a != names_b:
                changes.append(f"{key} {names_a} -> {names_b}")
            else:
                edited = [fa.get("file") for fa, fb in zip(a, b) if fa != fb]
                changes.append(f"{key}: {', '.join(edited)} changed")
        elif key.endswith("sha256"):
            changes.append(f"{key} {str(a)[:12]} -> {str(b)[:12]}")
        else:
            changes.append(f"{key} {a!r} -> {b!r}")
    return ", ".join(changes)
