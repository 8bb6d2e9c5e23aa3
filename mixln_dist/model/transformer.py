"""The LLaMA decoder with a per-layer norm placement (Pre-LN, Post-LN, Mix-LN and relatives).

A pure nn.Module: it knows nothing of distribution, precision policy or activation checkpointing, which are
applied from outside (mixln_dist.train). Build it anywhere, the meta device included, then call
`init_weights()` once its storage exists.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from .args import LayerSpec, ModelConfig, NormConfig, embed_norm_on, layer_plan
from .blocks import build_block
from .layers import RMSNorm, rope_tables
from .loss import LMHead


# Parameters only some schemes have, each starting at a constant (norm weights 1, GPAS gates 0). A model of
# another scheme lacks them by construction, so a warm start or an import from one leaves them at that constant.
SCHEME_EXTRAS = ("attn_out_norm.weight", "mlp_out_norm.weight", "attn.q_norm.weight", "attn.k_norm.weight",
                 "attn.v_norm.weight", "gpas.gate", "embed_norm.weight")


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig, norm: NormConfig):
        super().__init__()
        self.cfg = cfg
        self.norm_cfg = norm
        self.plan: List[LayerSpec] = layer_plan(cfg, norm)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        # Peri-LN's embedding normalisation (norm.embed_norm); an identity, holding nothing, without it.
        self.embed_norm = RMSNorm(cfg.dim, cfg.norm_eps) if embed_norm_on(norm) else nn.Identity()
        self.layers = nn.ModuleList(build_block(cfg, spec) for spec in self.plan)
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)  # final norm, before the head, for every scheme
        self.lm_head = LMHead(cfg.dim, cfg.vocab_size)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        # Derived, not learned: rebuilt by init_weights() and never saved in checkpoints.
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    @property
    def layer_kinds(self) -> List[str]:
        return [layer.spec.kind for layer in self.layers]

    @torch.no_grad()
    def init_weights(self) -> None:
        """Linear N(0, init_std); embedding N(0, embed_init_std); norms 1, GPAS gates 0; the scheme's own rules
        per block."""
        self.reset_rope()
        for _, init in self.init_units():
            init()

    def init_units(self) -> List[Tuple[nn.Module, Callable[[], None]]]:
        """The initialisation, in order, one (submodule, init function) unit at a time, so that a model whose
        parameters are partitioned (ZeRO-3's zero.Init) can gather and initialise one unit at a time."""
        units = [(self.embed_tokens, lambda: nn.init.normal_(self.embed_tokens.weight, std=self.cfg.embed_init_std))]
        if isinstance(self.embed_norm, RMSNorm):
            units.append((self.embed_norm, self.embed_norm.reset_parameters))
        units += [(layer, layer.init_weights) for layer in self.layers]
        units.append((self.norm, self.norm.reset_parameters))
        if not self.cfg.tie_embeddings:
            units.append((self.lm_head, lambda: nn.init.normal_(self.lm_head.weight, std=self.cfg.init_std)))
        return units

    @torch.no_grad()
    def reset_rope(self) -> None:
        cos, sin = rope_tables(self.cfg.head_dim, self.cfg.max_seq_len, self.cfg.rope_theta, self.rope_cos.device)
        self.rope_cos.copy_(cos)
        self.rope_sin.copy_(sin)

    def rope(self, seq_len: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        if seq_len > self.cfg.max_seq_len:
            raise ValueError(
                f"sequence length {seq_len} exceeds model.max_seq_len={self.cfg.max_seq_len}; "
                "raise model.max_seq_len or shorten data.seq_len"
            )
        return self.rope_cos[:seq_len].to(dtype), self.rope_sin[:seq_len].to(dtype)

    def forward(self, tokens: torch.Tensor, targets: Optional[torch.Tensor] = None,
                reduction: str = "mean") -> torch.Tensor:
        """tokens (B, T) int64 -> logits (B, T, vocab_size); with targets (B, T), their cross-entropy instead (fp32:
        the mean, or (B, T) with reduction="none"), computed without the full logits (loss.py)."""
        h = self.embed_norm(self.embed_tokens(tokens))  # (B, T, dim)
        cos, sin = self.rope(tokens.shape[1], h.dtype)
        for layer in self.layers:
            h = layer(h, cos, sin)
        if targets is None:
            return self.lm_head(self.norm(h))
        return self.lm_head(self.norm(h), targets, reduction)

    def hidden_states(self, tokens: torch.Tensor) -> List[torch.Tensor]:
        """The residual stream entering each layer and leaving the last one: L + 1 tensors of (B, T, dim).

        Index 0 is the embedding output (after the embedding norm, where there is one) and index L the last
        layer's output before the final norm.
        """
        h = self.embed_norm(self.embed_tokens(tokens))
        cos, sin = self.rope(tokens.shape[1], h.dtype)
        states = [h]
        for layer in self.layers:
            h = layer(h, cos, sin)
            states.append(h)
        return states


def with_tied_head(state: Dict[str, torch.Tensor], cfg: ModelConfig) -> Dict[str, torch.Tensor]:
    """A tied head is one tensor under two names, and state dicts often carry only the embedding's (transformers
    saves it once): give it both names."""
    if cfg.tie_embeddings and "lm_head.weight" not in state:
        return {**state, "lm_head.weight": state["embed_tokens.weight"]}
    return state


def build_model(cfg: ModelConfig, norm: NormConfig, device: Union[str, torch.device] = "cpu",
                state: Optional[Dict[str, torch.Tensor]] = None) -> Transformer:
    """The model with its storage allocated once, on `device`: holding `state` (strictly: every name, no extra),
    or initialised by `init_weights()` from the current RNG state. Built on the meta device first, so no
    throwaway default initialisation of a large model is ever computed. Raises RuntimeError when `state` does
    not fit."""
    with torch.device("meta"):
        model = Transformer(cfg, norm)
    model.to_empty(device=device)
    if state is None:
        model.init_weights()
    else:
        model.reset_rope()
        model.load_state_dict(with_tied_head(state, cfg), strict=True)
    return model


def count_parameters(model: nn.Module) -> dict:
    """Total and non-embedding parameter counts (a tied head is counted once; the untied head is not an
    embedding, as in the paper's tables)."""
    total = sum(p.numel() for p in model.parameters())
    embedding = model.embed_tokens.weight.numel()
    return {"total": total, "non_embedding": total - embedding}


def scheme_extras(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The initial value of each of the model's SCHEME_EXTRAS parameters, by name (works on the meta device and
    under zero.Init, where a parameter's own shape is its partition's)."""
    extras = {}
    for name, p in model.named_parameters():
        if name.endswith(SCHEME_EXTRAS):
            shape = getattr(p, "ds_shape", p.shape)
            extras[name] = torch.zeros(shape) if name.endswith("gpas.gate") else torch.ones(shape)
    return extras
