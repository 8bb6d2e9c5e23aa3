"""zero=stage3_init builds each norm scheme already partitioned (deepspeed.zero.Init) and initialises it unit by
unit; the weights must be exactly those of the ordinary build from the same seed, the schemes' own norms and GPAS
gates included (a constant kept in a buffer, or a parameter no init unit covers, would differ)."""

import deepspeed
import pytest
import torch

from conftest import tiny_overrides
from mixln_dist.config import compose

SCHEMES = {"peri": ("norm=peri",), "reordered_qk": ("norm=reordered", "norm.qk_norm=true"),
           "hybrid_star": ("norm=hybrid", "norm.hybrid_star=true"), "mix_gpas": ("norm=mix", "norm.gpas=true"),
           "lns_gpas": ("norm=lns", "norm.gpas=true")}


def initial_weights(env, tiny_dataset, out, *overrides):
    from mixln_dist.train.trainer import Trainer

    trainer = Trainer(compose(tiny_overrides(tiny_dataset, out, *overrides)), env, log=lambda *a, **k: None)
    params = list(trainer.engine.module.named_parameters())
    with deepspeed.zero.GatheredParameters([p for _, p in params], enabled=trainer.cfg.zero.zero_init):
        weights = {n: p.detach().clone() for n, p in params}
    trainer.close()
    return weights


@pytest.mark.parametrize("scheme", SCHEMES)
def test_zero_init_builds_the_same_model(scheme, env, tiny_dataset, tmp_path):
    plain = initial_weights(env, tiny_dataset, tmp_path / "plain", "zero=stage2", *SCHEMES[scheme])
    partitioned = initial_weights(env, tiny_dataset, tmp_path / "z3", "zero=stage3_init", *SCHEMES[scheme])
    assert partitioned.keys() == plain.keys()
    for name, tensor in plain.items():
        assert torch.equal(partitioned[name], tensor), name
    # The constants are really theirs (not left at whatever zero.Init allocated): norms 1, gates 0.
    gains = {n: t for n, t in plain.items() if "norm" in n or n.endswith("gpas.gate")}
    assert gains and all(torch.all(t == (0 if n.endswith("gate") else 1)) for n, t in gains.items())
