"""Layer surgery: the pruned model *is* an (L-1)-layer model, and every kept block keeps its own constants."""

import dataclasses
import math
import re

import pytest
import torch

from .helpers import TINY, build, tokens
from mixln_dist.diagnostics.surgery import remove_layer
from mixln_dist.model import NormConfig, Transformer

SCHEMES = {"pre": NormConfig(scheme="pre"), "post": NormConfig(scheme="post"),
           "mix": NormConfig(scheme="mix", alpha=0.5)}  # mix: post, post, pre, pre


def renumbered_state(model: Transformer, removed: int) -> dict:
    """The original weights with layer `removed` dropped and the later layers shifted down by one."""
    state = {}
    for key, value in model.state_dict().items():
        m = re.match(r"layers\.(\d+)\.(.*)", key)
        if m is None:
            state[key] = value
        elif int(m.group(1)) != removed:
            j = int(m.group(1))
            state[f"layers.{j - (j > removed)}.{m.group(2)}"] = value
    return state


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("removed", range(TINY.n_layers))
def test_removal_equals_a_model_built_with_one_layer_fewer(scheme, removed):
    model = build(SCHEMES[scheme])
    kinds = [k for i, k in enumerate(model.layer_kinds) if i != removed]
    pruned = remove_layer(model, removed)

    reference = Transformer(dataclasses.replace(TINY, n_layers=TINY.n_layers - 1),
                            dataclasses.replace(SCHEMES[scheme], layer_kinds=kinds))
    reference.load_state_dict(renumbered_state(model, removed), strict=True)
    reference.reset_rope()

    assert len(pruned.layers) == TINY.n_layers - 1
    assert pruned.cfg.n_layers == TINY.n_layers - 1 and pruned.norm_cfg.layer_kinds == kinds
    assert pruned.layer_kinds == kinds and [s.kind for s in pruned.plan] == kinds
    x = tokens(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), reference(x), rtol=0, atol=0)


@pytest.mark.parametrize("scheme", ["lns", "deepnorm"])
def test_removal_keeps_each_blocks_depth_constants(scheme):
    """LayerNorm Scaling's 1/sqrt(l) and DeepNorm's (2L)^(1/4) belong to the trained block: nothing is
    renumbered, and the output is the kept blocks run in order."""
    model = build(NormConfig(scheme=scheme))
    pruned = remove_layer(model, 1)
    kept = [model.layers[i] for i in (0, 2, 3)]
    assert [b.spec for b in pruned.layers] == [b.spec for b in kept] == pruned.plan
    if scheme == "lns":  # layer 2 keeps 1/sqrt(3), not the 1/sqrt(2) of a fresh model's second layer
        assert pruned.layers[1].attn_norm.scale == pytest.approx(1 / math.sqrt(3))
    else:  # the residual scale of a 4-layer stack, not of a 3-layer one
        assert all(b.spec.residual_scale == pytest.approx(8 ** 0.25) for b in pruned.layers)

    x = tokens(2, 16)
    with torch.no_grad():
        h = model.embed_tokens(x)
        cos, sin = model.rope(x.shape[1], h.dtype)
        for block in kept:
            h = block(h, cos, sin)
        torch.testing.assert_close(pruned(x), model.lm_head(model.norm(h)), rtol=0, atol=0)


def test_the_original_model_is_untouched():
    model = build(SCHEMES["mix"])
    x = tokens(2, 16)
    with torch.no_grad():
        before = model(x)
        remove_layer(model, 0)
        after = model(x)
    assert len(model.layers) == TINY.n_layers and model.cfg.n_layers == TINY.n_layers
    assert model.norm_cfg.layer_kinds == []
    torch.testing.assert_close(before, after, rtol=0, atol=0)


def test_negative_index_counts_from_the_end():
    model = build(SCHEMES["mix"])
    assert [b.spec.layer_id for b in remove_layer(model, -1).layers] == [0, 1, 2]


def test_tied_head_stays_tied():
    pruned = remove_layer(build(SCHEMES["pre"], tie_embeddings=True), 2)
    assert pruned.lm_head.weight is pruned.embed_tokens.weight


def test_scaled_init_mix_pruned_to_all_post_layers_still_builds():
    model = build(NormConfig(scheme="mix", post_layers=1, scaled_init=True), n_layers=2)
    pruned = remove_layer(model, 1)  # only the Post-LN layer remains
    assert pruned.layer_kinds == ["post"] and not pruned.norm_cfg.scaled_init
    Transformer(pruned.cfg, pruned.norm_cfg)  # and its config describes a valid model


def test_impossible_removals_are_refused():
    with pytest.raises(IndexError, match="layers 0..3"):
        remove_layer(build(SCHEMES["pre"]), 4)
    with pytest.raises(ValueError, match="at least one layer must remain"):
        remove_layer(build(SCHEMES["pre"], n_layers=1), 0)
