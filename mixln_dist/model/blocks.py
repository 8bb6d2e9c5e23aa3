"""Decoder blocks, one class per norm placement. Which class each layer gets is decided once, in
`build_block`, from the layer's LayerSpec; no forward pass ever looks at a scheme name.

Every block has `attn_norm` and `mlp_norm` (Pre-LN: applied to the sublayer input; Post-LN: applied to the
residual sum), so a Pre-LN checkpoint loads into a Mix-LN model and back without renaming anything.
"""

from __future__ import annotations

import torch
from torch import nn

from .args import LayerSpec, ModelConfig
from .layers import Attention, FeedForward, RMSNorm, ScaledRMSNorm


class Block(nn.Module):
    """Holds the sublayers and their initialization; subclasses only differ in `forward`."""

    def __init__(self, cfg: ModelConfig, spec: LayerSpec):
        super().__init__()
        self.spec = spec
        self.attn = Attention(cfg.dim, cfg.n_heads, cfg.kv_heads)
        self.mlp = FeedForward(cfg.dim, cfg.ffn_dim)
        self.attn_norm = self._norm(cfg)
        self.mlp_norm = self._norm(cfg)
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
        self._reset_norms()

    def _reset_norms(self) -> None:
        for module in self.modules():
            if isinstance(module, RMSNorm):
                module.reset_parameters()


class PreNormBlock(Block):
    """h = x + Attn(N(x)); out = h + MLP(N(h))."""

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        h = x + self.attn(self.attn_norm(x), cos, sin)
        return h + self.mlp(self.mlp_norm(h))


class LayerNormScalingBlock(PreNormBlock):
    """Pre-LN whose norm outputs are scaled by 1/sqrt(l) (LayerNorm Scaling, "The Curse of Depth")."""

    def _norm(self, cfg: ModelConfig) -> RMSNorm:
        return ScaledRMSNorm(cfg.dim, cfg.norm_eps, self.spec.norm_scale)


class PostNormBlock(Block):
    """h = N(x + Attn(x)); out = N(h + MLP(h))."""

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        h = self.attn_norm(x + self.attn(x, cos, sin))
        return self.mlp_norm(h + self.mlp(h))


class DeepNormBlock(Block):
    """Post-LN with the residual up-weighted: h = N(a*x + Attn(x)); out = N(a*h + MLP(h)), a = (2L)^(1/4)."""

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        a = self.spec.residual_scale
        h = self.attn_norm(a * x + self.attn(x, cos, sin))
        return self.mlp_norm(a * h + self.mlp(h))

    @torch.no_grad()
    def init_weights(self) -> None:
        # DeepNet: xavier-normal everywhere, down-weighted by beta = (8L)^(-1/4) on the value/output/FFN maps.
        # (The official Mix-LN code uses gain (8L)^(+1/4), which looks like a sign slip; we follow DeepNet.)
        beta = self.spec.deepnorm_gain
        for linear, gain in ((self.attn.q_proj, 1.0), (self.attn.k_proj, 1.0), (self.attn.v_proj, beta),
                             (self.attn.o_proj, beta), (self.mlp.gate_proj, beta), (self.mlp.up_proj, beta),
                             (self.mlp.down_proj, beta)):
            nn.init.xavier_normal_(linear.weight, gain=gain)
        self._reset_norms()


class SandwichBlock(Block):
    """A norm on both sides of each sublayer, inside the residual: h = x + N(Attn(N(x))); out = h + N(MLP(N(h)))."""

    def __init__(self, cfg: ModelConfig, spec: LayerSpec):
        super().__init__(cfg, spec)
        self.attn_out_norm = self._norm(cfg)
        self.mlp_out_norm = self._norm(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        h = x + self.attn_out_norm(self.attn(self.attn_norm(x), cos, sin))
        return h + self.mlp_out_norm(self.mlp(self.mlp_norm(h)))


BLOCKS = {
    "pre": PreNormBlock,
    "post": PostNormBlock,
    "sandwich": SandwichBlock,
    "deepnorm": DeepNormBlock,
    "lns": LayerNormScalingBlock,
}


def build_block(cfg: ModelConfig, spec: LayerSpec) -> Block:
    return BLOCKS[spec.kind](cfg, spec)
