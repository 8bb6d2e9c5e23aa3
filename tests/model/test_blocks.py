"""Every block computes exactly the equations of its paper, written out by hand here: outputs and gradients (with
respect to the input and to every parameter), in float64, against the block's own weights."""

import math

import pytest
import torch
import torch.nn.functional as F

from mixln_dist.model import ModelConfig, NormConfig, Transformer
from mixln_dist.model.layers import GPAS

CFG = ModelConfig(name="t", dim=48, n_layers=4, n_heads=3, n_kv_heads=None, ffn_dim=80, vocab_size=50, max_seq_len=32)


def rms(x, w, eps=1e-6):
    return w * x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)


def per_head_rms(x, w, hd):
    """RMSNorm over each head's slice of a (B, T, nh * hd) projection, one weight w of size hd."""
    return rms(x.unflatten(-1, (-1, hd)), w).flatten(-2)


def gp(x, gate):
    """GPAS by its definition: x - SiLU(g) * stopgrad(x)."""
    return x - F.silu(gate) * x.detach()


def rope_angles(T, hd, theta=10000.0):
    pos = torch.arange(T, dtype=torch.float64)[:, None]
    inv = theta ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    return torch.cat([pos * inv, pos * inv], dim=-1)  # (T, hd)


def attention(x, a, n_heads, q_norm=None, k_norm=None, v_norm=None):
    """Causal multi-head attention with rotate-half RoPE, from first principles; optional norms on the q, k and v
    projections, applied before RoPE."""
    B, T, D = x.shape
    hd = D // n_heads
    identity = lambda t: t  # noqa: E731
    q = (q_norm or identity)(x @ a.q_proj.weight.T)
    k = (k_norm or identity)(x @ a.k_proj.weight.T)
    v = (v_norm or identity)(x @ a.v_proj.weight.T)

    def heads(t):  # (B, T, D) -> (B, nh, T, hd)
        return t.view(B, T, n_heads, hd).transpose(1, 2)

    q, k, v = heads(q), heads(k), heads(v)
    ang = rope_angles(T, hd).to(x.dtype)

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


def build(norm: NormConfig) -> Transformer:
    """float64, every norm weight in U(0.5, 1.5) and every GPAS gate in U(-1, 1), so that a misplaced or
    missing one shows."""
    torch.manual_seed(0)
    model = Transformer(CFG, norm).double()
    model.init_weights()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif name.endswith("gpas.gate"):
                p.uniform_(-1.0, 1.0)
        # The model's RoPE tables are computed in fp32 (as HF's are); give it float64 ones, so that the comparison
        # tests the equations to float64 precision (RoPE itself: test_hf_equivalence.py).
        angles = rope_angles(CFG.max_seq_len, CFG.head_dim)
        model.rope_cos.copy_(angles.cos())
        model.rope_sin.copy_(angles.sin())
    return model


def assert_block_computes(model, i, equation):
    """Layer i's output, and the gradients of a random projection of it with respect to its input and to each of
    its parameters, equal those of `equation(x, block)` (which must use every parameter)."""
    block = model.layers[i]
    x = torch.randn(2, 10, CFG.dim, dtype=torch.float64, requires_grad=True)
    cos, sin = model.rope(x.shape[1], x.dtype)
    ours, expected = block(x, cos, sin), equation(x, block)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-10)
    probe = torch.randn_like(ours)
    names, params = zip(*block.named_parameters())
    grads = torch.autograd.grad((ours * probe).sum(), (x, *params))
    expected_grads = torch.autograd.grad((expected * probe).sum(), (x, *params))
    for name, g, e in zip(("input", *names), grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-10, msg=f"gradient of {name}")


def pre_ln(x, b):
    h = x + attention(rms(x, b.attn_norm.weight), b.attn, CFG.n_heads)
    return h + mlp(rms(h, b.mlp_norm.weight), b.mlp)


def post_ln(x, b):
    h = rms(x + attention(x, b.attn, CFG.n_heads), b.attn_norm.weight)
    return rms(h + mlp(h, b.mlp), b.mlp_norm.weight)


def test_post_ln_layer_matches_equations():
    model = build(NormConfig(scheme="mix", post_layers=1))
    assert model.layers[0].spec.kind == "post"
    assert_block_computes(model, 0, post_ln)


def test_pre_ln_layer_matches_equations():
    model = build(NormConfig(scheme="mix", post_layers=1))
    assert model.layers[1].spec.kind == "pre"
    assert_block_computes(model, 1, pre_ln)


def sandwich(x, b):
    h = x + rms(attention(rms(x, b.attn_norm.weight), b.attn, CFG.n_heads), b.attn_out_norm.weight)
    return h + rms(mlp(rms(h, b.mlp_norm.weight), b.mlp), b.mlp_out_norm.weight)


@pytest.mark.parametrize("scheme", ["sandwich", "peri"])
def test_sandwich_and_peri_ln_layers_match_equations(scheme):
    """Sandwich-LN (Ding et al. 2021) and Peri-LN (Kim et al. 2025) place a block's norms identically."""
    model = build(NormConfig(scheme=scheme))
    for i in range(CFG.n_layers):
        assert_block_computes(model, i, sandwich)


def test_deepnorm_layer_matches_equations():
    model = build(NormConfig(scheme="deepnorm"))
    a = (2 * CFG.n_layers) ** 0.25  # DeepNet's alpha for a decoder of N layers

    def deepnorm(x, b):
        h = rms(a * x + attention(x, b.attn, CFG.n_heads), b.attn_norm.weight)
        return rms(a * h + mlp(h, b.mlp), b.mlp_norm.weight)

    for i in range(CFG.n_layers):
        assert_block_computes(model, i, deepnorm)


def test_layernorm_scaling_layer_matches_equations():
    model = build(NormConfig(scheme="lns"))
    for i in range(CFG.n_layers):
        s = 1 / math.sqrt(i + 1)  # layer l = i + 1, counted from 1

        def lns(x, b):
            h = x + attention(s * rms(x, b.attn_norm.weight), b.attn, CFG.n_heads)
            return h + mlp(s * rms(h, b.mlp_norm.weight), b.mlp)

        assert_block_computes(model, i, lns)


def test_reordered_layer_matches_equations():
    model = build(NormConfig(scheme="reordered"))

    def reordered(x, b):  # OLMo 2: the norm on each sublayer's output, inside the residual
        h = x + rms(attention(x, b.attn, CFG.n_heads), b.attn_norm.weight)
        return h + rms(mlp(h, b.mlp), b.mlp_norm.weight)

    assert_block_computes(model, 2, reordered)


def test_reordered_layer_with_qk_norm_matches_equations():
    model = build(NormConfig(scheme="reordered", qk_norm=True))

    def reordered_qk(x, b):  # OLMo 2's QK-norm: each whole projection normalised, before RoPE
        a = b.attn
        att = attention(x, a, CFG.n_heads, q_norm=lambda q: rms(q, a.q_norm.weight),
                        k_norm=lambda k: rms(k, a.k_norm.weight))
        h = x + rms(att, b.attn_norm.weight)
        return h + rms(mlp(h, b.mlp), b.mlp_norm.weight)

    assert model.layers[0].attn.q_norm.weight.shape == (CFG.dim,)
    assert_block_computes(model, 0, reordered_qk)


def qkv_normed_attention(x, a):
    """HybridNorm's attention: softmax(N(Q) N(K)^T / sqrt(d)) N(V), each norm per head with a head-size weight."""
    hd = CFG.dim // CFG.n_heads
    return attention(x, a, CFG.n_heads, q_norm=lambda q: per_head_rms(q, a.q_norm.weight, hd),
                     k_norm=lambda k: per_head_rms(k, a.k_norm.weight, hd),
                     v_norm=lambda v: per_head_rms(v, a.v_norm.weight, hd))


def hybrid(x, b):
    y = rms(x + qkv_normed_attention(x, b.attn), b.mlp_norm.weight)
    return y + mlp(y, b.mlp)


def test_hybridnorm_layer_matches_equations():
    model = build(NormConfig(scheme="hybrid"))
    assert model.layer_kinds == ["hybrid"] * CFG.n_layers
    assert not hasattr(model.layers[0], "attn_norm")  # the attention input is not normalised
    for i in range(CFG.n_layers):
        assert_block_computes(model, i, hybrid)


def test_hybridnorm_star_first_layer_is_pre_ln_with_qkv_norm():
    model = build(NormConfig(scheme="hybrid", hybrid_star=True))
    assert model.layer_kinds == ["pre"] + ["hybrid"] * (CFG.n_layers - 1)

    def first(x, b):
        h = x + qkv_normed_attention(rms(x, b.attn_norm.weight), b.attn)
        return h + mlp(rms(h, b.mlp_norm.weight), b.mlp)

    assert_block_computes(model, 0, first)
    assert_block_computes(model, 1, hybrid)


@pytest.mark.parametrize("scheme, layer, equation", [
    ("mix", 3, lambda x, b, g: gp(gp(x + attention(rms(x, b.attn_norm.weight), b.attn, CFG.n_heads), g)
                                  + mlp(rms(gp(x + attention(rms(x, b.attn_norm.weight), b.attn, CFG.n_heads), g),
                                            b.mlp_norm.weight), b.mlp), g)),
    ("mix", 0, lambda x, b, g: post_with_gpas(x, b, g)),
    ("sandwich", 1, lambda x, b, g: sandwich_with_gpas(x, b, g)),
    ("hybrid", 1, lambda x, b, g: hybrid_with_gpas(x, b, g)),
])
def test_gpas_gates_each_residual_add(scheme, layer, equation):
    """Pre-LN-style sums are gated whole, sums a norm follows have their skip gated (the GPAS authors' Post-LN
    rule); one gate per layer serves both sublayers."""
    model = build(NormConfig(scheme=scheme, alpha=0.5, gpas=True))
    assert_block_computes(model, layer, lambda x, b: equation(x, b, b.gpas.gate))


def post_with_gpas(x, b, g):
    h = rms(gp(x, g) + attention(x, b.attn, CFG.n_heads), b.attn_norm.weight)
    return rms(gp(h, g) + mlp(h, b.mlp), b.mlp_norm.weight)


def sandwich_with_gpas(x, b, g):
    h = gp(x + rms(attention(rms(x, b.attn_norm.weight), b.attn, CFG.n_heads), b.attn_out_norm.weight), g)
    return gp(h + rms(mlp(rms(h, b.mlp_norm.weight), b.mlp), b.mlp_out_norm.weight), g)


def hybrid_with_gpas(x, b, g):
    y = rms(gp(x, g) + qkv_normed_attention(x, b.attn), b.mlp_norm.weight)
    return gp(y + mlp(y, b.mlp), g)


def test_gpas_scales_the_value_but_passes_the_gradient_unscaled():
    gpas = GPAS().double()
    with torch.no_grad():
        gpas.gate.fill_(0.7)
    x = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn_like(x)
    y = gpas(x)
    sig = torch.sigmoid(torch.tensor(0.7, dtype=torch.float64))
    torch.testing.assert_close(y, (1 - 0.7 * sig) * x, rtol=0, atol=1e-12)  # SiLU(g) = g * sigmoid(g)
    (y * upstream).sum().backward()
    torch.testing.assert_close(x.grad, upstream, rtol=0, atol=0)  # the backward sees the unscaled gradient
    silu_grad = sig * (1 + 0.7 * (1 - sig))  # d SiLU(g) / dg
    torch.testing.assert_close(gpas.gate.grad, -silu_grad * (upstream * x).sum().reshape(1), rtol=1e-12, atol=0)


def test_gpas_gate_starts_at_the_identity_and_still_learns():
    model = Transformer(CFG, NormConfig(scheme="pre", gpas=True))
    model.init_weights()
    assert all(layer.gpas.gate.item() == 0.0 for layer in model.layers)
    x = torch.randn(2, 4, CFG.dim)
    torch.testing.assert_close(model.layers[0].gpas(x), x, rtol=0, atol=0)
    tokens = torch.randint(0, CFG.vocab_size, (2, 9))
    F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten()).backward()
    assert all(layer.gpas.gate.grad.abs().item() > 0 for layer in model.layers)  # SiLU'(0) = 1/2


@pytest.mark.parametrize("norm", [NormConfig(scheme="peri"), NormConfig(scheme="pre", embed_norm=True)],
                         ids=["peri", "pre_with_embed_norm"])
def test_embedding_norm_and_final_norm(norm):
    model = build(norm)
    tokens = torch.randint(0, CFG.vocab_size, (2, 7))
    h = rms(model.embed_tokens.weight[tokens], model.embed_norm.weight)  # Peri-LN's normalised embedding
    cos, sin = model.rope(7, h.dtype)
    for layer in model.layers:
        h = layer(h, cos, sin)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), rms(h, model.norm.weight) @ model.lm_head.weight.T, rtol=0,
                                   atol=1e-10)
    assert not hasattr(build(NormConfig(scheme="peri", embed_norm=False)).embed_norm, "weight")


def test_final_norm_and_untied_head():
    model = build(NormConfig(scheme="mix", post_layers=1))
    tokens = torch.randint(0, CFG.vocab_size, (2, 7))
    h = model.embed_tokens(tokens)
    cos, sin = model.rope(7, h.dtype)
    with torch.no_grad():
        for layer in model.layers:
            h = layer(h, cos, sin)
        torch.testing.assert_close(model(tokens), rms(h, model.norm.weight) @ model.lm_head.weight.T, rtol=0,
                                   atol=1e-10)
    assert model.lm_head.weight.data_ptr() != model.embed_tokens.weight.data_ptr()


def test_rmsnorm_variance_is_fp32_under_bf16():
    from mixln_dist.model.layers import RMSNorm

    norm = RMSNorm(64).bfloat16()  # as in bf16 training, where the whole module is cast
    x = (torch.randn(4, 64) * 300).bfloat16()  # squares overflow bf16's precision, not fp32's
    out = norm(x)
    assert out.dtype == torch.bfloat16
    reference = (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)).bfloat16() * norm.weight
    assert torch.equal(out, reference)
