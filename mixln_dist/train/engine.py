"""Building the DeepSpeed engine around our model: the model is built (partitioned under zero.Init, or on the meta
device and materialised once), initialised from the seed or warm-started, wrapped with activation
checkpointing, given our optimizer and schedule, and handed to `deepspeed.initialize`."""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Callable

import torch

from ..config import Config
from ..model import Transformer, build_model
from .activation_checkpointing import apply_activation_checkpointing
from .compile import apply_compile
from .distributed import DistEnv, freed_cpu_memory_returned
from .ds_config import BatchPlan, deepspeed_config, reduce_bucket_elements
from .optim import build_optimizer, build_scheduler, choose_impl
from .warm_start import load_weights, read_weights


@dataclass
class Engine:
    engine: object  # deepspeed.DeepSpeedEngine
    ds_config: dict  # the generated DeepSpeed JSON (saved in the run directory)
    description: str  # one line for the start log


def build_engine(cfg: Config, env: DistEnv, batch: BatchPlan, precision: str, load_universal: bool,
                 warm_start: bool, log: Callable[[str], None]) -> Engine:
    import deepspeed

    ds_config = deepspeed_config(cfg, batch, precision, load_universal=load_universal)
    model = initialised_model(cfg, env, ds_config)
    fit_reduce_bucket(ds_config, model)
    if warm_start:
        load_weights(model, read_weights(cfg.train.init_from, cfg.model), zero3=cfg.zero.zero_init,
                     is_main=env.is_main)
        log(f"initialised from {cfg.train.init_from}")
    compile_blocks = cfg.train.compile and cfg.zero.stage < 3  # ZeRO-3: engine.compile() below (compile.py)
    if compile_blocks:
        apply_compile(model)
    layers = apply_activation_checkpointing(model, cfg.train.activation_checkpointing, cfg.train.ac_every_k)
    impl = choose_impl(cfg.optim, env.device, offload=cfg.zero.offload_optimizer != "none")
    optimizer = build_optimizer(model, cfg.optim, impl)
    if cfg.zero.stage == 0:  # before the schedule wraps optimizer.step
        make_skippable(optimizer)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=lambda opt: build_scheduler(opt, cfg.optim, cfg.train.steps),
        config=ds_config,
        dist_init_required=False,
    )
    skip_lone_allreduce(engine)
    if cfg.train.compile and not compile_blocks:
        engine.compile()
    description = (
        f"engine: ZeRO-{cfg.zero.stage}, {precision}, optimizer {impl}, {env.world_size} rank(s) on "
        f"{env.device.type}, batch {batch.global_batch_size} = {batch.micro_batch_size} micro x "
        f"{batch.grad_accum_steps} accumulation x {env.world_size} ranks, activation checkpointing on "
        f"{len(layers)}/{cfg.model.n_layers} layers"
        + (", compiled blocks" if compile_blocks else ", compiled by DeepSpeed" if cfg.train.compile else "")
    )
    return Engine(engine, ds_config, description)


def skip_lone_allreduce(engine) -> None:
    """At ZeRO-0 DeepSpeed all-reduces the gradients after every backward by flattening them into buckets,
    reducing, dividing by the world size and copying them back: over one data-parallel rank that changes no bit
    and costs three passes over the gradients (65 ms, 7% of a llama_71m step on 2 CPU cores; docs/benchmarks.md),
    so it is switched off there. ZeRO 1-3 reduce inside their optimizers, which also moves the gradients into
    their partitions, and are left alone."""
    if engine.zero_optimization_stage() == 0 and engine.dp_world_size == 1:
        engine.enable_backward_allreduce = False


def fit_reduce_bucket(ds_config: dict, model: torch.nn.Module) -> None:
    """The generated config's reduce bucket cut to the model's size (ds_config.reduce_bucket_elements; measured: a
    ZeRO-2 step's peak memory 2,100 -> 210 MiB for the default job; docs/benchmarks.md)."""
    n_params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    zero = ds_config["zero_optimization"]
    zero["reduce_bucket_size"] = reduce_bucket_elements(zero["reduce_bucket_size"], n_params)


def make_skippable(optimizer) -> None:
    """Give ZeRO-0's plain optimizer the overflow protocol of DeepSpeed's ZeRO optimizers: with `overflow` set,
    step() changes nothing (weights, moments, step counts), and DeepSpeed then counts the step as skipped, holds
    the schedule and reports was_step_applied() False, exactly as under ZeRO 1-3 (mixln_dist.train.guard)."""
    step = optimizer.step
    optimizer.overflow = False

    def step_unless_overflow(self, *args, **kwargs):
        return None if self.overflow else step(*args, **kwargs)

    optimizer.step = types.MethodType(step_unless_overflow, optimizer)  # a bound method, as LR schedulers expect


def initialised_model(cfg: Config, env: DistEnv, ds_config: dict) -> Transformer:
    """The model with its initial weights, drawn from train.seed: the same weights whichever way it is built."""
    torch.manual_seed(cfg.train.seed)
    if not cfg.zero.zero_init:
        return build_model(cfg.model, cfg.norm, env.device)
    import deepspeed

    with freed_cpu_memory_returned():  # on the CPU, the full tensors freed here must not stay resident
        with deepspeed.zero.Init(config_dict_or_path=ds_config):
            model = Transformer(cfg.model, cfg.norm)
        torch.manual_seed(cfg.train.seed)  # building under zero.Init drew from the generator
        model.reset_rope()
        for unit, init in model.init_units():
            # Gather one unit at a time; rank 0 draws the values and ZeRO scatters them back.
            with deepspeed.zero.GatheredParameters(list(unit.parameters()), modifier_rank=0):
                if env.is_main:
                    init()
    return model
