"""Angular distance: the known answers, the official per-window formula, and the result's shape."""

import math

import pytest
import torch
import torch.nn.functional as F

from mixln_dist.diagnostics.angular import angular_distances, deepest_quarter, pairwise_angular, sliding_windows
from mixln_dist.model import NormConfig

from .helpers import TINY, build, make_identity, tokens


def test_known_answers_for_pairs_of_states():
    x = torch.randn(16)
    d = pairwise_angular(torch.stack([x, x, -x, torch.zeros(16)]))
    assert d[0, 1] == pytest.approx(0.0, abs=1e-6)  # identical
    assert d[0, 2] == pytest.approx(1.0, abs=1e-6)  # opposite
    e1, e2 = torch.eye(16)[:2]
    assert pairwise_angular(torch.stack([e1, e2]))[0, 1] == pytest.approx(0.5, abs=1e-12)  # orthogonal
    assert d[3].isnan().all() and d[:, 3].isnan().all()  # a zero state has no direction


def test_layers_that_change_nothing_are_at_distance_zero():
    model = build(NormConfig(scheme="pre"))
    for block in model.layers:
        make_identity(block)
    result = angular_distances(model, tokens(6, 12), batch_size=4)
    defined = result.distance[~result.distance.isnan()]
    assert defined.numel() == TINY.n_layers * (TINY.n_layers + 1) // 2
    assert defined.abs().max() < 1e-6


def test_a_layer_that_flips_the_stream_is_at_distance_one():
    """A Post-LN block with silent sublayers is out = N(N(x)); a norm gain of -1 makes it point at -x."""
    model = build(NormConfig(scheme="post"), n_layers=2)
    with torch.no_grad():
        for block in model.layers:
            make_identity(block)
        model.layers[0].attn_norm.weight.fill_(-1.0)
    d = angular_distances(model, tokens(4, 8), all_tokens=True).distance
    assert d[0, 0] == pytest.approx(1.0, abs=1e-6)  # d(0, 1): flipped
    assert d[0, 1] == pytest.approx(0.0, abs=1e-6)  # d(1, 2): layer 1 only renormalises
    assert d[1, 0] == pytest.approx(1.0, abs=1e-6)  # d(0, 2)


@pytest.mark.parametrize("all_tokens", [False, True])
def test_matches_the_official_per_window_formula(all_tokens):
    """mean over windows of arccos(cos(x_l[-1], x_{l+n}[-1])) / pi, computed the slow, obvious way."""
    model = build(NormConfig(scheme="mix", alpha=0.5))
    windows = tokens(5, 10)
    result = angular_distances(model, windows, batch_size=2, all_tokens=all_tokens)
    L = TINY.n_layers
    with torch.no_grad():
        states = model.hidden_states(windows)
    for n in range(1, L + 1):
        for l in range(L + 1 - n):
            a, b = states[l].double(), states[l + n].double()
            if not all_tokens:
                a, b = a[:, -1], b[:, -1]
            expected = (torch.arccos(F.cosine_similarity(a, b, dim=-1).clamp(-1, 1)) / math.pi).mean()
            assert result.distance[n - 1, l].item() == pytest.approx(expected.item(), abs=1e-7), (l, n)
            assert result.count[n - 1, l] == (50 if all_tokens else 5)


def test_result_shape_and_summary():
    result = angular_distances(build(NormConfig(scheme="mix")), tokens(3, 8))
    L = TINY.n_layers
    assert result.distance.shape == (L, L)
    n, l = torch.meshgrid(torch.arange(1, L + 1), torch.arange(L), indexing="ij")
    assert torch.equal(result.distance.isnan(), l + n > L)
    rows = result.rows()
    assert len(rows) == L * (L + 1) // 2 and set(rows[0]) == {"start_layer", "n", "distance", "count"}
    summary = result.summary()
    assert summary["adjacent"] == result.distance[0].tolist() and len(summary["adjacent"]) == L
    assert summary["mean_adjacent_deepest_quarter"] == pytest.approx(summary["adjacent"][-1])  # L=4: one layer


def test_deepest_quarter():
    assert deepest_quarter(4) == slice(3, 4)
    assert deepest_quarter(24) == slice(18, 24)
    assert deepest_quarter(2) == slice(1, 2)


def test_sliding_windows():
    stream = torch.arange(10)
    assert sliding_windows(stream, 4, 3).tolist() == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    spread = sliding_windows(torch.arange(100), 4, 1, limit=3)  # 97 windows -> first, middle, last
    assert spread[:, 0].tolist() == [0, 48, 96]
    with pytest.raises(ValueError, match="fewer than one window"):
        sliding_windows(stream, 11, 1)
