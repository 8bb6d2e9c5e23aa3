"""What the analysis command reads: a model (one of our checkpoints or an exported Hugging Face folder) and
tokens (prepared shards or text files). The analyses themselves take a model and token tensors, so they are
testable without any of this; these functions are the glue for `launch/analyze.py`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Sequence, Tuple, Union

import numpy as np
import torch

from ..errors import AnalysisError, DataError
from ..pretrained import Pretrained
from .angular import sliding_windows, window_starts


# Tokens -------------------------------------------------------------------------------------------------------
# Two views of a source: rows of seq_len + 1 tokens (samples to evaluate or train on), and sliding windows of
# seq_len tokens for the angular distance.


class TextSource:
    """Text files tokenized with the model's tokenizer, read as `launch/evaluate.py` reads them (a .txt file,
    gzipped or not, is one document; a .jsonl/.parquet row is one), each document after an EOS (the separator
    the model was trained with), all concatenated."""

    def __init__(self, files: Sequence[Union[str, Path]], subject: Pretrained, seq_len: int):
        if subject.tokenizer is None or not subject.tokenizer.is_file():
            raise AnalysisError(
                f"--text needs the model's tokenizer, but {subject.tokenizer or 'none'} is not a file; analyze the "
                "training run (its config names the tokenizer) or use --shards DIR"
            )
        from ..data import Tokenizer, read_documents
        from ..data.meta import sha256_file

        subject.check_tokenizer(sha256_file(subject.tokenizer), str(subject.tokenizer))
        tokenizer = Tokenizer.load(subject.tokenizer)
        ids: List[int] = []
        for text in read_documents([str(f) for f in files], "--text"):
            ids += [tokenizer.eos_id] + tokenizer.encode(text)
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
            raise AnalysisError(str(e)) from e


class ShardSource:
    """A prepared data directory, read through the data package exactly as the trainer evaluates it."""

    def __init__(self, data_dir: Path, subject: Pretrained, seq_len: int, split: str = "validation"):
        from ..data import DatasetMeta

        try:
            meta = DatasetMeta.load(data_dir)
        except DataError as e:
            raise AnalysisError(f"{e} (or analyse other tokens: --shards DIR or --text FILE...)") from e
        subject.check_tokenizer(meta.tokenizer_sha256, f"{data_dir}")
        self.data_dir, self.seq_len, self.split = Path(data_dir), seq_len, split
        self.name = f"{data_dir} ({split})"

    def rows(self, samples: int) -> torch.Tensor:
        """The first `samples` valid rows (0 = all) of the split: (N, seq_len + 1), the trainer's eval samples."""
        from ..data import eval_batches

        try:
            batches = eval_batches(str(self.data_dir), self.seq_len, 64, 0, 1, max_samples=samples, split=self.split)
            rows = [tokens[valid] for tokens, valid in batches]
        except DataError as e:
            raise AnalysisError(f"--shards {self.data_dir}: {e}") from e
        if not rows:
            raise AnalysisError(f"--shards {self.data_dir}: the {self.split} split has no samples")
        return torch.cat(rows)

    def windows(self, stride: int, limit: int) -> torch.Tensor:
        """(N, seq_len) sliding windows over the whole split, at most `limit` of them (0 = all), spread evenly;
        read one by one, so a large split is never loaded whole."""
        from ..data import TokenStream

        try:
            split = TokenStream(self.data_dir, self.split)
            starts = window_starts(split.num_tokens, self.seq_len, stride, limit)
        except (DataError, ValueError) as e:
            raise AnalysisError(f"--shards {self.data_dir}: {e}") from e
        return torch.from_numpy(np.stack([split.read(int(s), self.seq_len) for s in starts]).astype(np.int64))


def as_batches(rows: torch.Tensor, batch_size: int) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """(N, T+1) rows -> the (tokens, valid) batches `mixln_dist.evaluation` takes."""
    return [(b, torch.ones(len(b), dtype=torch.bool)) for b in rows.split(batch_size)]
