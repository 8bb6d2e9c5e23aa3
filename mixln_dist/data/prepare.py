"""Tokenize a data config's text into packed shards: prepare_dataset, and ensure_prepared for auto_prepare.

Every document becomes its tokens followed by EOS; each split (train, validation) is one concatenated stream of
ids in shard files (meta.py). Batches of documents come from `datasets` (streamed, sources.py) and each batch is
encoded by one SentencePiece call on all cores (its C++ threads); the only per-token Python is turning the id
lists into one numpy array. SentencePiece's BPE slows down on long inputs (about half speed at 100 KB), so
documents longer than PIECE_CHARS are encoded in newline-terminated pieces when that is exact for the tokenizer
(Tokenizer.independent_lines).

The validation split is a separate source, or the training documents whose keyed hash (blake2b, key split_seed)
falls below val_fraction: a document's split depends only on its text, so copies of a document never straddle
the two splits, and the choice does not depend on batch sizes or core counts.

Writes are atomic and lose nothing: shards go to a staging directory inside data.dir and move into place when
complete, and meta.json is written last. A directory already holding this dataset (equal recipe) is left alone;
one holding a different dataset, or shard files this code did not describe, is replaced only with force=True.
A lock file serializes concurrent preparers: the first does the work, the others then find it done.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from itertools import chain
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from ..errors import DataError
from ..files import fsync_dir
from .meta import FORMAT, DatasetMeta, ShardMeta, SplitMeta, locked, recipe_changes, sha256_file, spot_sha256
from .sources import NoInputFiles, Source, describe, fingerprint, iter_texts, resolve_sources
from .tokenizer import Tokenizer, tokenizer_for, tokenizer_recipe, trained_differently

PIECE_CHARS = 1024  # longer documents are cut after a newline near this length (when exact) before encoding
SHARD_NAME = re.compile(r"(train|validation)-\d{5}\.bin")
STAGING_PREFIX = ".staging-"


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest little-endian unsigned type that holds every id."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def prepare_dataset(data_cfg, force: bool = False) -> DatasetMeta:
    """Tokenizer (trained or adopted if missing) and shards for data_cfg; a no-op when data.dir holds them already.

    Refuses (DataError) to replace a different dataset in data.dir unless force=True, which rebuilds everything.
    """
    data_dir = Path(data_cfg.dir)
    train_src, val_src = _sources(data_cfg)
    current = None if force else _up_to_date(data_cfg, train_src, val_src)
    if current:
        print(f"{data_dir} is up to date ({_summary(current, data_cfg.seq_len)})")
        return current
    with locked(data_dir):
        tok = tokenizer_for(data_cfg, train_src, force)
        recipe = dataset_recipe(data_cfg, train_src, val_src, tok.sha256)
        old = DatasetMeta.find(data_dir)
        if old and old.recipe == recipe and not force:  # another process prepared it while we waited
            print(f"{data_dir} was prepared by another process ({_summary(old, data_cfg.seq_len)})")
            return old
        if not force:
            _refuse_to_replace(data_dir, old, recipe)
        for stale in data_dir.glob(STAGING_PREFIX + "*"):  # left by a preparer that died; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        return _build(data_cfg, tok, train_src, val_src, recipe)


def ensure_prepared(data_cfg) -> None:
    """For the trainer's auto_prepare (rank 0 only): prepare data_cfg when missing, else nothing."""
    try:
        prepare_dataset(data_cfg)
    except NoInputFiles as e:
        if DatasetMeta.find(data_cfg.dir):
            raise NoInputFiles(f"{e}. {data_cfg.dir} holds a prepared dataset: set data.auto_prepare=false to "
                               "train on it as it is") from e
        raise


def dataset_recipe(data_cfg, train_src: Sequence[Source], val_src: Sequence[Source], tokenizer_sha256: str) -> dict:
    """Everything the shards depend on. data.seq_len and data.seed are not in it: the loader applies them."""
    return {
        "format": FORMAT,
        "data.train": fingerprint(train_src),
        "data.validation": fingerprint(val_src),
        "data.val_fraction": data_cfg.val_fraction,
        "data.split_seed": data_cfg.split_seed,
        "data.text_field": data_cfg.text_field,
        "data.sample_by": data_cfg.sample_by,
        "data.max_train_tokens": data_cfg.max_train_tokens,
        "data.max_val_tokens": data_cfg.max_val_tokens,
        "data.shard_tokens": data_cfg.shard_tokens,
        "tokenizer sha256": tokenizer_sha256,
    }


def _sources(data_cfg) -> Tuple[List[Source], List[Source]]:
    if bool(data_cfg.validation) == (data_cfg.val_fraction > 0):
        raise DataError("give the validation split exactly one way: data.validation=[...] (a separate source) or "
                        f"data.val_fraction (held-out training documents), not both or neither "
                        f"(now data.validation={list(data_cfg.validation)}, data.val_fraction={data_cfg.val_fraction})")
    return (resolve_sources(data_cfg.train, "data.train", "train"),
            resolve_sources(data_cfg.validation, "data.validation", "validation"))


def _up_to_date(data_cfg, train_src, val_src) -> Optional[DatasetMeta]:
    """The prepared dataset when data.dir already holds exactly this one; checked without taking the lock, so
    that a read-only dataset directory works."""
    meta, tok_path = DatasetMeta.find(data_cfg.dir), Path(data_cfg.tokenizer.path)
    if meta is None or not tok_path.is_file():
        return None
    if not data_cfg.tokenizer.adopt and trained_differently(tok_path, tokenizer_recipe(data_cfg, train_src)):
        return None
    return meta if meta.recipe == dataset_recipe(data_cfg, train_src, val_src, sha256_file(tok_path)) else None


def _refuse_to_replace(data_dir: Path, old: Optional[DatasetMeta], recipe: dict) -> None:
    how = "pass --force to replace it, or set data.dir to another directory"
    if old:
        raise DataError(f"{data_dir} holds a different dataset ({recipe_changes(old.recipe, recipe)}); {how}")
    foreign = sorted(p.name for p in data_dir.iterdir() if SHARD_NAME.fullmatch(p.name) or p.name == "meta.json")
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise DataError(f"{data_dir} already holds {shown}, which no meta.json of this code describes; {how}")


def _build(data_cfg, tok: Tokenizer, train_src, val_src, recipe: dict) -> DatasetMeta:
    data_dir, start = Path(data_cfg.dir), time.time()
    staging = data_dir / f"{STAGING_PREFIX}{os.getpid()}"
    staging.mkdir()
    try:
        dtype = token_dtype(tok.vocab_size)
        train = ShardWriter(staging, "train", dtype, data_cfg.shard_tokens, cap=data_cfg.max_train_tokens)
        val = ShardWriter(staging, "validation", dtype, data_cfg.shard_tokens, cap=data_cfg.max_val_tokens)
        holdout = (val, data_cfg.val_fraction, data_cfg.split_seed) if data_cfg.val_fraction > 0 else None
        with tqdm(desc=f"tokenizing {data_cfg.name}", unit="tok", unit_scale=True, disable=None) as bar:
            texts = iter_texts(train_src, data_cfg.text_field, data_cfg.sample_by)
            _write_documents(texts, tok, train, holdout, bar)
            if val_src:
                _write_documents(iter_texts(val_src, data_cfg.text_field, data_cfg.sample_by), tok, val, None, bar)
        for writer, src, key in ((train, train_src, "data.train"), (val, val_src or train_src, "data.validation")):
            writer.finish()
            if writer.num_documents == 0:
                raise DataError(_empty_split_message(key, writer, src, holdout is not None))
        holdout_note = f" ({data_cfg.val_fraction:g} of the documents, split_seed {data_cfg.split_seed})"
        meta = DatasetMeta(
            name=data_cfg.name, dtype=dtype.name, vocab_size=tok.vocab_size, tokenizer_sha256=tok.sha256,
            tokenizer_path=str(tok.path.resolve()), eos_id=tok.eos_id, recipe=recipe,
            splits={"train": train.meta(describe(train_src)),
                    "validation": val.meta(describe(val_src) if val_src else describe(train_src) + holdout_note)},
            seconds=round(time.time() - start, 3),
        )
        _commit(staging, data_dir, meta)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    rate = sum(s.num_tokens for s in meta.splits.values()) / (time.time() - start)
    print(f"prepared {data_dir}: {_summary(meta, data_cfg.seq_len)}; {rate / 1e6:.2f} M tokens/s")
    return meta


def _write_documents(batches: Iterable[List[Optional[str]]], tok: Tokenizer, writer: "ShardWriter",
                     holdout: Optional[Tuple["ShardWriter", float, int]], bar: tqdm) -> None:
    """Encode batches of documents into writer (held-out ones into holdout's writer) until writer is full."""
    for texts in batches:
        docs = [t for t in texts if t and not t.isspace()]
        writer.skipped += len(texts) - len(docs)
        if holdout:
            val_writer, fraction, seed = holdout
            held = held_out(docs, fraction, seed)
            bar.update(val_writer.write(*encode_documents(tok, [d for d, h in zip(docs, held) if h])))
            docs = [d for d, h in zip(docs, held) if not h]
        bar.update(writer.write(*encode_documents(tok, docs)))
        if writer.full:
            break


def held_out(docs: Sequence[str], fraction: float, seed: int) -> List[bool]:
    """Whether each document belongs to validation: its blake2b hash, keyed by seed, falls below fraction."""
    key, threshold = seed.to_bytes(8, "little", signed=True), int(fraction * (1 << 64))
    return [int.from_bytes(hashlib.blake2b(d.encode("utf-8", "surrogatepass"), digest_size=8, key=key).digest(),
                           "little") < threshold for d in docs]


def encode_documents(tok: Tokenizer, docs: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
    """The ids of docs, each followed by EOS, as one array; and where each document ends in it."""
    dtype = token_dtype(tok.vocab_size)
    if not docs:
        return np.empty(0, dtype), np.empty(0, np.int64)
    pieces, first_piece = _cut_long_documents(docs) if tok.independent_lines else (docs, None)
    ids = tok.encode_batch(pieces)
    lengths = np.fromiter(map(len, ids), np.int64, count=len(ids))
    flat = np.fromiter(chain.from_iterable(ids), dtype, count=int(lengths.sum()))
    doc_lengths = lengths if first_piece is None else np.add.reduceat(lengths, first_piece)
    ends = np.cumsum(doc_lengths)  # without EOS
    return np.insert(flat, ends, tok.eos_id), ends + np.arange(1, len(docs) + 1)


def _cut_long_documents(docs: Sequence[str]) -> Tuple[List[str], Optional[np.ndarray]]:
    """Documents longer than PIECE_CHARS cut after newlines; first_piece[i] indexes document i's first piece."""
    if all(len(d) <= PIECE_CHARS for d in docs):
        return list(docs), None
    pieces, first_piece = [], []
    for doc in docs:
        first_piece.append(len(pieces))
        start = 0
        while len(doc) - start > PIECE_CHARS:
            cut = doc.rfind("\n", start, start + PIECE_CHARS) + 1 or doc.find("\n", start + PIECE_CHARS) + 1
            if cut == 0:  # no newline left: the rest is one piece
                break
            pieces.append(doc[start:cut])
            start = cut
        if start < len(doc):
            pieces.append(doc[start:])
    return pieces, np.array(first_piece)


class ShardWriter:
    """Appends one split's ids to numbered shard files of shard_tokens ids, hashing as it goes.

    With a cap, it stops after the document that reaches cap tokens (then .full is true).
    """

    def __init__(self, directory: Path, split: str, dtype: np.dtype, shard_tokens: int, cap: int = 0):
        self.directory, self.split, self.dtype = directory, split, dtype
        self.shard_tokens, self.cap = shard_tokens, cap
        self.num_tokens = self.num_documents = self.skipped = 0
        self.shards: List[ShardMeta] = []
        self._file, self._hash, self._in_shard = None, None, 0

    @property
    def full(self) -> bool:
        return self.cap > 0 and self.num_tokens >= self.cap

    def write(self, tokens: np.ndarray, ends: np.ndarray) -> int:
        """Append whole documents (tokens, with their end offsets); returns how many tokens were taken."""
        if self.full or len(ends) == 0:
            return 0
        if self.cap and self.num_tokens + len(tokens) > self.cap:
            last = int(np.searchsorted(ends, self.cap - self.num_tokens))  # the document that reaches the cap
            tokens, ends = tokens[: ends[last]], ends[: last + 1]
        self.num_documents += len(ends)
        written = len(tokens)
        while len(tokens):
            if self._file is None:
                self._file = open(self.directory / self._name(), "wb")
                self._hash, self._in_shard = hashlib.sha256(), 0
            part, tokens = tokens[: self.shard_tokens - self._in_shard], tokens[self.shard_tokens - self._in_shard:]
            part = np.ascontiguousarray(part, self.dtype)
            self._file.write(part.data)
            self._hash.update(part.data)
            self._in_shard += len(part)
            self.num_tokens += len(part)
            if self._in_shard == self.shard_tokens:
                self._close_shard()
        return written

    def finish(self) -> None:
        if self._file is not None:
            self._close_shard()

    def meta(self, source: str) -> SplitMeta:
        return SplitMeta(num_tokens=self.num_tokens, num_documents=self.num_documents,
                         skipped_documents=self.skipped, source=source, shards=self.shards)

    def _name(self) -> str:
        return f"{self.split}-{len(self.shards):05d}.bin"

    def _close_shard(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        path = self.directory / self._name()
        self.shards.append(ShardMeta(file=path.name, num_tokens=self._in_shard, sha256=self._hash.hexdigest(),
                                     spot_sha256=spot_sha256(path)))
        self._file = None


def _commit(staging: Path, data_dir: Path, meta: DatasetMeta) -> None:
    """Swap the staged shards in. meta.json goes first and comes back last, so no reader ever sees a meta.json
    describing shards that are not (yet, or any more) the ones on disk."""
    (data_dir / "meta.json").unlink(missing_ok=True)
    keep = {s.file for split in meta.splits.values() for s in split.shards}
    for name in keep:
        os.replace(staging / name, data_dir / name)
    for path in data_dir.iterdir():  # shards of the dataset this one replaces
        if SHARD_NAME.fullmatch(path.name) and path.name not in keep:
            path.unlink()
    fsync_dir(data_dir)
    meta.save(data_dir)


def _empty_split_message(key: str, writer: "ShardWriter", sources: Sequence[Source], held_out: bool) -> str:
    if key == "data.validation" and held_out:
        return ("no document of data.train fell into the validation split; raise data.val_fraction or give a "
                "separate source in data.validation")
    return (f"{key} has no text: the {writer.skipped:,} documents read from {describe(sources)} are all empty or "
            "whitespace")


def _summary(meta: DatasetMeta, seq_len: int) -> str:
    parts = []
    for name, s in meta.splits.items():
        size = sum(sh.num_tokens for sh in s.shards) * meta.np_dtype.itemsize
        parts.append(f"{name} {s.num_tokens:,} tokens in {s.num_documents:,} documents, {len(s.shards)} shard"
                     f"{'s' if len(s.shards) != 1 else ''} ({size / 1e6:.1f} MB), {s.num_samples(seq_len):,} samples")
    return f"{'; '.join(parts)} at seq_len {seq_len}, {meta.dtype}"
