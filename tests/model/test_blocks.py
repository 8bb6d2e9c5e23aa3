"""A Post-LN and a Pre-LN layer each compute exactly the equations of the paper, written out by hand here."""

import math

import pytest
import torch
import torch.nn.functional as F

from mixln_dist.model import ModelConfig, NormConfig, Transformer

CFG = ModelConfig(name="t", dim=48, n_layers=2, n_heads=3, n_kv_heads=None, ffn_dim=80, vocab_size=50, max_seq_len=32)


def rms(x, w, eps=1e-6):
    return w * x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)


def attention(x, a, n_heads, theta=10000.0):
    """Causal multi-head attention with rotate-half RoPE, from first principles."""
    B, T, D = x.shape
    hd = D // n_heads

    def heads(t):  # (B, T, D) -> (B, nh, T, hd)
        return t.view(B, T, n_heads, hd).transpose(1, 2)

    q, k, v = heads(x @ a.q_proj.weight.T), heads(x @ a.k_proj.weight.T), heads(x @ a.v_proj.weight.T)
    pos = torch.arange(T, dtype=torch.float64)[:, None]
    inv = theta ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = torch.cat([pos * inv, pos * inv], dim=-1).to(x.dtype)  # (T, hd)

    def rope(t):
        t1, t2 = t[..., : hd // 2], t[..., hd // 2 :]
        return t * ang.cos() + torch.cat([-t2, t1], dim=-1) * ang.sin()

    q, k = rope(q), rope(k)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
    y = scores.softmax(-1) @ v  # (B, nh, T, hd)
    return y.transpose(1, 2).reshape(B, T, D) @ a.o_proj.weight.T


def mlp(x, m):
    return (F.silu(x @ m.gate_proj.weight.T) * (x @ m.up_proj.weight.T)) @ m.down_proj.weight.T


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = Transformer(CFG, NormConfig(scheme="mix", post_layers=1)).double()
    m.init_weights()
    for name, p in m.named_parameters():
        if "norm" in name:
            p.data.uniform_(0.5, 1.5)
    return m


def run_block(model, i, x):
    cos, sin = model.rope(x.shape[1], x.dtype)
    with torch.no_grad():
        return model.layers[i](x, cos, sin)


def test_post_ln_layer_matches_equations(model):
    block = model.layers[0]
    assert block.spec.kind == "post"
    x = torch.randn(2, 10, CFG.dim, dtype=torch.float64)
    h = rms(x + attention(x, block.attn, CFG.n_heads), block.attn_norm.weight)
    expected = rms(h + mlp(h, block.mlp), block.mlp_norm.weight)
    torch.testing.assert_close(run_block(model, 0, x), expected, rtol=0, atol=1e-10)


def test_pre_ln_layer_matches_equations(model):
    block = model.layers[1]
    assert block.spec.kind == "pre"
    x = torch.randn(2, 10, CFG.dim, dtype=torch.float64)
    h = x + attention(rms(x, block.attn_norm.weight), block.attn, CFG.n_heads)
    expected = h + mlp(rms(h, block.mlp_norm.weight), block.mlp)
    torch.testing.assert_close(run_block(model, 1, x), expected, rtol=0, atol=1e-10)


def test_final_norm_and_untied_head(model):
    tokens = torch.randint(0, CFG.vocab_size, (2, 7))
    h = model.embed_tokens(tokens)
    for i in range(CFG.n_layers):
        h = run_block(model, i, h)
    expected = rms(h, model.norm.weight) @ model.lm_head.weight.T
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), expected, rtol=0, atol=1e-10)
    assert model.lm_head.weight.data_ptr() != model.embed_tokens.weight.data_ptr()


def test_rmsnorm_variance_is_fp32_under_bf16():
    from mixln_dist.model.layers import RMSNorm

    norm = RMSNorm(64).bfloat16()  # as in bf16 training, where the whole module is cast
    x = (torch.randn(4, 64) * 300).bfloat16()  # squares overflow bf16's precision, not fp32's
    out = norm(x)
    assert out.dtype == torch.bfloat16
    reference = (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)).bfloat16() * norm.weight
    assert torch.equal(out, reference)
