"""Will it fit? Per-GPU memory of a run, from its composed config alone (nothing is allocated; the model is built
on the meta device to count its parameters). docs/scale.md states every formula and where DeepSpeed's own
estimators differ.

With P parameters, N data-parallel GPUs, w bytes per weight (2 in bf16, 4 in fp32), per GPU:

    stage | parameters | gradients                         | optimizer (fp32 master + Adam moments)
    0     | wP         | wP (+4P fp32 in bf16)             | 8P (+4P master in bf16)
    1     | wP         | 4P (fp32, full; +4P/N in fp32)    | 12P/N
    2     | wP         | wP/N + 4P/N                       | 12P/N
    3     | wP/N       | 4P/N                              | 8P/N (+4P/N master in bf16; fp32 weights are their own)

as DeepSpeed 0.19 allocates them for the DeepSpeed config we generate (mixln_dist.train.ds_config: bf16 weights,
fp32 gradient accumulation and master weights). Optimizer offload moves the fp32 gradients, master weights and
moments (16 bytes per parameter of each rank's partition) to the CPU; parameter offload (stage 3) moves the
partitioned weights too. Stage 3 also holds the module being computed gathered, with its gradient: 2w bytes per
parameter of the largest module. DeepSpeed's buffers: one gradient reduction bucket (at most the model's size),
plus stage 3's prefetch bucket.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Optional

from ..config import Config
from .activation_checkpointing import checkpointed_layers
from .ds_config import BatchPlan, plan_batches, reduce_bucket_elements

GIB = 1 << 30
# What a GPU keeps for itself beyond what we count: the CUDA context, cuBLAS/NCCL workspaces (about 1 GiB), and
# the caching allocator's fragmentation (a few percent of what it holds).
RESERVED_BYTES = GIB
FRAGMENTATION = 0.05


@dataclass(frozen=True)
class ModelSize:
    parameters: int
    non_embedding_parameters: int
    largest_module_parameters: int  # the most one module holds itself: ZeRO-3 gathers one module at a time
    flops_per_token: float


def model_size(cfg: Config) -> ModelSize:
    """Counted on the meta device, so every norm scheme's own parameters are included, at any size, for free."""
    import torch

    from ..model import Transformer, count_parameters
    from .metrics import flops_per_token

    with torch.device("meta"):
        model = Transformer(cfg.model, cfg.norm)
    counts = count_parameters(model)
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    flops = flops_per_token(model, cfg.model.n_layers, cfg.model.dim, cfg.data.seq_len)
    return ModelSize(counts["total"], counts["non_embedding"], largest, flops)


# Activations ----------------------------------------------------------------------------------------------------

# Norms per block that sit on a sublayer's input or on the residual sum (their output is saved by the next matrix
# multiply) and those on a sublayer's output, whose result only enters a residual add (sandwich's extra pair).
BLOCK_NORMS = {"pre": 2, "post": 2, "lns": 2, "deepnorm": 2, "reordered": 2, "sandwich": 2, "hybrid": 1}
OUTPUT_NORMS = {"sandwich": 2}


def activation_bytes_per_token(cfg: Config, precision: str) -> Dict[str, float]:
    """Bytes per token of one micro-batch that backward needs, by where they sit (see docs/scale.md):

    layer      what one decoder layer saves for its backward
    checkpoint what a checkpointed layer saves instead (its input)
    head       the embedding output, the final norm, and the hidden-state gradient the loss computes in its
               forward (mixln_dist/model/loss.py: the full logits never exist, so nothing of size vocab per token)
    recompute  what backward through one layer holds beyond what it saved: the gradients in flight, and, for a
               checkpointed layer, its recomputed activations
    """
    from ..model.args import layer_plan

    m, a = cfg.model, 2 if precision == "bf16" else 4
    d, f, V, h = m.dim, m.ffn_dim, m.vocab_size, m.n_heads
    kv = m.kv_heads / m.n_heads
    norm = (4 + 2 * a) * d + 4  # RMSNorm: its input in fp32, the normalised tensor, its output, and 1/rms
    out_norm = (4 + a) * d + 4  # an output-side norm: its output is not saved
    attention = a * d * (3 + 2 * kv) + 4 * h  # q, k after RoPE, v, the attention output and its reshaped copy; lse
    mlp = 4 * a * f  # gate, silu(gate), up, and their product
    layers = []
    for spec in layer_plan(m, cfg.norm):
        extra = 0.0
        if spec.qkv_norm == "qk":  # RMSNorms on the query and key projections
            extra += out_norm * (1 + kv)
        elif spec.qkv_norm == "qkv":  # per-head RMSNorms on q, k and v, and the unnormalised input the q/k/v use
            extra += out_norm * (1 + 2 * kv) + a * d
        if spec.gpas:  # each of the two gates keeps the detached residual it scales
            extra += 2 * a * d
        layers.append(BLOCK_NORMS[spec.kind] * norm + OUTPUT_NORMS.get(spec.kind, 0) * out_norm + attention + mlp
                      + extra)
    layer = max(layers)
    return {
        "layer": layer,
        "layers_total": sum(layers),
        "checkpoint": a * d,
        "head": a * d + norm + a * d,
        "working": a * (f + d),  # the gradients of about one f-wide and one d-wide tensor at a time
    }


def activation_bytes(cfg: Config, micro_batch: int, precision: str, mode: Optional[str] = None,
                     device: str = "cuda") -> int:
    """Peak bytes of a micro-batch's forward and backward beyond the model states, for activation checkpointing
    `mode` (the config's own when None), on `device` (the loss's chunk depends on it). The peak is the larger of
    the loss (every layer's activations still saved) and the backward of one layer (recomputed first when
    checkpointed)."""
    per = activation_bytes_per_token(cfg, precision)
    mode = cfg.train.activation_checkpointing if mode is None else mode
    n_ckpt = len(checkpointed_layers(cfg.model.n_layers, mode, cfg.train.ac_every_k))
    L = cfg.model.n_layers
    tokens = micro_batch * cfg.data.seq_len
    saved = tokens * (per["layers_total"] * (L - n_ckpt) / L + per["checkpoint"] * n_ckpt + per["head"])
    layer_backward = tokens * (per["working"] + (per["layer"] if n_ckpt else 0))
    return int(math.ceil(saved + max(loss_bytes(cfg, tokens, precision, device), layer_backward)))


def loss_bytes(cfg: Config, tokens: int, precision: str, device: str = "cuda") -> float:
    """What the chunked loss holds beyond the saved activations: in its forward, the fp32 weight gradient it
    accumulates (vocab x dim), and a chunk's fp32 logits with their log-softmax, freed before the next chunk's
    exist (in bf16 the low-precision copies are smaller than these two); in its backward, the scaled copies of
    that weight gradient and of the hidden-state gradient (tests/train/test_memory_plan.py measures both)."""
    import torch

    from ..model.loss import default_chunk

    m, a = cfg.model, 2 if precision == "bf16" else 4
    chunk = min(tokens, default_chunk(m.vocab_size, torch.device(device)))
    forward = 4 * m.vocab_size * m.dim + 8 * chunk * m.vocab_size
    backward = 8 * m.vocab_size * m.dim + tokens * a * m.dim
    return max(forward, backward)


# Model states ---------------------------------------------------------------------------------------------------


def model_state_bytes(cfg: Config, size: ModelSize, n_gpus: int, precision: str) -> Dict[str, int]:
    """Per-GPU bytes of parameters, gradients, optimizer states, the gathered module of stage 3 and DeepSpeed's
    buffers, and the CPU bytes per GPU that offload moves there (see the module docstring)."""
    z, P, N = cfg.zero, size.parameters, n_gpus
    w = 2 if precision == "bf16" else 4
    bf16 = precision == "bf16"
    if z.stage == 0:
        params, grads, optim = w * P, w * P + (4 * P if bf16 else 0), 8 * P + (4 * P if bf16 else 0)
    elif z.stage == 1:  # bf16: DeepSpeed's BF16_Optimizer, which accumulates full fp32 gradients
        params, grads, optim = w * P, 4 * P + (0 if bf16 else 4 * P / N), 12 * P / N
    elif z.stage == 2:
        params, grads, optim = w * P, w * P / N + 4 * P / N, 12 * P / N
    else:
        params, grads, optim = w * P / N, 4 * P / N, 8 * P / N + (4 * P / N if bf16 else 0)
    cpu = 0.0
    if z.offload_optimizer != "none" and z.stage in (1, 2, 3):
        # fp32 gradients, master weights and moments of this rank's partition live off the GPU
        if z.offload_optimizer == "cpu":
            cpu += 16 * P / N
        # ZeRO-1 still holds the full low-precision gradients until they are reduced at the step
        grads, optim = (w * P if z.stage == 1 else 0), 0
    if z.stage == 3 and z.offload_param != "none":
        if z.offload_param == "cpu":
            cpu += w * P / N
        params = 0
    bucket = reduce_bucket_elements(z.reduce_bucket_size, P)  # as the engine cuts it
    buffers = bucket * w + (z.stage3_prefetch_bucket_size * w if z.stage == 3 else 0)
    gathered = 2 * w * size.largest_module_parameters if z.stage == 3 else 0
    return {"parameters": int(params), "gradients": int(grads), "optimizer": int(optim), "gathered": int(gathered),
            "buffers": int(buffers), "cpu": int(cpu)}


# The plan -------------------------------------------------------------------------------------------------------


@dataclass
class MemoryPlan:
    model: str
    norm_layers: str  # e.g. "2 post + 30 pre of 32"
    parameters: int
    non_embedding_parameters: int
    flops_per_token: float
    flops_formula: str
    precision: str
    zero_stage: int
    offload: str
    gpus: int
    batch: Dict[str, int]
    activation_checkpointing: str
    per_gpu_bytes: Dict[str, int]
    activations_bytes: Dict[str, int]  # with the config's micro-batch, without and with full checkpointing
    cpu_bytes: int  # per node: what offload keeps in host memory
    gpu_memory_bytes: int
    max_micro_batch: int  # the largest micro-batch whose total fits gpu_memory_bytes (0: none fits)

    def to_json(self) -> dict:
        return asdict(self)


def largest_fitting(fits: Callable[[int], bool]) -> int:
    """The largest micro-batch for which `fits` holds (0 if none): activations grow with it, but not in
    proportion (the loss's weight gradient and chunk are fixed), so search instead of dividing."""
    if not fits(1):
        return 0
    hi = 1
    while fits(hi * 2):
        hi *= 2
    lo, hi = hi, hi * 2  # fits(lo), not fits(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


FLOPS_FORMULA = "6 * (parameters - embedding) + 12 * n_layers * dim * seq_len (PaLM, forward + backward)"


def plan_memory(cfg: Config, gpus_per_node: int = 1, nodes: int = 1, gpu_memory_gib: float = 80.0) -> MemoryPlan:
    """The memory plan of `cfg` on nodes x gpus_per_node GPUs of gpu_memory_gib each."""
    from ..model.args import layer_kinds

    n_gpus = gpus_per_node * nodes
    precision = "fp32" if cfg.train.precision == "fp32" else "bf16"  # auto: bf16, as on any recent GPU
    size = model_size(cfg)
    batch: BatchPlan = plan_batches(cfg.train.micro_batch_size, cfg.train.grad_accum_steps,
                                    cfg.train.global_batch_size, n_gpus)
    states = model_state_bytes(cfg, size, n_gpus, precision)
    act = activation_bytes(cfg, batch.micro_batch_size, precision)
    per_gpu = {k: states[k] for k in ("parameters", "gradients", "optimizer")}
    per_gpu["buffers"] = states["gathered"] + states["buffers"]
    fixed = sum(per_gpu.values())
    per_gpu.update(activations=act, total=fixed + act)
    usable = gpu_memory_gib * GIB * (1 - FRAGMENTATION) - RESERVED_BYTES
    max_micro = largest_fitting(lambda micro: fixed + activation_bytes(cfg, micro, precision) <= usable)
    kinds = layer_kinds(cfg.norm, cfg.model.n_layers)
    counts = {k: kinds.count(k) for k in dict.fromkeys(kinds)}
    offload = ", ".join(f"{what} {dev}" for what, dev in (("optimizer", cfg.zero.offload_optimizer),
                                                          ("parameters", cfg.zero.offload_param)) if dev != "none")
    return MemoryPlan(
        model=cfg.model.name,
        norm_layers=" + ".join(f"{n} {k}" for k, n in counts.items()) + f" of {len(kinds)}",
        parameters=size.parameters,
        non_embedding_parameters=size.non_embedding_parameters,
        flops_per_token=size.flops_per_token,
        flops_formula=FLOPS_FORMULA,
        precision=precision,
        zero_stage=cfg.zero.stage,
        offload=offload or "none",
        gpus=n_gpus,
        batch={"micro": batch.micro_batch_size, "accumulation": batch.grad_accum_steps,
               "global": batch.global_batch_size, "seq_len": cfg.data.seq_len},
        activation_checkpointing=cfg.train.activation_checkpointing,
        per_gpu_bytes=per_gpu,
        activations_bytes={"none": activation_bytes(cfg, batch.micro_batch_size, precision, "none"),
                           "full": activation_bytes(cfg, batch.micro_batch_size, precision, "full")},
        cpu_bytes=states["cpu"] * gpus_per_node,
        gpu_memory_bytes=int(gpu_memory_gib * GIB),
        max_micro_batch=max_micro,
    )
