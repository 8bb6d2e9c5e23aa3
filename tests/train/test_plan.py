"""Batch arithmetic, the generated DeepSpeed config, the LR schedules and the optimizer's param groups."""

import math

import pytest
import torch

from mixln_dist.config import ConfigError, compose
from mixln_dist.model import Transformer
from mixln_dist.train.ds_config import deepspeed_config, plan_batches
from mixln_dist.train.optim import lr_factor, param_groups


@pytest.mark.parametrize(
    "micro, accum, global_batch, world, expected",
    [(8, None, None, 2, (8, 1, 16)), (8, None, 64, 2, (8, 4, 64)), (4, 3, None, 2, (4, 3, 24)), (4, 2, 16, 2, (4, 2, 16)),
     (2, None, 512, 1, (2, 256, 512))],
)
def test_batch_plan_derives_the_missing_side(micro, accum, global_batch, world, expected):
    plan = plan_batches(micro, accum, global_batch, world)
    assert (plan.micro_batch_size, plan.grad_accum_steps, plan.global_batch_size) == expected


def test_indivisible_global_batch_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"global_batch_size=100 is not a multiple of .* = 16; .*divisible by 16"):
        plan_batches(8, None, 100, 2)


def test_inconsistent_batch_settings_are_a_clear_error():
    with pytest.raises(ConfigError, match=r"global_batch_size=64 but .*\(8\) x .*\(2\) x 2 data-parallel ranks = 32"):
        plan_batches(8, 2, 64, 2)


def test_deepspeed_config_follows_the_run_config():
    cfg = compose(["zero=stage3_offload", "optim.grad_clip=0.5"])
    ds = deepspeed_config(cfg, plan_batches(4, 2, None, 2), "bf16")
    assert ds["train_batch_size"] == 16 and ds["gradient_accumulation_steps"] == 2
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_clipping"] == 0.5
    z = ds["zero_optimization"]
    assert z["stage"] == 3 and z["offload_param"]["device"] == "cpu" and z["offload_optimizer"]["device"] == "cpu"
    assert ds["bf16"] == {"enabled": True} and ds["data_types"] == {"grad_accum_dtype": "fp32"}
    fp32 = deepspeed_config(compose(["zero=stage1"]), plan_batches(4, 1, None, 1), "fp32")
    assert "bf16" not in fp32 and "offload_optimizer" not in fp32["zero_optimization"]
    assert "stage3_prefetch_bucket_size" not in fp32["zero_optimization"]


def test_cosine_schedule_warms_up_then_decays_to_the_floor():
    cfg = compose(["optim.warmup_steps=10", "optim.min_lr_ratio=0.1"]).optim
    f = lr_factor(cfg, total_steps=110)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(60) == pytest.approx(0.55) and f(110) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(10, 110))


def test_wsd_and_constant_schedules():
    cfg = compose(["optim.schedule=wsd", "optim.warmup_steps=10", "optim.decay_fraction=0.2", "optim.min_lr_ratio=0.0"])
    f = lr_factor(cfg.optim, total_steps=100)
    assert f(5) == pytest.approx(0.6) and f(50) == 1.0 and f(79) == 1.0
    assert f(90) == pytest.approx(0.5) and f(100) == pytest.approx(0.0)
    g = lr_factor(compose(["optim.schedule=constant", "optim.warmup_steps=4"]).optim, total_steps=100)
    assert [g(s) for s in (0, 3, 50, 99)] == [0.25, 1.0, 1.0, 1.0]


def test_no_weight_decay_on_norms():
    cfg = compose()
    model = Transformer(cfg.model, cfg.norm)
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all("norm" in names[id(p)] for p in no_decay["params"])
    assert all(p.dim() == 2 for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_flops_per_token_formula():
    from mixln_dist.train.metrics import flops_per_token

    cfg = compose()
    model = Transformer(cfg.model, cfg.norm)
    n = sum(p.numel() for p in model.parameters()) - model.embed_tokens.weight.numel()
    assert flops_per_token(model, 4, 128, 256) == 6 * n + 12 * 4 * 128 * 256
