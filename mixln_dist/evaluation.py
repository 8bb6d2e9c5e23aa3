"""The loss, computed one way for training, the trainer's validation, `launch/evaluate.py` and the diagnostics, so
their numbers agree: next-token cross-entropy (nats), its mean over every target token of the samples.

Beyond the trainer's fixed-length samples (`loss_sums`), long text is scored with sliding windows
(`sliding_window_sums`: every token once, with as much left context as the window allows), and bits per byte
divide the same summed loss by the UTF-8 bytes the scored tokens stand for (`piece_byte_lengths`), which makes
models with different tokenizers comparable.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Iterator, List, Sequence, Tuple

import torch

# Our model (or the DeepSpeed engine around it): (inputs (B, T), targets=(B, T), reduction=) -> fp32 loss, computed
# without ever holding the full logits (mixln_dist/model/loss.py).
Forward = Callable[..., torch.Tensor]


def next_token_loss(forward: Forward, tokens: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of predicting tokens[:, 1:] from tokens[:, :-1] (tokens: (B, T+1)), in fp32 whatever the
    model computes in: the mean over every target (the training loss), or per target, (B, T), with "none"."""
    return forward(tokens[:, :-1], targets=tokens[:, 1:], reduction=reduction)


def token_losses(forward: Forward, tokens: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each target of tokens (B, T+1) -> (B, T) float32."""
    return next_token_loss(forward, tokens, reduction="none")


def perplexity(loss: float) -> float:
    """exp(mean loss); clamped because exp overflows a float above ~709 nats (an untrained or diverged model)."""
    return math.exp(min(loss, 700.0))


def sample_losses(forward: Forward, tokens: torch.Tensor) -> torch.Tensor:
    """Summed target-token loss of each row of tokens (B, T+1) -> (B,) float64."""
    return token_losses(forward, tokens).sum(1, dtype=torch.float64)


@torch.no_grad()
def loss_sums(forward: Forward, batches: Iterable[Tuple[torch.Tensor, torch.Tensor]],
              device: torch.device) -> torch.Tensor:
    """(summed loss, target tokens) over (tokens, valid-row mask) batches, as float64 on `device`; all-reduce
    it across ranks, then divide."""
    sums = torch.zeros(2, dtype=torch.float64, device=device)
    for tokens, valid in batches:
        tokens, valid = tokens.to(device), valid.to(device)
        sums[0] += (sample_losses(forward, tokens) * valid).sum()
        sums[1] += valid.sum() * (tokens.shape[1] - 1)
    return sums


# Bits per byte ------------------------------------------------------------------------------------------------


def piece_byte_lengths(sp_model_path: str) -> torch.Tensor:
    """UTF-8 bytes each token id stands for, (vocab,) int64: a normal piece its text with "▁" read as a space, a
    byte-fallback piece 1, control pieces (BOS, EOS, padding) 0, and <unk> 1 (its source text is unknown).

    With our tokenizers (byte fallback, no normalization, no dummy prefix) the lengths of a text's tokens add up
    to the text's UTF-8 length exactly."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(sp_model_path))
    lengths = []
    for i in range(sp.get_piece_size()):
        if sp.is_control(i) or sp.is_unused(i):
            lengths.append(0)
        elif sp.is_byte(i) or sp.is_unknown(i):
            lengths.append(1)
        else:
            lengths.append(len(sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8")))
    return torch.tensor(lengths, dtype=torch.int64)


def counting_bytes(batches: Iterable[Tuple[torch.Tensor, torch.Tensor]], byte_lengths: torch.Tensor,
                   total: List[int]) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """Pass (tokens, valid) batches through unchanged, adding the bytes of their valid targets to total[0]."""
    for tokens, valid in batches:
        per_row = byte_lengths[tokens[:, 1:].cpu()].sum(1)
        total[0] += int((per_row * valid.cpu()).sum())
        yield tokens, valid


@dataclass
class EvalResult:
    loss: float  # mean nats per target token
    perplexity: float
    bits_per_byte: float
    tokens: int
    bytes: int

    @classmethod
    def from_sums(cls, loss_sum: float, tokens: int, n_bytes: int) -> "EvalResult":
        loss = loss_sum / max(tokens, 1)
        bpb = loss_sum / (math.log(2) * n_bytes) if n_bytes else float("nan")
        return cls(loss, perplexity(loss), bpb, tokens, n_bytes)

    def as_dict(self) -> dict:
        return asdict(self)


# Sliding windows ----------------------------------------------------------------------------------------------


def windows(n_targets: int, window: int, stride: int) -> List[Tuple[int, int, int]]:
    """(start, end, scored) for a sequence whose targets are positions 1..n_targets: the model reads tokens
    [start, end) and predicts [start + 1, end + 1); only the last `scored` targets count, so every target counts
    exactly once. The first window scores its full length; each later one `stride` new targets (fewer at the end)
    with `window - stride` or more tokens of context. Every window but a short sequence's only one is `window`
    long, so windows batch together."""
    if not 1 <= stride <= window:
        raise ValueError(f"stride={stride} must be between 1 and the window length {window}")
    out, done = [], 0
    while done < n_targets:
        end = min(done + (window if done == 0 else stride), n_targets)
        start = max(0, end - window)
        out.append((start, end, end - done))
        done = end
    return out


@torch.no_grad()
def sliding_window_sums(forward: Forward, ids: Sequence[int], window: int, stride: int, batch_size: int,
                        device: torch.device) -> Tuple[float, int]:
    """(summed loss, scored targets) of one token sequence: every token after the first is predicted once."""
    seq = torch.as_tensor(ids, dtype=torch.int64)
    spans = windows(len(seq) - 1, window, stride)
    loss_sum = 0.0
    for i in range(0, len(spans), batch_size):
        group = spans[i:i + batch_size]
        length = group[0][1] - group[0][0]  # the same for every window (see `windows`)
        rows = torch.stack([seq[start:end + 1] for start, end, _ in group]).to(device)  # (B, length + 1)
        losses = token_losses(forward, rows)  # (B, length)
        loss_sum += sum(losses[r, length - scored:].sum(dtype=torch.float64).item()
                        for r, (_, _, scored) in enumerate(group))
    return loss_sum, len(seq) - 1
