"""The DeepSpeed JSON, generated from the run configuration (never written by hand), and the batch arithmetic
it rests on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..config import Config, ConfigError


@dataclass(frozen=True)
class BatchPlan:
    micro_batch_size: int  # sequences per rank per forward pass
    grad_accum_steps: int
    dp_world_size: int

    @property
    def global_batch_size(self) -> int:
        return self.micro_batch_size * self.grad_accum_steps * self.dp_world_size


def plan_batches(micro: int, accum: Optional[int], global_batch: Optional[int], world: int) -> BatchPlan:
    """Check global = micro x accumulation x data-parallel ranks once, deriving whichever side is left null."""
    per_step = micro * world
    if accum is None and global_batch is None:
        accum = 1
    elif accum is None:
        if global_batch % per_step:
            raise ConfigError(
                f"train.global_batch_size={global_batch} is not a multiple of train.micro_batch_size ({micro}) x "
                f"{world} data-parallel ranks = {per_step}; choose a global batch divisible by {per_step} "
                f"(e.g. {max(per_step, global_batch // per_step * per_step)}) or another micro batch size"
            )
        accum = global_batch // per_step
    elif global_batch is not None and global_batch != per_step * accum:
        raise ConfigError(
            f"train.global_batch_size={global_batch} but train.micro_batch_size ({micro}) x "
            f"train.grad_accum_steps ({accum}) x {world} data-parallel ranks = {per_step * accum}; "
            "set one of grad_accum_steps or global_batch_size to null to derive it"
        )
    return BatchPlan(micro, accum, world)


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return precision


def reduce_bucket_elements(configured: int, n_params: int) -> int:
    """The gradient bucket ZeRO-1/2 allocate at every micro-step: zero.reduce_bucket_size elements (500 M by
    default: 2 GB in fp32), cut to the model's size, since a larger bucket holds nothing more (the same single
    bucket, the same reductions, bit for bit). The engine applies it (engine.fit_reduce_bucket), the memory
    planner counts it."""
    return min(configured, max(n_params, 1))


def deepspeed_config(cfg: Config, batch: BatchPlan, precision: str, load_universal: bool = False) -> dict:
    z = cfg.zero
    zero = {
        "stage": z.stage,
        "overlap_comm": z.overlap_comm,
        "contiguous_gradients": z.contiguous_gradients,
        "reduce_bucket_size": z.reduce_bucket_size,
        "allgather_bucket_size": z.allgather_bucket_size,
    }
    if z.stage == 3:
        zero.update(
            stage3_prefetch_bucket_size=z.stage3_prefetch_bucket_size,
            stage3_param_persistence_threshold=z.stage3_param_persistence_threshold,
            stage3_max_live_parameters=z.stage3_max_live_parameters,
        )
    if z.offload_optimizer != "none":
        zero["offload_optimizer"] = {"device": z.offload_optimizer, "nvme_path": z.nvme_path, "pin_memory": True}
    if z.offload_param != "none":
        zero["offload_param"] = {"device": z.offload_param, "nvme_path": z.nvme_path, "pin_memory": True}
    ds = {
        "train_batch_size": batch.global_batch_size,
        "train_micro_batch_size_per_gpu": batch.micro_batch_size,
        "gradient_accumulation_steps": batch.grad_accum_steps,
        "gradient_clipping": cfg.optim.grad_clip,  # 0 = no clipping
        "zero_optimization": zero,
        # The optimizer is ours (param groups without decay on norms); ZeRO shards it all the same.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**62,  # our logger reports; DeepSpeed's own per-step prints stay quiet
        "wall_clock_breakdown": False,
    }
    if precision == "bf16":
        # bf16 weights and activations, fp32 master weights in the optimizer, fp32 gradient accumulation.
        ds["bf16"] = {"enabled": True}
        ds["data_types"] = {"grad_accum_dtype": "fp32"}
    if load_universal:
        ds["checkpoint"] = {"load_universal": True}
    return ds
