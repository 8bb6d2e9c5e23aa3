"""Batches from prepared shards: TrainLoader (shuffled, resumable, world-size independent) and eval_batches.

A split's shards are one memory-mapped stream of N tokens. Sample i is tokens[i*L : i*L + L + 1] (L = seq_len):
inputs are its first L tokens and targets its last L, and consecutive samples share one boundary token, so there
are (N - 1) // L samples. A sample may span two shards.

Training order: epoch e visits the samples in the order of a permutation drawn from (seed, e); global batch k of
the epoch is positions [k*G, (k+1)*G) of it, and data-parallel rank r of W takes rows [r*G/W, (r+1)*G/W). The
sequence of global batches depends on seed, G and the data only, never on W, so a run resumed on another number of
ranks continues it exactly. The last N_samples % G samples of each permutation (a different few every epoch) are
left out.

Memory: shards are memory-mapped (without read-ahead, see _map), so the process's own memory does not grow with
the corpus. Its RSS does count the shard pages it has read, but those are page cache: shared by the ranks of a
node and dropped by the kernel when memory is short. The one per-epoch structure is the permutation, 4 bytes per
sample (8 beyond 2**32 samples): 0.2 GB for 50 M samples (100 B tokens at L=2048). Resuming seeks in O(1) in the
samples consumed: the epoch's permutation is drawn again (seconds for 50 M samples), no batch is replayed.
"""

from __future__ import annotations

import math
import mmap
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import numpy as np
import torch

from ..errors import DataError
from .meta import DatasetMeta, PathLike


class TokenStream:
    """One split's shards as a single read-only sequence of token ids. With `vocab_size`, every sample read is
    checked to hold only ids below it (a damaged shard would otherwise index past the embedding: an IndexError on
    the CPU, a device-side assert on a GPU)."""

    def __init__(self, data_dir: PathLike, split: str, vocab_size: Optional[int] = None):
        self.data_dir, self.split, self.vocab_size = Path(data_dir), split, vocab_size
        meta = DatasetMeta.load(data_dir)
        if split not in meta.splits:
            raise DataError(f"{data_dir} has no {split!r} split (it has {', '.join(meta.splits)})")
        self.shards: List[np.ndarray] = []
        for shard in meta.splits[split].shards:
            path = self.data_dir / shard.file
            if not path.is_file() or path.stat().st_size != shard.num_tokens * meta.np_dtype.itemsize:
                raise DataError(f"shard {path} is missing or not the size meta.json records; the dataset is damaged: "
                                "prepare it again with --force")
            self.shards.append(_map(path, meta.np_dtype))
        self.starts = np.cumsum([0] + [len(s) for s in self.shards])  # token offset of each shard, then the end
        self.num_tokens = int(self.starts[-1])

    def num_samples(self, seq_len: int) -> int:
        return max(0, (self.num_tokens - 1) // seq_len)

    def read(self, start: int, length: int) -> np.ndarray:
        """tokens[start : start + length], across shard boundaries."""
        if start < 0 or start + length > self.num_tokens:
            raise IndexError(f"tokens [{start}, {start + length}) are outside the {self.split} split's "
                             f"{self.num_tokens} tokens")
        if length == 0:
            return self.shards[0][:0]
        k = int(np.searchsorted(self.starts, start, side="right")) - 1
        parts = []
        while length > 0:
            offset = start - int(self.starts[k])
            part = self.shards[k][offset: offset + length]
            parts.append(part)
            start, length, k = start + len(part), length - len(part), k + 1
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def samples(self, indices, seq_len: int) -> np.ndarray:
        """Samples `indices` as an int64 array of shape (len(indices), seq_len + 1)."""
        out = np.empty((len(indices), seq_len + 1), np.int64)
        for row, i in enumerate(indices):
            out[row] = self.read(int(i) * seq_len, seq_len + 1)
        if self.vocab_size is not None and out.size and out.max() >= self.vocab_size:
            row = int(np.argmax(out.max(axis=1)))
            start = int(indices[row]) * seq_len
            shard = self.shards_of(start, seq_len + 1)
            raise DataError(
                f"sample {int(indices[row])} of the {self.split} split of {self.data_dir} (tokens {start:,} to "
                f"{start + seq_len:,}, in {shard}) holds token id {int(out[row].max())}, but model.vocab_size is "
                f"{self.vocab_size}: the shard is damaged or was prepared with another tokenizer. Check it with "
                "`launch/prepare_data.py --verify` and prepare it again with --force"
            )
        return out

    def shards_of(self, start: int, length: int) -> str:
        """The file names holding tokens [start, start + length), for messages."""
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        last = int(np.searchsorted(self.starts, start + length - 1, side="right")) - 1
        files = DatasetMeta.load(self.data_dir).splits[self.split].shards[first: last + 1]
        return ", ".join(f.file for f in files)


def _map(path: Path, dtype: np.dtype) -> np.ndarray:
    """A read-only, memory-mapped view of a shard file (no file descriptor stays open).

    MADV_RANDOM because samples are read at random offsets: without it the kernel reads ahead around every
    0.5 KB sample, about 40 KB here (80x the I/O, and as much page cache counted in the process's RSS).
    """
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if hasattr(mapped, "madvise"):
        mapped.madvise(mmap.MADV_RANDOM)
    return np.frombuffer(mapped, dtype=dtype)


class TrainLoader:
    """This rank's slice of every global batch, in an order that survives restarts and changes of world size."""

    def __init__(self, data_dir: PathLike, seq_len: int, global_batch_size: int, dp_rank: int, dp_world: int,
                 seed: int, split: str = "train", vocab_size: Optional[int] = None):
        if not 0 <= dp_rank < dp_world:
            raise DataError(f"dp_rank={dp_rank} is not a rank of a world of {dp_world}")
        if global_batch_size % dp_world:
            raise DataError(f"the global batch of {global_batch_size} samples does not split evenly over {dp_world} "
                            f"data-parallel ranks; make train.global_batch_size a multiple of {dp_world}")
        self.stream = TokenStream(data_dir, split, vocab_size)
        self.seq_len, self.global_batch_size, self.seed = seq_len, global_batch_size, seed
        self.num_samples = self.stream.num_samples(seq_len)
        if self.num_samples < global_batch_size:
            raise DataError(
                f"the {split} split of {data_dir} has {self.num_samples:,} samples of data.seq_len + 1 = {seq_len + 1} "
                f"tokens, fewer than one global batch of {global_batch_size}; lower train.global_batch_size or "
                "data.seq_len, or prepare more text"
            )
        self.local_batch_size = global_batch_size // dp_world
        self._first_row = dp_rank * self.local_batch_size
        self.samples_per_epoch = self.num_samples // global_batch_size * global_batch_size
        self.epoch = 0
        self.consumed = 0  # global samples taken in this epoch
        self._order_epoch, self._order = -1, np.empty(0, np.int64)

    def next_batch(self) -> torch.Tensor:
        """int64 (global_batch_size // dp_world, seq_len + 1): this rank's rows of the next global batch."""
        self._wrap_epoch()
        first = self.consumed + self._first_row
        rows = self._epoch_order()[first: first + self.local_batch_size]
        self.consumed += self.global_batch_size
        return torch.from_numpy(self.stream.samples(rows, self.seq_len))

    def samples_of(self, batch: int) -> np.ndarray:
        """The sample indices of global batch `batch` (0-based, counted over the whole run, all ranks' rows), for
        finding which data a given step trained on (step s trains on batch s - 1)."""
        per_epoch = self.num_samples // self.global_batch_size
        epoch, k = divmod(batch, per_epoch)
        order = _permutation(self.num_samples, self.seed, epoch)
        return order[k * self.global_batch_size: (k + 1) * self.global_batch_size].astype(np.int64)

    def skip(self, batches: int) -> None:
        """Move past the next `batches` global batches without reading them (a rollback skips a bad stretch)."""
        for _ in range(batches):
            self._wrap_epoch()
            self.consumed += self.global_batch_size

    def _wrap_epoch(self) -> None:
        if self.consumed + self.global_batch_size > self.num_samples:
            self.epoch, self.consumed = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed, "seed": self.seed,
                "num_samples": self.num_samples, "seq_len": self.seq_len}

    def load_state_dict(self, state: dict) -> None:
        """Continue where state left off, whatever the world size (and global batch size) that saved it."""
        for key, mine in (("seed", self.seed), ("seq_len", self.seq_len), ("num_samples", self.num_samples)):
            if key in state and state[key] != mine:
                fix = {"seed": f"set data.seed={state['seed']} to resume",
                       "seq_len": f"set data.seq_len={state['seq_len']} to resume",
                       "num_samples": "the data changed since the checkpoint; resume with the data it was trained on"}
                raise DataError(f"the checkpoint's data order has {key}={state[key]} but this loader has {mine}; "
                                f"{fix[key]}")
        epoch, consumed = int(state["epoch"]), int(state["consumed"])
        if epoch < 0 or not 0 <= consumed <= self.num_samples:
            raise DataError(f"data loader state {state} is out of range for {self.num_samples} samples")
        self.epoch, self.consumed = epoch, consumed

    def _epoch_order(self) -> np.ndarray:
        if self._order_epoch != self.epoch:
            self._order, self._order_epoch = _permutation(self.num_samples, self.seed, self.epoch), self.epoch
        return self._order


def _permutation(num_samples: int, seed: int, epoch: int) -> np.ndarray:
    """Epoch `epoch`'s order of the samples, drawn from (seed, epoch) alone."""
    order = np.arange(num_samples, dtype=np.uint32 if num_samples <= np.iinfo(np.uint32).max else np.int64)
    np.random.default_rng([seed, epoch]).shuffle(order)
    return order


def eval_batches(data_dir: PathLike, seq_len: int, micro_batch_size: int, dp_rank: int, dp_world: int,
                 max_samples: int = 0, split: str = "validation",
                 vocab_size: Optional[int] = None) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """(tokens int64 (micro_batch_size, seq_len + 1), valid bool (micro_batch_size,)) over the first max_samples
    samples (all when 0), in order.

    Rank r takes a contiguous share of ceil(M / W) samples; every rank yields the same number of batches (so
    collectives line up), padding past its share with rows of zeros marked valid=False. Across ranks the valid
    rows are exactly the first M samples, each once, for any world size.
    """
    stream = TokenStream(data_dir, split, vocab_size)
    available = stream.num_samples(seq_len)
    if available == 0:
        raise DataError(f"the {split} split of {data_dir} has {stream.num_tokens:,} tokens, fewer than "
                        f"data.seq_len + 1 = {seq_len + 1}; lower data.seq_len or give it more text")
    total = min(max_samples, available) if max_samples > 0 else available
    share = math.ceil(total / dp_world)
    first, last = min(dp_rank * share, total), min((dp_rank + 1) * share, total)
    for b in range(math.ceil(share / micro_batch_size)):
        start = first + b * micro_batch_size
        indices = range(start, min(start + micro_batch_size, last))
        tokens = np.zeros((micro_batch_size, seq_len + 1), np.int64)
        tokens[: len(indices)] = stream.samples(indices, seq_len)
        valid = np.arange(micro_batch_size) < len(indices)
        yield torch.from_numpy(tokens), torch.from_numpy(valid)
