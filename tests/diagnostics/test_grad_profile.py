"""The analysis-time gradient-norm profile: plain backward on fixed batches, grouped per layer."""

import math

import pytest
import torch.nn.functional as F

from mixln_dist.diagnostics.grad_norms import grad_norm_profile
from mixln_dist.grad_norms import model_grad_norms
from mixln_dist.model import NormConfig

from .helpers import TINY, build, tokens


def test_profile_of_one_batch_is_the_norm_of_the_training_loss_gradient():
    model = build(NormConfig(scheme="mix", alpha=0.5))
    batch = tokens(3, 9)
    F.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten()).backward()
    expected = model_grad_norms(model)
    model.zero_grad(set_to_none=True)

    profile = grad_norm_profile(model, [batch])
    assert profile.norms.keys() == expected.keys()
    for key, value in expected.items():
        assert profile.norms[key] == pytest.approx(value, rel=1e-5), key
    assert all(p.grad is None for p in model.parameters())  # leaves no gradients behind


def test_profile_averages_the_norms_of_each_batch():
    model = build(NormConfig(scheme="pre"))
    a, b = tokens(2, 9, seed=1), tokens(2, 9, seed=2)
    one, two = grad_norm_profile(model, [a]), grad_norm_profile(model, [b])
    both = grad_norm_profile(model, [a, b])
    assert both.batches == 2
    for key in both.norms:
        assert both.norms[key] == pytest.approx((one.norms[key] + two.norms[key]) / 2, rel=1e-6)


def test_rows_split_each_layer_and_add_the_ends():
    profile = grad_norm_profile(build(NormConfig(scheme="lns")), [tokens(2, 9)])
    rows = profile.rows()
    assert [r["part"] for r in rows] == [f"layer{l}" for l in range(TINY.n_layers)] + ["embed", "final_norm", "head"]
    for r in rows[: TINY.n_layers]:
        assert r["total"] == pytest.approx(math.sqrt(r["attn"] ** 2 + r["mlp"] ** 2 + r["norm"] ** 2))
    summary = profile.summary()
    assert summary["last_to_first_ratio"] == pytest.approx(rows[TINY.n_layers - 1]["total"] / rows[0]["total"])


def test_a_tied_head_has_no_row_value_of_its_own():
    rows = grad_norm_profile(build(NormConfig(scheme="pre"), tie_embeddings=True), [tokens(2, 9)]).rows()
    assert rows[-1]["part"] == "head" and rows[-1]["total"] == ""
    assert rows[-3]["total"] > 0  # the shared weight's gradient is reported under embed
