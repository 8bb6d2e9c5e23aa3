"""AdamW with decay only on matrices, and the learning-rate schedules."""

from __future__ import annotations

import math
from typing import Callable, List

import torch
from torch import nn

from ..config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> List[dict]:
    """Norm weights (1-D) never decay; embeddings, projections and the head do."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            shape = getattr(p, "ds_shape", p.shape)  # under zero.Init, p itself is an empty 1-D shard
            (decay if len(shape) >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def choose_impl(cfg: OptimConfig, device: torch.device, offload: bool) -> str:
    """auto: DeepSpeed's CPU Adam with optimizer offload, its fused Adam on GPUs when the op can build,
    torch's AdamW otherwise (fused on a CPU: it needs no compile and is as fast as DeepSpeed's)."""
    if cfg.impl != "auto":
        return cfg.impl
    if offload:
        return "cpu"
    if device.type == "cuda":
        from deepspeed.ops.op_builder import FusedAdamBuilder

        return "fused" if FusedAdamBuilder().is_compatible() else "torch"
    return "torch"


def build_optimizer(model: nn.Module, cfg: OptimConfig, impl: str) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    betas = tuple(cfg.betas)
    if impl == "cpu":
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=cfg.lr, betas=betas, eps=cfg.eps, adamw_mode=True)
    if impl == "fused":
        from deepspeed.ops.adam import FusedAdam

        return FusedAdam(groups, lr=cfg.lr, betas=betas, eps=cfg.eps, adam_w_mode=True)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, eps=cfg.eps, fused=fusable(groups))
    # Loading a state dict replaces each group's settings with the saved ones, the kernel choice included: a
    # checkpoint written before the fused kernel was the default would resume on the slow per-tensor loop.
    optimizer.register_load_state_dict_post_hook(_keep_kernel_choice(optimizer.defaults["fused"]))
    return optimizer


def fusable(groups: List[dict]) -> bool:
    """Whether torch's fused AdamW kernel can take these parameters: one pass over each tensor instead of the
    default per-tensor loop of a dozen kernels with full-size temporaries (71 M parameters on 2 CPU cores: 48
    against 369 ms a step; docs/benchmarks.md)."""
    params = [p for g in groups for p in g["params"]]
    return bool(params) and all(p.dtype.is_floating_point and p.device.type in ("cpu", "cuda") for p in params)


def _keep_kernel_choice(fused: bool) -> Callable[[torch.optim.Optimizer], None]:
    def restore(optimizer: torch.optim.Optimizer) -> None:
        for group in optimizer.param_groups:
            group["fused"], group["foreach"] = fused, None

    return restore


def lr_factor(cfg: OptimConfig, total_steps: int) -> Callable[[int], float]:
    """The multiplier of optim.lr at each optimizer step (0-based)."""
    warmup, floor = cfg.warmup_steps, cfg.min_lr_ratio

    def warm(step: int) -> float:
        return (step + 1) / warmup  # the first update already moves; step warmup-1 reaches the peak

    def cosine(step: int) -> float:
        if step < warmup:
            return warm(step)
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    def constant(step: int) -> float:
        return warm(step) if step < warmup else 1.0

    def wsd(step: int) -> float:
        decay_start = int(total_steps * (1 - cfg.decay_fraction))
        if step < warmup:
            return warm(step)
        if step < decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start) / max(1, total_steps - decay_start))
        return 1.0 - (1.0 - floor) * progress

    return {"cosine": cosine, "constant": constant, "wsd": wsd}[cfg.schedule]


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):
    # LambdaLR's state is just the step count; the function is rebuilt from the config on resume.
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, total_steps))
