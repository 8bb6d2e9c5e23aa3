"""Performance drop when one layer is removed (the paper's section 5.2), measured as validation loss.

The paper scores pruned models on downstream tasks (MMLU, SQuAD, ARC-e after SFT); a pretraining framework has
its own validation split, so we report the mean next-token loss with layer l removed, and its increase over
the full model (positive = worse). The loss is `mixln_dist.evaluation`'s, the one the trainer logs, so the
full model's number here equals the trainer's eval loss on the same samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch
from tqdm import tqdm

from ..errors import AnalysisError
from ..evaluation import loss_sums, perplexity
from ..model import Transformer
from .angular import deepest_quarter
from .surgery import remove_layer

Batch = Tuple[torch.Tensor, torch.Tensor]  # tokens (B, T+1) int64, valid rows (B,) bool


@dataclass
class LayerDrop:
    base_loss: float  # the full model
    losses: List[float]  # losses[l] = loss with layer l removed
    kinds: List[str]  # the removed layer's norm placement
    tokens: int  # target tokens evaluated per model

    def increase(self) -> List[float]:
        return [loss - self.base_loss for loss in self.losses]

    def rows(self) -> List[Dict]:
        return [
            {"layer": l, "kind": kind, "loss": loss, "perplexity": perplexity(loss), "loss_increase": loss - self.base_loss}
            for l, (kind, loss) in enumerate(zip(self.kinds, self.losses))
        ]

    def summary(self) -> Dict:
        increase = self.increase()
        worst = max(range(len(increase)), key=increase.__getitem__)
        deep = increase[deepest_quarter(len(increase))]
        return {
            "base_loss": self.base_loss,
            "base_perplexity": perplexity(self.base_loss),
            "loss_increase": increase,
            "max_increase": increase[worst],
            "max_increase_layer": worst,
            "mean_increase_deepest_quarter": sum(deep) / len(deep),
            "tokens": self.tokens,
        }


def mean_loss(model: Transformer, batches: Sequence[Batch]) -> Tuple[float, int]:
    """(mean target-token loss, target tokens) of a model over (tokens, valid) batches."""
    device = next(model.parameters()).device
    total, tokens = loss_sums(model, batches, device).tolist()
    if tokens == 0:
        raise AnalysisError("no valid samples to evaluate: the token source is empty; give more text or shards")
    return total / tokens, int(tokens)


def layer_removal_drop(model: Transformer, batches: Sequence[Batch], progress: bool = False) -> LayerDrop:
    """Evaluate the full model, then each (L-1)-layer model with one layer removed, on the same batches
    (a list: it is read L+1 times)."""
    base, tokens = mean_loss(model, batches)
    losses = [mean_loss(remove_layer(model, l), batches)[0]
              for l in tqdm(range(len(model.layers)), desc="layer removal", disable=not progress)]
    return LayerDrop(base, losses, model.layer_kinds, tokens)
