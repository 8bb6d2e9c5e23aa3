"""Norm placement per layer, and that every scheme is real: trainable everywhere, different from Pre-LN."""

import math

import pytest
import torch

from mixln_dist.model import (FLAVORS, ModelConfig, ModelConfigError, NormConfig, Transformer, embed_norm_on,
                              layer_kinds, layer_plan)

TINY = ModelConfig(name="t", dim=32, n_layers=4, n_heads=2, ffn_dim=64, vocab_size=64, max_seq_len=16)


@pytest.mark.parametrize("n_layers", [4, 12, 24, 32])
@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5, 1.0])
def test_mix_places_floor_alpha_l_post_layers_first(alpha, n_layers):
    kinds = layer_kinds(NormConfig(scheme="mix", alpha=alpha), n_layers)
    n_post = math.floor(alpha * n_layers)
    assert kinds == ["post"] * n_post + ["pre"] * (n_layers - n_post)


def test_paper_alphas():
    assert layer_kinds(NormConfig(scheme="mix", alpha=0.25), 12).count("post") == 3  # 71M, 130M
    assert layer_kinds(NormConfig(scheme="mix", alpha=0.25), 24).count("post") == 6  # 250M, 1B
    assert layer_kinds(NormConfig(scheme="mix", alpha=0.0625), 32).count("post") == 2  # 7B
    assert layer_kinds(NormConfig(scheme="mix", alpha=1 / 6), 24).count("post") == 4  # Table 5's 16.7% on 1B


def test_post_layers_overrides_alpha():
    kinds = layer_kinds(NormConfig(scheme="mix", alpha=0.25, post_layers=2), 32)
    assert kinds == ["post"] * 2 + ["pre"] * 30


@pytest.mark.parametrize(
    "norm, message",
    [
        (NormConfig(scheme="mix", alpha=-0.1), "norm.alpha"),
        (NormConfig(scheme="mix", alpha=1.5), "norm.alpha"),
        (NormConfig(scheme="mix", alpha=float("nan")), "norm.alpha"),
        (NormConfig(scheme="mix", post_layers=-1), "norm.post_layers"),
        (NormConfig(scheme="mix", post_layers=5), "norm.post_layers"),
        (NormConfig(scheme="pre", post_layers=1), "only meaningful for norm.scheme=mix"),
        (NormConfig(scheme="prenorm"), "unknown norm.scheme 'prenorm'"),
        (NormConfig(scheme="post", scaled_init=True), "scaled_init"),
        (NormConfig(scheme="mix", layer_kinds=["pre", "post"]), "norm.layer_kinds"),
        (NormConfig(scheme="mix", layer_kinds=["pre", "hybrid", "pre", "pre"]), "need norm.scheme=hybrid"),
        (NormConfig(scheme="pre", hybrid_star=True), "norm.hybrid_star .* needs norm.scheme=hybrid"),
        (NormConfig(scheme="hybrid", qk_norm=True), "normalises queries, keys and values per head already"),
        (NormConfig(scheme="peri", post_layers=1), "only meaningful for norm.scheme=mix"),
    ],
)
def test_invalid_norm_settings_are_rejected(norm, message):
    with pytest.raises(ModelConfigError, match=message):
        Transformer(TINY, norm)


def test_pure_schemes_use_one_kind_everywhere():
    for scheme in ("pre", "post", "sandwich", "deepnorm", "lns", "reordered", "hybrid"):
        assert layer_kinds(NormConfig(scheme=scheme), 6) == [scheme] * 6


def test_later_placements_and_their_switches():
    assert layer_kinds(NormConfig(scheme="peri"), 4) == ["sandwich"] * 4  # Peri-LN's block is Sandwich-LN's
    assert layer_kinds(NormConfig(scheme="hybrid", hybrid_star=True), 4) == ["pre", "hybrid", "hybrid", "hybrid"]
    plans = {name: layer_plan(TINY, norm) for name, norm in (
        ("hybrid_star", NormConfig(scheme="hybrid", hybrid_star=True)),
        ("mix_qk", NormConfig(scheme="mix", qk_norm=True)),
        ("mix_gpas", NormConfig(scheme="mix", gpas=True)), ("mix", NormConfig(scheme="mix")))}
    assert {s.qkv_norm for s in plans["hybrid_star"]} == {"qkv"}  # HybridNorm*'s Pre-LN block keeps QKV-norm
    assert {s.qkv_norm for s in plans["mix_qk"]} == {"qk"} and {s.qkv_norm for s in plans["mix"]} == {"none"}
    assert all(s.gpas for s in plans["mix_gpas"]) and not any(s.gpas for s in plans["mix"])
    # The embedding norm: on by default for Peri-LN only, a switch everywhere.
    assert [embed_norm_on(NormConfig(scheme=s)) for s in ("peri", "sandwich", "pre")] == [True, False, False]
    assert not embed_norm_on(NormConfig(scheme="peri", embed_norm=False))
    assert embed_norm_on(NormConfig(scheme="mix", embed_norm=True))


def test_summary_names_every_placement_and_switch():
    from mixln_dist.model import summarize

    def summary(**norm):
        with torch.device("meta"):
            return summarize(Transformer(TINY, NormConfig(**norm)))

    assert "layers 0-3     Sandwich-LN (= Peri-LN block) (4 layers)" in summary(scheme="peri")
    assert "norm scheme: peri, embedding norm" in summary(scheme="peri")
    assert "reordered norm (OLMo 2) + QK-norm (4 layers)" in summary(scheme="reordered", qk_norm=True)
    text = summary(scheme="hybrid", hybrid_star=True)
    assert "norm scheme: hybrid, HybridNorm*" in text and "layer 0        Pre-LN + QKV-norm (1 layer)" in text
    assert "layers 1-3     HybridNorm (Post-LN feed-forward) + QKV-norm (3 layers)" in text
    text = summary(scheme="mix", gpas=True)
    assert "norm scheme: mix, GPAS" in text and "layer 0        Post-LN + GPAS (1 layer)" in text


ALL_SCHEMES = {
    "pre": NormConfig(scheme="pre"),
    "post": NormConfig(scheme="post"),
    "mix": NormConfig(scheme="mix", alpha=0.5),
    "sandwich": NormConfig(scheme="sandwich"),
    "deepnorm": NormConfig(scheme="deepnorm"),
    "lns": NormConfig(scheme="lns"),
    "pre_scaled_init": NormConfig(scheme="pre", scaled_init=True),
    "mix_scaled_init": NormConfig(scheme="mix", alpha=0.5, scaled_init=True),
    "peri": NormConfig(scheme="peri"),
    "reordered": NormConfig(scheme="reordered"),
    "reordered_qk": NormConfig(scheme="reordered", qk_norm=True),
    "hybrid": NormConfig(scheme="hybrid"),
    "hybrid_star": NormConfig(scheme="hybrid", hybrid_star=True),
    "mix_gpas": NormConfig(scheme="mix", alpha=0.5, gpas=True),
    "pre_qk_embed_norm": NormConfig(scheme="pre", qk_norm=True, embed_norm=True),
}


def build(norm, seed=0, cfg=TINY):
    model = Transformer(cfg, norm)
    torch.manual_seed(seed)  # init_weights alone decides the weights, whatever construction drew
    model.init_weights()
    return model


@pytest.mark.parametrize("scheme", ALL_SCHEMES)
def test_every_parameter_gets_a_gradient(scheme):
    model = build(ALL_SCHEMES[scheme])
    tokens = torch.randint(0, TINY.vocab_size, (2, 12))
    logits = model(tokens[:, :-1])
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{scheme}: no gradient reaches {name}"


@pytest.mark.parametrize("scheme", [s for s in ALL_SCHEMES if s not in ("pre", "pre_scaled_init")])
def test_non_pre_schemes_change_the_output(scheme):
    """Same weights (the scheme's extra norms aside), different placement: the logits must differ."""
    pre = build(ALL_SCHEMES["pre"])
    other = Transformer(TINY, ALL_SCHEMES[scheme])
    other.load_state_dict(pre.state_dict(), strict=False)
    tokens = torch.randint(0, TINY.vocab_size, (2, 12))
    with torch.no_grad():
        assert (pre(tokens) - other(tokens)).abs().max() > 1e-3


def test_scaled_init_changes_only_output_projections_of_pre_layers():
    plain = build(NormConfig(scheme="mix", alpha=0.5), cfg=ModelConfig(**{**TINY.__dict__, "dim": 256, "ffn_dim": 512}))
    scaled = build(NormConfig(scheme="mix", alpha=0.5, scaled_init=True),
                   cfg=ModelConfig(**{**TINY.__dict__, "dim": 256, "ffn_dim": 512}))
    target = 0.02 / math.sqrt(2 * TINY.n_layers)
    for i, (a, b) in enumerate(zip(plain.layers, scaled.layers)):
        for name in ("attn.o_proj.weight", "mlp.down_proj.weight"):
            std = b.get_parameter(name).std().item()
            expected = 0.02 if a.spec.kind == "post" else target
            assert std == pytest.approx(expected, rel=0.05), (i, name)
        assert torch.equal(a.attn.q_proj.weight, b.attn.q_proj.weight)


def test_deepnorm_constants_and_init():
    model = build(NormConfig(scheme="deepnorm"), cfg=ModelConfig(**{**TINY.__dict__, "dim": 256, "ffn_dim": 512}))
    L = TINY.n_layers
    for block in model.layers:
        assert block.spec.residual_scale == pytest.approx((2 * L) ** 0.25)
        w = block.mlp.up_proj.weight  # xavier normal: std = gain * sqrt(2 / (fan_in + fan_out))
        assert w.std().item() == pytest.approx((8 * L) ** -0.25 * math.sqrt(2 / (256 + 512)), rel=0.05)
        assert block.attn.q_proj.weight.std().item() == pytest.approx(math.sqrt(2 / 512), rel=0.05)


def test_layernorm_scaling_scales_by_inverse_sqrt_depth():
    model = build(NormConfig(scheme="lns"))
    x = torch.randn(2, 5, TINY.dim)
    for i, block in enumerate(model.layers):
        plain = torch.nn.functional.rms_norm(x, (TINY.dim,), block.attn_norm.weight, eps=TINY.norm_eps)
        torch.testing.assert_close(block.attn_norm(x), plain / math.sqrt(i + 1))


def test_init_statistics():
    cfg = ModelConfig(**{**TINY.__dict__, "dim": 256, "ffn_dim": 512, "vocab_size": 4096})
    model = build(NormConfig(scheme="pre"), cfg=cfg)
    assert model.embed_tokens.weight.std().item() == pytest.approx(math.sqrt(0.4), rel=0.02)
    assert model.lm_head.weight.std().item() == pytest.approx(0.02, rel=0.02)
    assert model.layers[0].attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert all(torch.equal(p, torch.ones_like(p)) for n, p in model.named_parameters() if "norm" in n)


def test_tied_embeddings_share_one_tensor():
    cfg = ModelConfig(**{**TINY.__dict__, "tie_embeddings": True})
    model = build(NormConfig(scheme="pre"), cfg=cfg)
    assert model.lm_head.weight is model.embed_tokens.weight
    assert model.embed_tokens.weight.std().item() == pytest.approx(math.sqrt(0.4), rel=0.1)


@pytest.mark.parametrize("scheme", ["mix", "peri", "reordered_qk", "hybrid_star", "mix_gpas", "pre_qk_embed_norm"])
def test_meta_device_build_then_init(scheme):
    """Built on the meta device (no memory), materialized (to_empty: every value garbage, buffers included), then
    initialised: same model as an eager build, so no scheme keeps a constant init_weights does not restore."""
    with torch.device("meta"):
        model = Transformer(TINY, ALL_SCHEMES[scheme])
    assert all(p.is_meta for p in model.parameters())
    model.to_empty(device="cpu")
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            t.fill_(float("nan"))  # what to_empty leaves is arbitrary: make it unmistakable
    torch.manual_seed(0)
    model.init_weights()
    eager = build(ALL_SCHEMES[scheme], seed=0)
    for (name, a), b in zip(model.state_dict().items(), eager.state_dict().values()):
        assert torch.equal(a, b), name
    torch.testing.assert_close(model.rope_cos, eager.rope_cos)
    tokens = torch.randint(0, TINY.vocab_size, (1, 8))
    torch.testing.assert_close(model(tokens), eager(tokens))


def test_sequence_longer_than_rope_table_is_a_clear_error():
    model = build(NormConfig(scheme="pre"))
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, TINY.max_seq_len + 1, dtype=torch.long))


@pytest.mark.parametrize(
    "flavor, total, rel",
    [("llama_71m", 70.6e6, 1e-3), ("llama_130m", 134.1e6, 1e-3), ("llama_250m", 247.4e6, 1e-3),
     ("llama_350m", 368.0e6, 1e-3), ("llama_1b", 1.34e9, 2e-3), ("llama_7b", 6.74e9, 1e-3)],
)
def test_paper_flavor_parameter_counts(flavor, total, rel):
    from mixln_dist.model import count_parameters

    with torch.device("meta"):
        model = Transformer(FLAVORS[flavor], NormConfig(scheme="mix"))
    assert count_parameters(model)["total"] == pytest.approx(total, rel=rel)
