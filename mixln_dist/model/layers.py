"""The LLaMA building blocks: RMSNorm, rotary embeddings, attention and the SwiGLU MLP. No biases anywhere.
Plus the pieces later norm placements add: per-head RMSNorm (HybridNorm's QKV-norm) and the GPAS gate."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The variance is taken in fp32 even under bf16: squares of bf16 activations lose too much precision.
        dtype = x.dtype
        x = x.to(torch.promote_types(dtype, torch.float32))  # fp32 for bf16/fp16/fp32, fp64 stays fp64
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


class ScaledRMSNorm(RMSNorm):
    """RMSNorm whose output is multiplied by a fixed constant (LayerNorm Scaling: 1/sqrt(layer index))."""

    def __init__(self, dim: int, eps: float, scale: float):
        super().__init__(dim, eps)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.scale


class HeadRMSNorm(RMSNorm):
    """RMSNorm of each head's slice of a projection, one weight of head size shared by all heads (HybridNorm)."""

    def __init__(self, head_dim: int, eps: float = 1e-6):
        super().__init__(head_dim, eps)
        self.head_dim = head_dim  # not the weight's shape: under ZeRO-3 that is a partition's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, T, nh * hd) -> (B, T, nh, hd), normalised over hd, and back
        return super().forward(x.unflatten(-1, (-1, self.head_dim))).flatten(-2)


class GPAS(nn.Module):
    """Gradient-preserving activation scaling (Chen et al. 2025): x - SiLU(g) * stopgrad(x).

    The forward value is (1 - SiLU(g)) * x, but the gradient reaching x is the incoming one unscaled; g gets
    -SiLU'(g) * sum(grad * x). g starts at 0, where SiLU(0) = 0: the gate begins as the identity.
    """

    def __init__(self):
        super().__init__()
        # One element rather than a 0-d tensor: ZeRO-3 partitions parameters by their flattened elements.
        self.gate = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - F.silu(self.gate) * x.detach()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.gate)


def rope_tables(head_dim: int, max_seq_len: int, theta: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables of shape (max_seq_len, head_dim) in fp32, in the rotate-half layout HF Llama uses."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim))
    positions = torch.arange(max_seq_len, dtype=torch.float32, device=device)
    freqs = torch.outer(positions, inv_freq)  # (T, hd/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (T, hd)
    return emb.cos(), emb.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, nh, T, hd); cos, sin: (T, hd), already in x's dtype
    return x * cos + _rotate_half(x) * sin


class Attention(nn.Module):
    """Causal self-attention with RoPE. `qkv_norm` adds RMSNorms on the projections, applied before RoPE:
    "qk" normalises the whole query and key projections (OLMo 2), "qkv" each head's query, key and value
    (HybridNorm). Without them q_norm, k_norm and v_norm are identities and hold no parameters."""

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int, qkv_norm: str = "none", eps: float = 1e-6):
        super().__init__()
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.head_dim = dim // n_heads
        self.q_proj = nn.Linear(dim, n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(n_heads * self.head_dim, dim, bias=False)
        identity = nn.Identity
        if qkv_norm == "qk":
            self.q_norm, self.k_norm = RMSNorm(n_heads * self.head_dim, eps), RMSNorm(n_kv_heads * self.head_dim, eps)
            self.v_norm = identity()
        elif qkv_norm == "qkv":
            self.q_norm, self.k_norm, self.v_norm = (HeadRMSNorm(self.head_dim, eps) for _ in range(3))
        elif qkv_norm == "none":
            self.q_norm, self.k_norm, self.v_norm = identity(), identity(), identity()
        else:
            raise ValueError(f"unknown qkv_norm '{qkv_norm}'; expected none, qk or qkv")

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_norm(self.q_proj(x)).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = self.k_norm(self.k_proj(x)).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        v = self.v_norm(self.v_proj(x)).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.n_kv_heads != self.n_heads)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))  # (B, T, nh * hd) -> (B, T, dim)


class FeedForward(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.up_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.down_proj = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
