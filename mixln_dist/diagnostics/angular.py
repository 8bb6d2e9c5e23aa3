"""Angular distance between residual-stream states n layers apart (the paper's section 5.1, after Gromov et al.).

    d(l, l+n) = arccos(cos(x_l, x_{l+n})) / pi        in [0, 1]: 0 = same direction, 1 = opposite

x_l is `Transformer.hidden_states(tokens)[l]`: index 0 is the embedding output, index l >= 1 the output of
`model.layers[l-1]`, index L the last layer's output *before* the final norm; so d(l, l+1) is the turn made by
`model.layers[l]`, the same 0-based numbering as the layer-removal chart. The official code takes its last
state after the final norm; we keep every index the same kind of object (the raw residual stream), so the
deepest cells measure the layers and not the final norm's learned gains. As in the official code, each window
contributes its last token (`all_tokens=True` averages every position instead).

Differences from the official script, on purpose: we report the *mean* over windows rather than the sum, and a
window whose cosine is undefined (a zero state) is left out of the mean rather than counted as 0.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List

import torch
from tqdm import tqdm

from ..model import Transformer


def window_starts(n_tokens: int, seq_len: int, stride: int, limit: int = 0) -> torch.Tensor:
    """Start offsets of the windows of `seq_len` tokens every `stride` tokens in a stream of `n_tokens`. With
    `limit`, at most that many, spread evenly over the stream (not just its beginning)."""
    if seq_len < 1 or stride < 1:
        raise ValueError(f"seq_len ({seq_len}) and stride ({stride}) must be positive")
    if n_tokens < seq_len:
        raise ValueError(
            f"the token source has {n_tokens} tokens, fewer than one window of {seq_len}; "
            "give it more text or pass a smaller --seq-len"
        )
    starts = torch.arange(0, n_tokens - seq_len + 1, stride)
    if 0 < limit < len(starts):
        starts = starts[torch.linspace(0, len(starts) - 1, limit).round().long()]
    return starts


def sliding_windows(stream: torch.Tensor, seq_len: int, stride: int, limit: int = 0) -> torch.Tensor:
    """A 1-D token stream -> (N, seq_len) windows, as placed by `window_starts`."""
    if stream.dim() != 1:
        raise ValueError(f"expected a 1-D token stream, got shape {tuple(stream.shape)}")
    starts = window_starts(stream.numel(), seq_len, stride, limit)
    return stream[starts[:, None] + torch.arange(seq_len)]  # (N, seq_len)


@dataclass
class AngularDistances:
    """distance[n-1, l] = mean d(l, l+n) for n = 1..L and l = 0..L-n; NaN where l + n > L.
    count[n-1, l] = how many windows (or tokens) entered that mean."""

    distance: torch.Tensor  # (L, L) float64
    count: torch.Tensor  # (L, L) int64
    all_tokens: bool

    @property
    def n_layers(self) -> int:
        return self.distance.shape[0]

    def adjacent(self) -> List[float]:
        """d(l, l+1) for each layer l = 0..L-1: how far layer l turns the residual stream."""
        return self.distance[0].tolist()

    def rows(self) -> List[Dict]:
        """One CSV row per defined cell, l fastest within each n."""
        L = self.n_layers
        return [
            {"start_layer": l, "n": n, "distance": self.distance[n - 1, l].item(), "count": int(self.count[n - 1, l])}
            for n in range(1, L + 1)
            for l in range(L - n + 1)
        ]

    def summary(self) -> Dict:
        adjacent = torch.tensor(self.adjacent(), dtype=torch.float64)
        deep = adjacent[deepest_quarter(self.n_layers)]
        return {
            "adjacent": self.adjacent(),
            "mean_adjacent": _nanmean(adjacent),
            "mean_adjacent_deepest_quarter": _nanmean(deep),
            "tokens": "all" if self.all_tokens else "last",
        }


def deepest_quarter(n_layers: int) -> slice:
    """The last ceil(L/4) layers (at least one): where Pre-LN's redundancy shows."""
    return slice(n_layers - max(1, math.ceil(n_layers / 4)), n_layers)


def _nanmean(x: torch.Tensor) -> float:
    return x.nanmean().item() if x.numel() else float("nan")


def pairwise_angular(states: torch.Tensor) -> torch.Tensor:
    """states (..., S, D) -> (..., S, S) angular distances in [0, 1] between every pair of the S states; NaN
    where a state is zero. float64, so identical states give 0 to ~1e-8 (arccos is steep near cos = 1)."""
    x = states.double()
    x = x / x.norm(dim=-1, keepdim=True)  # a zero state becomes NaN and stays NaN
    cos = (x @ x.transpose(-1, -2)).clamp(-1.0, 1.0)  # clamp passes NaN through
    return torch.arccos(cos) / math.pi


@torch.no_grad()
def angular_distances(model: Transformer, windows: torch.Tensor, batch_size: int = 8, all_tokens: bool = False,
                      progress: bool = False) -> AngularDistances:
    """Mean angular distance d(l, l+n) for every l and n over token windows (N, T)."""
    L = len(model.layers)
    device = next(model.parameters()).device
    total = torch.zeros(L, L, dtype=torch.float64)
    count = torch.zeros(L, L, dtype=torch.int64)
    for batch in tqdm(windows.split(batch_size), desc="angular distance", disable=not progress):
        states = [h.flatten(0, 1) if all_tokens else h[:, -1] for h in model.hidden_states(batch.to(device))]
        d = pairwise_angular(torch.stack(states, dim=-2)).cpu()  # (M, L+1, L+1), M = B*T or B
        for n in range(1, L + 1):
            cells = torch.diagonal(d, offset=n, dim1=-2, dim2=-1)  # (M, L+1-n): d(l, l+n) for l = 0..L-n
            finite = cells.isfinite()
            total[n - 1, : L + 1 - n] += torch.where(finite, cells, 0.0).sum(0)
            count[n - 1, : L + 1 - n] += finite.sum(0)
    distance = total / count  # 0/0 = NaN marks both the undefined cells and cells with no finite value
    n_idx, l_idx = torch.meshgrid(torch.arange(1, L + 1), torch.arange(L), indexing="ij")
    distance[l_idx + n_idx > L] = float("nan")
    return AngularDistances(distance, count, all_tokens)
