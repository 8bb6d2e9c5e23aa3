"""SentencePiece tokenizers: train one on a data config's text, or adopt an existing .model (LLaMA, T5).

Trained tokenizers are lossless: identity normalization, no dummy prefix, whitespace kept as it is, digits split,
and byte pieces for characters outside the vocabulary, so decode(encode(text)) == text for any text. Their special
ids are fixed: pad 0, bos 1, eos 2, unk 3. An adopted tokenizer keeps its own (T5: pad 0, eos 1, unk 2, no bos;
LLaMA: unk 0, bos 1, eos 2, no pad), and Tokenizer reports -1 for a special piece the model lacks.

Training text is the non-blank lines of data.train's documents. A seeded reservoir keeps at most
data.tokenizer.max_sentences of them (SentencePiece's own sampling cannot be seeded); for a hub source it stops
at the first max_sentences lines instead of streaming the whole dataset. With the same seed and data.num_proc the
.model is the same byte for byte (the file records its thread count; BPE pieces do not depend on it, unigram
scores do slightly).

A sidecar `<path>.json` records what the tokenizer was trained from (its recipe) and its sha256: training again
with the same recipe is a no-op, and a .model trained differently, or not by this code, is replaced only with
force.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from functools import cached_property
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

import numpy as np
import sentencepiece as spm

from ..errors import DataError
from ..files import write_atomic
from .meta import PathLike, locked, recipe_changes, sha256_file
from .sources import Source, describe, fingerprint, iter_lines, resolve_sources

SPECIAL_IDS = {"pad_id": 0, "bos_id": 1, "eos_id": 2, "unk_id": 3}


class Tokenizer:
    """A SentencePiece model and its checksum. encode() adds no BOS/EOS."""

    def __init__(self, path: PathLike, num_threads: int = 0):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"tokenizer {self.path} does not exist; train it with `python launch/train_tokenizer.py` "
                            "(plus your overrides) or point data.tokenizer.path at a SentencePiece .model")
        self.sha256 = sha256_file(self.path)
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        except (RuntimeError, OSError) as e:
            raise DataError(f"{self.path} is not a SentencePiece model ({e}); "
                            "point data.tokenizer.path at a .model file") from e
        self.vocab_size: int = self.sp.get_piece_size()
        self.bos_id: int = self.sp.bos_id()
        self.eos_id: int = self.sp.eos_id()
        self.pad_id: int = self.sp.pad_id()
        self.unk_id: int = self.sp.unk_id()
        self.num_threads = num_threads or available_cores()

    @classmethod
    def load(cls, path: PathLike, num_threads: int = 0) -> "Tokenizer":
        return cls(path, num_threads)

    def encode(self, text: str) -> List[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> List[List[int]]:
        """One SentencePiece call, spread over num_threads C++ threads that run without the GIL."""
        return self.sp.encode(list(texts), num_threads=self.num_threads)

    def decode(self, ids) -> str:
        return self.sp.decode(ids.tolist() if hasattr(ids, "tolist") else list(ids))

    @cached_property
    def independent_lines(self) -> bool:
        """Whether encoding a text equals encoding its newline-terminated pieces one by one and concatenating.

        True when the normalizer leaves the text alone (identity, no dummy prefix, whitespace kept), no piece
        contains a newline (so no piece can span the end of a line) and unknown characters fall back to bytes
        (SentencePiece merges runs of <unk>, which would span it). Our trained tokenizers qualify; LLaMA's and
        T5's do not (dummy prefix, NFKC). prepare uses it to cut long documents, which BPE encodes slowly.
        """
        try:
            from sentencepiece import sentencepiece_model_pb2  # needs protobuf
        except ImportError:  # then long documents are encoded whole: slower, equally exact
            return False
        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(self.sp.serialized_model_proto())
        norm, byte = proto.normalizer_spec, sentencepiece_model_pb2.ModelProto.SentencePiece.BYTE
        return (
            norm.name == "identity" and not norm.add_dummy_prefix and not norm.remove_extra_whitespaces
            and proto.trainer_spec.byte_fallback and not proto.trainer_spec.treat_whitespace_as_suffix
            and not any("\n" in p.piece for p in proto.pieces if p.type != byte)
        )

    def __repr__(self) -> str:
        return (f"Tokenizer({str(self.path)!r}, {self.vocab_size} pieces, pad {self.pad_id}, bos {self.bos_id}, "
                f"eos {self.eos_id}, unk {self.unk_id}, sha256 {self.sha256[:12]})")


def available_cores() -> int:
    """Cores this process may run on (the affinity mask, which schedulers and containers narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def train_tokenizer(data_cfg, force: bool = False) -> Tokenizer:
    """data_cfg's tokenizer: trained on data.train (a no-op when up to date), or adopted (data.tokenizer.adopt)."""
    if data_cfg.tokenizer.adopt:
        return adopt_tokenizer(data_cfg)
    sources = resolve_sources(data_cfg.train, "data.train", "train")
    with locked(Path(data_cfg.dir)):
        return tokenizer_for(data_cfg, sources, force)


def tokenizer_for(data_cfg, sources: Sequence[Source], force: bool) -> Tokenizer:
    """Adopt, reuse or train data_cfg's tokenizer. The caller holds the data directory's lock."""
    if data_cfg.tokenizer.adopt:
        return adopt_tokenizer(data_cfg)
    path = Path(data_cfg.tokenizer.path)
    recipe = tokenizer_recipe(data_cfg, sources)
    if path.exists() and not force:
        problem = trained_differently(path, recipe)
        if problem:
            raise DataError(f"{problem}; pass --force to train it again (then prepare the datasets built with it "
                            "again too), or set data.tokenizer.path to a new file")
        print(f"tokenizer {path} is up to date")
        return Tokenizer(path, data_cfg.num_proc)
    return _train(data_cfg, sources, recipe)


def adopt_tokenizer(data_cfg) -> Tokenizer:
    path, expected = Path(data_cfg.tokenizer.path), data_cfg.tokenizer.vocab_size
    if not path.is_file():
        raise DataError(f"data.tokenizer.adopt=true but {path} does not exist; download the SentencePiece model to "
                        "adopt (T5's spiece.model, LLaMA's tokenizer.model) and set data.tokenizer.path to it")
    tok = Tokenizer(path, data_cfg.num_proc)
    if tok.vocab_size != expected:
        raise DataError(f"adopted tokenizer {path} has {tok.vocab_size} pieces but data.tokenizer.vocab_size="
                        f"{expected}; set data.tokenizer.vocab_size={tok.vocab_size} if this is the right model")
    if tok.eos_id < 0:
        raise DataError(f"tokenizer {path} has no end-of-sequence piece, so documents could not be told apart in "
                        "the packed stream; adopt a tokenizer that has one")
    return tok


def tokenizer_recipe(data_cfg, sources: Sequence[Source]) -> dict:
    """Everything a trained tokenizer depends on (data.sample_by is not: the lines are the same)."""
    t = data_cfg.tokenizer
    return {
        "data.train": fingerprint(sources),
        "data.text_field": data_cfg.text_field,
        "data.tokenizer.model_type": t.model_type,
        "data.tokenizer.vocab_size": t.vocab_size,
        "data.tokenizer.character_coverage": t.character_coverage,
        "data.tokenizer.max_sentences": t.max_sentences,
        "data.tokenizer.seed": t.seed,
    }


def trained_differently(path: Path, recipe: dict) -> Optional[str]:
    """None when path was trained by this code from recipe; otherwise what is wrong with it."""
    sidecar = sidecar_path(path)
    try:
        record = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        record = {}
    if not isinstance(record, dict) or record.get("sha256") != sha256_file(path):
        return (f"{path} exists but was not trained by mixln_dist from a data config (no matching {sidecar.name}); "
                "set data.tokenizer.adopt=true to use it as it is")
    if record.get("recipe") != recipe:
        return f"tokenizer {path} was trained differently ({recipe_changes(record.get('recipe', {}), recipe)})"
    return None


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def sample_lines(batches: Iterable[List[str]], k: int, seed: int, stop_when_full: bool = False) -> List[str]:
    """A uniform random sample of at most k lines (reservoir sampling), the same for the same seed and input.

    Line number n (0-based) beyond the first k replaces a random slot j in [0, n] when j < k; the draws are
    vectorized per batch, and only the few replacements touch Python. stop_when_full stops at the first k lines.
    """
    rng = np.random.default_rng(seed)
    sample: List[str] = []
    seen = 0
    for lines in batches:
        fill = lines[: k - len(sample)]
        sample += fill
        rest = lines[len(fill):]
        if rest and stop_when_full:
            break
        if rest:
            slots = rng.integers(0, seen + len(fill) + np.arange(len(rest)) + 1)
            for i in np.flatnonzero(slots < k):
                sample[slots[i]] = rest[i]
        seen += len(lines)
    return sample


def _train(data_cfg, sources: Sequence[Source], recipe: dict) -> Tokenizer:
    t, path = data_cfg.tokenizer, Path(data_cfg.tokenizer.path)
    start = time.time()
    threads = data_cfg.num_proc or available_cores()
    lines = sample_lines(iter_lines(sources, data_cfg.text_field, data_cfg.sample_by), t.max_sentences, t.seed,
                         stop_when_full=any(s.is_hub for s in sources))
    if not lines:
        raise DataError(f"data.train has no text: every document in {describe(sources)} is empty or whitespace")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=model,
            model_type=t.model_type, vocab_size=t.vocab_size, character_coverage=t.character_coverage,
            # Lossless: decode(encode(text)) == text.
            normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
            byte_fallback=True, split_digits=True, **SPECIAL_IDS,
            # The sample is already drawn (seeded): SentencePiece takes all of it, in order.
            input_sentence_size=0, shuffle_input_sentence=False,
            num_threads=threads, minloglevel=2,
        )
    except RuntimeError as e:
        raise DataError(f"SentencePiece cannot train a {t.model_type} tokenizer with data.tokenizer.vocab_size="
                        f"{t.vocab_size} on {len(lines):,} lines ({e}); lower the vocabulary size or give it more "
                        "text") from e
    data = model.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"sha256": hashlib.sha256(data).hexdigest(), "recipe": recipe, "lines": len(lines),
              "num_threads": threads, "seconds": round(time.time() - start, 2)}
    # The sidecar first: a crash between the two writes leaves a .model that does not match it, never one that
    # looks up to date but is not.
    write_atomic(sidecar_path(path), json.dumps(record, indent=1).encode())
    write_atomic(path, data)
    tok = Tokenizer(path, data_cfg.num_proc)
    print(f"trained tokenizer {path}: {t.model_type}, {tok.vocab_size} pieces, on {len(lines):,} lines in "
          f"{record['seconds']:.1f} s (sha256 {tok.sha256[:12]})")
    return tok
