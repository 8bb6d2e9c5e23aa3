"""The analysis-time gradient-norm profile: a few plain backward passes of a loaded checkpoint, the per-layer
norms (mixln_dist.grad_norms, the same grouping the trainer logs) averaged over them.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, Iterable, List

import torch

from ..errors import AnalysisError
from ..evaluation import next_token_loss
from ..grad_norms import model_grad_norms

# CSV column -> grouped_norms key suffix of a decoder layer
_PARTS = (("total", ""), ("attn", ".attn"), ("mlp", ".mlp"), ("norm", ".norm"))


@dataclass
class GradNormProfile:
    """Per-layer gradient norms averaged over a few batches; `norms` has `grouped_norms`' keys."""

    norms: Dict[str, float]
    n_layers: int
    batches: int

    def layers(self, part: str = "") -> List[float]:
        """The L per-layer norms: total (part ""), or ".attn", ".mlp", ".norm"."""
        return [self.norms.get(f"layer{l}{part}", 0.0) for l in range(self.n_layers)]

    def rows(self) -> List[Dict]:
        """One CSV row per decoder layer (total, attn, mlp, norm), then the embedding, final norm and head
        (total only; the head is blank when tied to the embedding, which then holds its gradient)."""
        rows = [{"part": f"layer{l}", **{column: self.norms.get(f"layer{l}{suffix}", 0.0) for column, suffix in _PARTS}}
                for l in range(self.n_layers)]
        rows += [{"part": part, "total": self.norms.get(part, ""), "attn": "", "mlp": "", "norm": ""}
                 for part in ("embed", "final_norm", "head")]
        return rows

    def summary(self) -> Dict:
        layers = self.layers()
        return {
            "layers": layers,
            "last_to_first_ratio": layers[-1] / layers[0] if layers[0] > 0 else float("nan"),
            "total": self.norms.get("total", 0.0),
            "batches": self.batches,
        }


def grad_norm_profile(model: torch.nn.Module, batches: Iterable[torch.Tensor]) -> GradNormProfile:
    """Per-layer gradient norms of a plain model, averaged over a few fixed batches (B, T+1): for each batch,
    backward of its mean token loss (the training loss) from zero gradients, then `model_grad_norms`. The
    paper releases no code for this figure; averaging the norms over batches is our choice (docs/paper.md, section 5.3).
    Leaves the model's gradients cleared."""
    device = next(model.parameters()).device
    sums: Dict[str, float] = defaultdict(float)
    n = 0
    for tokens in batches:
        model.zero_grad(set_to_none=True)
        tokens = tokens.to(device)
        next_token_loss(model, tokens).backward()
        for key, value in model_grad_norms(model).items():
            sums[key] += value
        n += 1
    model.zero_grad(set_to_none=True)
    if n == 0:
        raise AnalysisError("the gradient-norm profile needs at least one batch of tokens; give more text or shards")
    return GradNormProfile({key: value / n for key, value in sums.items()}, len(model.layers), n)
