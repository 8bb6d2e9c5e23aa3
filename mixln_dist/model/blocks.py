"""Decoder blocks, one class per norm placement. Which class each layer gets is decided once, in
`build_block`, from the layer's LayerSpec; no forward pass ever looks at a scheme name.

Every block names its norms by the sublayer they serve, whatever their placement: `attn_norm` and `mlp_norm`
(Pre-LN: on the sublayer input; Post-LN: on the residual sum; reordered: on the sublayer output), plus
`attn_out_norm` and `mlp_out_norm` in Sandwich-LN. So a Pre-LN checkpoint loads into a Mix-LN, reordered or
Sandwich-LN model and back without renaming anything.

Two switches compose with every placement, fixed at construction like the placement itself:
- `spec.qkv_norm` gives the attention its q/k(/v) norms (layers.Attention);
- `spec.gpas` puts a GPAS gate (layers.GPAS) at each residual add; without it `self.gpas` is an identity. As in
  the GPAS authors' code, a sum that stays the residual stream is gated whole (Pre-LN: gpas(x + F(N(x)))), and a
  sum that is normalised next has its skip gated instead (Post-LN: N(gpas(x) + F(x))), since the norm would undo
  a scale applied to the whole sum.
"""

from __future__ import annotations

import torch
from torch import nn

from .args import LayerSpec, ModelConfig
from .layers import GPAS, Attention, FeedForward, RMSNorm, ScaledRMSNorm


class Block(nn.Module):
    """Holds the sublayers and their initialization; subclasses differ in `forward` (and in NORMS)."""

    NORMS = ("attn_norm", "mlp_norm")  # the block-level norms, in registration order

    def __init__(self, cfg: ModelConfig, spec: LayerSpec):
        super().__init__()
        self.spec = spec
        self.attn = Attention(cfg.dim, cfg.n_heads, cfg.kv_heads, spec.qkv_norm, cfg.norm_eps)
        self.mlp = FeedForward(cfg.dim, cfg.ffn_dim)
        for name in self.NORMS:
            setattr(self, name, self._norm(cfg))
        # One gate per layer, shared by its two residual adds, as in the GPAS authors' code.
        self.gpas = GPAS() if spec.gpas else nn.Identity()
        self.init_std = cfg.init_std

    def _norm(self, cfg: ModelConfig) -> RMSNorm:
        return RMSNorm(cfg.dim, cfg.norm_eps)

    @torch.no_grad()
    def init_weights(self) -> None:
        # Each weight is drawn once, in a fixed order, so switching scaled init on changes nothing else.
        out_std = self.spec.out_proj_std or self.init_std
        for linear, std in ((self.attn.q_proj, self.init_std), (self.attn.k_proj, self.init_std),
                            (self.attn.v_proj, self.init_std), (self.attn.o_proj, out_std),
                            (self.mlp.gate_proj, self.init_std), (self.mlp.up_proj, self.init_std),
                            (self.mlp.down_proj, out_std)):
            nn.init.normal_(linear.weight, mean=0.0, std=std)
        self._reset_gains()

    def _reset_gains(self) -> None:
        """Norm weights to 1, GPAS gates to 0 (the QK/QKV norms inside attention included). Draws no random
        numbers, so adding a norm or a gate leaves every other weight of a seeded init unchanged."""
        for module in self.modules():
            if isinstance(module, (RMSNorm, GPAS)):
                module.reset_parameters()


class PreNormBlock(Block):
    """h = x + Attn(N(x)); out = h + MLP(N(h))."""

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        h = self.gpas(x + self.attn(self.attn_norm(x), cos, sin))
        return self.gpas(h + self.mlp(self.mlp_norm(h)))


class LayerNormScalingBlock(PreNormBlock):
    """Pre-LN whose norm outputs are scaled by 1/sqrt(l) (LayerNorm Scaling, "The Curse of Depth")."""

    def _norm(self, cfg: ModelConfig) -> RMSNorm:
        return ScaledRMSNorm(cfg.dim, cfg.norm_eps, self.spec.norm_scale)


class PostNormBlock(Block):
    """h = N(x + Attn(x)); out = N(h + MLP(h)).

    With GPAS the gate scales the skip before the add: h = N(gpas(x) + Attn(x)).
    """

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        h = self.attn_norm(self.gpas(x) + self.attn(x, cos, sin))
        return self.mlp_norm(self.gpas(h) + self.mlp(h))


class DeepNormBlock(Block):
    """Post-LN with the residual up-weighted: h = N(a*x + Attn(x)); out = N(a*h + MLP(h)), a = (2L)^(1/4)."""

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        a = self.spec.residual_scale
        h = self.attn_norm(a * self.gpas(x) + self.attn(x, cos, sin))
        return self.mlp_norm(a * self.gpas(h) + self.mlp(h))

    @torch.no_grad()
    def init_weights(self) -> None:
        # DeepNet: xavier-normal everywhere, down-weighted by beta = (8L)^(-1/4) on the value/output/FFN maps.
        # (The official Mix-LN code uses gain (8L)^(+1/4), which looks like a sign slip; we follow DeepNet.)
        beta = self.spec.deepnorm_gain
        for linear, gain in ((self.attn.q_proj, 1.0), (self.attn.k_proj, 1.0), (self.attn.v_proj, beta),
                             (self.attn.o_proj, beta), (self.mlp.gate_proj, beta), (self.mlp.up_proj, beta),
                             (self.mlp.down_proj, beta)):
            nn.init.xavier_normal_(linear.weight, gain=gain)
        self._reset_gains()


class SandwichBlock(Block):
    """A norm on both sides of each sublayer, inside the residual: h = x + N(Attn(N(x))); out = h + N(MLP(N(h))).

    Also Peri-LN's block (Kim et al. 2025): the two papers place the norms identically (docs/model.md).
    """

    NORMS = ("attn_norm", "mlp_norm", "attn_out_norm", "mlp_out_norm")

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        h = self.gpas(x + self.attn_out_norm(self.attn(self.attn_norm(x), cos, sin)))
        return self.gpas(h + self.mlp_out_norm(self.mlp(self.mlp_norm(h))))


class ReorderedNormBlock(Block):
    """OLMo 2's reordered norm: the norm on each sublayer's output, h = x + N(Attn(x)); out = h + N(MLP(h))."""

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        h = self.gpas(x + self.attn_norm(self.attn(x, cos, sin)))
        return self.gpas(h + self.mlp_norm(self.mlp(h)))


class HybridNormBlock(Block):
    """HybridNorm (Zhuo et al. 2025): QKV-norm inside attention, Post-LN on the feed-forward sublayer:
    y = N(x + Attn_qkvnorm(x)); out = y + MLP(y). The attention needs no input norm, so there is no attn_norm;
    the normalised y is both the MLP's input and the residual it adds to."""

    NORMS = ("mlp_norm",)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        y = self.mlp_norm(self.gpas(x) + self.attn(x, cos, sin))
        return self.gpas(y + self.mlp(y))


BLOCKS = {
    "pre": PreNormBlock,
    "post": PostNormBlock,
    "sandwich": SandwichBlock,
    "deepnorm": DeepNormBlock,
    "lns": LayerNormScalingBlock,
    "reordered": ReorderedNormBlock,
    "hybrid": HybridNormBlock,
}


def build_block(cfg: ModelConfig, spec: LayerSpec) -> Block:
    return BLOCKS[spec.kind](cfg, spec)
