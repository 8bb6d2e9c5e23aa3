"""What the analysis command reads: a model (one of our checkpoints or an exported Hugging Face folder) and
tokens (prepared shards or text files). The analyses themselves take a model and token tensors, so they are
testable without any of this; these functions are the glue for `launch/analyze.py`."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..config import REPO_ROOT
from ..model import Transformer
from .angular import sliding_windows, window_starts


class AnalysisError(ValueError):
    """An analysis that cannot run as asked; the message names the problem and the fix."""


@dataclass
class Subject:
    """A model under analysis and what is known about where it came from."""

    model: Transformer
    label: str  # for titles and the report: "debug-mix, step 600"
    meta: dict  # written next to every result
    default_out: Optional[Path]  # where results go without --out
    tokenizer: Optional[Path]  # the SentencePiece model its token ids mean
    tokenizer_sha256: Optional[str]  # of the tokenizer it was trained with, where recorded
    data_dir: Optional[Path]  # the run's prepared shards
    seq_len: int  # the training sequence length


def load_subject(path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> Subject:
    """A run directory, a `checkpoints/step_NNNNNNN` folder, or a Hugging Face folder (ours or a stock Llama)."""
    path = Path(path)
    if not path.exists():
        raise AnalysisError(f"{path} does not exist; give a run directory, a checkpoint folder or a Hugging Face "
                            "folder")
    if (path / "config.json").is_file():
        return _hf_subject(path, device)
    from ..checkpoint import CheckpointError, load_model

    try:
        model, cfg, ref = load_model(path, device)
    except CheckpointError as e:
        raise AnalysisError(str(e)) from None
    run_name = ref.root.parent.name
    meta = {"path": str(ref.path), "run_name": run_name, "step": ref.step, "model": cfg.model.name,
            "scheme": cfg.norm.scheme, "layer_kinds": model.layer_kinds}
    return Subject(model, f"{run_name}, step {ref.step}", meta, ref.root.parent / "analysis" / ref.tag,
                   _here(cfg.data.tokenizer.path), ref.state().get("tokenizer_sha256"), _here(cfg.data.dir),
                   cfg.data.seq_len)


def _hf_subject(path: Path, device) -> Subject:
    """Reading a Hugging Face folder is the export package's job; imported here, lazily, so that analysing our
    own checkpoints never depends on it. An export of ours records its source run, used for the defaults."""
    from ..export.convert import INFO_FILE, ExportError, import_hf_model

    try:
        model = import_hf_model(path, device=device)
    except ExportError as e:
        raise AnalysisError(str(e)) from None
    info = json.loads((path / INFO_FILE).read_text()) if (path / INFO_FILE).is_file() else {}
    source, data = info.get("source", {}), info.get("mixln_config", {}).get("data", {})
    name = path.resolve().name
    meta = {"path": str(path), "run_name": name, "step": source.get("step"), "model": model.cfg.name,
            "scheme": model.norm_cfg.scheme, "layer_kinds": model.layer_kinds}
    tokenizer = path / "tokenizer.model"
    return Subject(model, name if meta["step"] is None else f"{name}, step {meta['step']}", meta, None,
                   tokenizer if tokenizer.is_file() else None, source.get("tokenizer_sha256"),
                   _here(data["dir"]) if data.get("dir") else None, data.get("seq_len") or model.cfg.max_seq_len)


def _here(path: str) -> Path:
    """A path from a run's config. Relative ones are relative to where training started, usually the checkout
    (the default job's data.dir): try the current folder, then the checkout."""
    path = Path(path)
    if path.is_absolute() or path.exists() or not (REPO_ROOT / path).exists():
        return path
    return REPO_ROOT / path


def _check_tokenizer(sha256: str, subject: Subject, what: str) -> None:
    if subject.tokenizer_sha256 and sha256 != subject.tokenizer_sha256:
        raise AnalysisError(f"{what} uses tokenizer sha256 {sha256[:12]}, but {subject.label} was trained with "
                            f"{subject.tokenizer_sha256[:12]}: its token ids would mean other pieces; use data "
                            "prepared with the model's tokenizer")


# Tokens -------------------------------------------------------------------------------------------------------
# Two views of a source: rows of seq_len + 1 tokens (samples to evaluate or train on), and sliding windows of
# seq_len tokens for the angular distance.


class TextSource:
    """Text files (plain or .gz) tokenized with the model's tokenizer, each one document read after an EOS (the
    separator the model was trained with, as `launch/evaluate.py` reads text), all concatenated."""

    def __init__(self, files: Sequence[Union[str, Path]], subject: Subject, seq_len: int):
        if subject.tokenizer is None or not subject.tokenizer.is_file():
            raise AnalysisError(
                f"--text needs the model's tokenizer, but {subject.tokenizer or 'none'} is not a file; analyze the "
                "training run (its config names the tokenizer) or use --shards DIR"
            )
        from ..data import Tokenizer
        from ..data.meta import sha256_file

        _check_tokenizer(sha256_file(subject.tokenizer), subject, str(subject.tokenizer))
        tokenizer = Tokenizer.load(subject.tokenizer)
        ids: List[int] = []
        for file in map(Path, files):
            if not file.is_file():
                raise AnalysisError(f"--text {file}: no such file")
            with (gzip.open if file.suffix == ".gz" else open)(file, "rt", encoding="utf-8") as f:
                ids += [tokenizer.eos_id] + tokenizer.encode(f.read())
        self.tokens = torch.tensor(ids, dtype=torch.int64)
        self.seq_len = seq_len
        self.name = ", ".join(map(str, files))

    def rows(self, samples: int) -> torch.Tensor:
        """(N, seq_len + 1) samples laid out as the data package lays out shards (sample i is tokens
        [i * seq_len, (i + 1) * seq_len]: each target once), the first `samples` of them (0 = all)."""
        if self.tokens.numel() < self.seq_len + 1:
            raise AnalysisError(f"the text has {self.tokens.numel()} tokens, fewer than one sample of "
                                f"{self.seq_len + 1}; give more text or a smaller --seq-len")
        rows = self.tokens.unfold(0, self.seq_len + 1, self.seq_len)
        return rows[:samples] if samples else rows

    def windows(self, stride: int, limit: int) -> torch.Tensor:
        """(N, seq_len) sliding windows over the whole text, at most `limit` of them (0 = all), spread evenly."""
        try:
            return sliding_windows(self.tokens, self.seq_len, stride, limit)
        except ValueError as e:
            raise AnalysisError(str(e)) from None


class ShardSource:
    """A prepared data directory, read through the data package exactly as the trainer evaluates it."""

    def __init__(self, data_dir: Path, subject: Subject, seq_len: int, split: str = "validation"):
        from ..data import DataError, DatasetMeta

        try:
            meta = DatasetMeta.load(data_dir)
        except DataError as e:
            raise AnalysisError(f"{e} (or analyse other tokens: --shards DIR or --text FILE...)") from None
        _check_tokenizer(meta.tokenizer_sha256, subject, f"{data_dir}")
        self.data_dir, self.seq_len, self.split = Path(data_dir), seq_len, split
        self.name = f"{data_dir} ({split})"

    def rows(self, samples: int) -> torch.Tensor:
        """The first `samples` valid rows (0 = all) of the split: (N, seq_len + 1), the trainer's eval samples."""
        from ..data import DataError, eval_batches

        try:
            batches = eval_batches(str(self.data_dir), self.seq_len, 64, 0, 1, max_samples=samples, split=self.split)
            rows = [tokens[valid] for tokens, valid in batches]
        except DataError as e:
            raise AnalysisError(f"--shards {self.data_dir}: {e}") from None
        if not rows:
            raise AnalysisError(f"--shards {self.data_dir}: the {self.split} split has no samples")
        return torch.cat(rows)

    def windows(self, stride: int, limit: int) -> torch.Tensor:
        """(N, seq_len) sliding windows over the whole split, at most `limit` of them (0 = all), spread evenly;
        read one by one, so a large split is never loaded whole."""
        from ..data import DataError, TokenStream

        try:
            split = TokenStream(self.data_dir, self.split)
            starts = window_starts(split.num_tokens, self.seq_len, stride, limit)
        except (DataError, ValueError) as e:
            raise AnalysisError(f"--shards {self.data_dir}: {e}") from None
        return torch.from_numpy(np.stack([split.read(int(s), self.seq_len) for s in starts]).astype(np.int64))


def as_batches(rows: torch.Tensor, batch_size: int) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """(N, T+1) rows -> the (tokens, valid) batches `mixln_dist.evaluation` takes."""
    return [(b, torch.ones(len(b), dtype=torch.bool)) for b in rows.split(batch_size)]
