"""Performance drop: the trainer's loss for the full model, the pruned model's loss for each layer."""

import pytest
import torch

from mixln_dist.diagnostics.drop import layer_removal_drop, mean_loss
from mixln_dist.diagnostics.surgery import remove_layer
from mixln_dist.evaluation import loss_sums
from mixln_dist.errors import AnalysisError
from mixln_dist.model import NormConfig

from .helpers import TINY, build, make_identity, tokens


def batches(n_batches=2, size=3, length=13):
    rows = tokens(n_batches * size, length)
    valid = torch.ones(len(rows), dtype=torch.bool)
    valid[-1] = False  # a padding row, as eval_batches yields at the end of a split: it must not count
    return list(zip(rows.split(size), valid.split(size)))


def test_each_entry_is_the_validation_loss_of_the_pruned_model():
    model = build(NormConfig(scheme="mix", alpha=0.5))
    data = batches()
    result = layer_removal_drop(model, data)
    sums = loss_sums(model, data, torch.device("cpu"))
    assert result.base_loss == pytest.approx((sums[0] / sums[1]).item(), rel=1e-12)
    assert result.tokens == 5 * 12
    for l in range(TINY.n_layers):
        assert result.losses[l] == pytest.approx(mean_loss(remove_layer(model, l), data)[0], rel=1e-12)
    assert result.kinds == ["post", "post", "pre", "pre"]


def test_removing_a_layer_that_does_nothing_costs_nothing():
    model = build(NormConfig(scheme="pre"))
    make_identity(model.layers[2])
    increase = layer_removal_drop(model, batches()).increase()
    assert increase[2] == pytest.approx(0.0, abs=1e-6)
    assert all(abs(x) > 1e-4 for i, x in enumerate(increase) if i != 2)


def test_rows_and_summary():
    result = layer_removal_drop(build(NormConfig(scheme="pre")), batches())
    rows = result.rows()
    assert len(rows) == TINY.n_layers
    assert set(rows[0]) == {"layer", "kind", "loss", "perplexity", "loss_increase"}
    summary = result.summary()
    worst = summary["max_increase_layer"]
    assert summary["max_increase"] == max(result.increase()) == rows[worst]["loss_increase"]
    assert summary["mean_increase_deepest_quarter"] == pytest.approx(result.increase()[-1])  # L=4: one layer


def test_an_empty_source_is_a_clear_error():
    empty = [(tokens(2, 5), torch.zeros(2, dtype=torch.bool))]
    with pytest.raises(AnalysisError, match="no valid samples"):
        layer_removal_drop(build(NormConfig(scheme="pre")), empty)
