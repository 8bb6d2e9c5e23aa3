"""Per-layer gradient norms: the L2 norm over all parameters of each decoder layer, also split into its
attention, MLP and norm parameters, plus the embedding, the final norm and the head.

`engine_grad_norms` reads the full gradients of a DeepSpeed engine under ZeRO 0-3 through DeepSpeed's own
accessor (`safe_get_full_grad`); under ZeRO-2/3 `param.grad` is None on most ranks, and under ZeRO-3 the
accessor is a collective, so every rank must call it, in the same order, after backward and before step.
`grad_norm_profile` is the analysis-time version: a few plain backward passes of a loaded checkpoint.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

import torch

from ..evaluation import sample_losses

_LAYER = re.compile(r"^layers\.(\d+)\.(attn|mlp)\.")
_LAYER_NORM = re.compile(r"^layers\.(\d+)\.\w*norm\w*\.")
_TOP = {"embed_tokens.weight": "embed", "norm.weight": "final_norm", "lm_head.weight": "head"}


def group_of(name: str) -> Tuple[str, Optional[int]]:
    """Parameter name -> (group, layer index or None): ("attn", 3), ("mlp", 3), ("norm", 3), ("embed", None)..."""
    if name in _TOP:
        return _TOP[name], None
    m = _LAYER.match(name)
    if m:
        return m.group(2), int(m.group(1))
    m = _LAYER_NORM.match(name)
    if m:
        return "norm", int(m.group(1))
    raise KeyError(f"parameter '{name}' belongs to no known group")


def grouped_norms(named_grads: Iterable[Tuple[str, Optional[torch.Tensor]]]) -> Dict[str, float]:
    """{"layer3": ..., "layer3.attn": ..., "layer3.mlp": ..., "layer3.norm": ..., "embed": ..., "head": ...,
    "final_norm": ..., "total": ...} from (name, gradient) pairs; a missing gradient counts as zero."""
    keys, sums = [], []  # the squared norms stay on the device; one transfer at the end, not one per tensor
    for name, grad in named_grads:
        group, layer = group_of(name)
        keys.append([group] if layer is None else [f"layer{layer}.{group}", f"layer{layer}"])
        sums.append(None if grad is None else grad.detach().double().pow(2).sum())
    present = [s for s in sums if s is not None]
    values = iter(torch.stack(present).tolist() if present else [])
    squares: Dict[str, float] = defaultdict(float)
    for names, s in zip(keys, sums):
        sq = 0.0 if s is None else next(values)
        for key in (*names, "total"):
            squares[key] += sq
    return {k: math.sqrt(v) for k, v in squares.items()}


def model_grad_norms(model: torch.nn.Module) -> Dict[str, float]:
    """The same, for a plain (not DeepSpeed) model after backward."""
    return grouped_norms((n, p.grad) for n, p in model.named_parameters())


def engine_grad_norms(engine) -> Dict[str, float]:
    """Collective under ZeRO-3: call on every rank after backward of the last micro-batch, before step."""
    from deepspeed.utils import safe_get_full_grad

    return grouped_norms((n, safe_get_full_grad(p)) for n, p in engine.module.named_parameters())


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
    paper releases no code for this figure; averaging the norms over batches is our choice (PAPER.md 5.3).
    Leaves the model's gradients cleared."""
    device = next(model.parameters()).device
    sums: Dict[str, float] = defaultdict(float)
    n = 0
    for tokens in batches:
        model.zero_grad(set_to_none=True)
        tokens = tokens.to(device)
        loss = sample_losses(model, tokens).sum() / tokens[:, 1:].numel()
        loss.backward()
        for key, value in model_grad_norms(model).items():
            sums[key] += value
        n += 1
    model.zero_grad(set_to_none=True)
    if n == 0:
        raise ValueError("grad_norm_profile needs at least one batch")
    return GradNormProfile({key: value / n for key, value in sums.items()}, len(model.layers), n)
