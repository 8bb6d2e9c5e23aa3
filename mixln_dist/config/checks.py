"""Checks that span fields of a composed config (types and key names are checked by the schema itself). They run
at composition, before any process group, data preparation or allocation, so a wrong value costs nothing."""

from __future__ import annotations

import difflib
from typing import Any, Sequence

from ..errors import ConfigError
from ..model.args import ModelConfigError, layer_plan
from .schema import Config

CHOICES = {
    "data.tokenizer.model_type": ("bpe", "unigram"),
    "data.sample_by": ("line", "paragraph", "document"),
    "optim.impl": ("auto", "torch", "fused", "cpu"),
    "optim.schedule": ("cosine", "constant", "wsd"),
    "zero.offload_optimizer": ("none", "cpu", "nvme"),
    "zero.offload_param": ("none", "cpu", "nvme"),
    "train.precision": ("auto", "bf16", "fp32"),
    "train.activation_checkpointing": ("none", "full", "every_k"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.guard.spike_action": ("off", "skip", "rollback"),
}


# Every number a config can get wrong, with the range it must lie in. A value outside it (NaN included) is
# refused here, before any process group, data preparation or allocation.
POSITIVE = ("train.steps", "train.micro_batch_size", "train.log_interval", "train.eval_interval",
            "train.save_interval", "train.keep_last", "train.ac_every_k", "train.dist_timeout_s", "data.seq_len",
            "data.shard_tokens", "data.tokenizer.vocab_size", "data.tokenizer.max_sentences", "optim.lr",
            "optim.eps", "model.init_std", "model.embed_init_std", "model.norm_eps", "model.rope_theta",
            "train.guard.spike_zscore", "zero.reduce_bucket_size", "zero.allgather_bucket_size")
NON_NEGATIVE = {  # key: what 0 means, for the message
    "optim.weight_decay": "no decay", "optim.grad_clip": "no clipping", "optim.warmup_steps": "no warmup",
    "train.eval_samples": "the whole validation split", "train.diag_interval": "off",
    "train.stop_at": "run to train.steps", "data.num_proc": "all cores", "data.max_train_tokens": "no limit",
    "data.max_val_tokens": "no limit", "train.guard.max_bad_steps": "never stop",
    "train.guard.max_rollbacks": "stop at the first spike", "train.seed": "", "data.seed": "",
    "data.split_seed": "", "data.tokenizer.seed": "",
}
UNIT_INTERVAL = ("optim.min_lr_ratio", "optim.decay_fraction")  # [0, 1]


def validate(cfg: Config) -> None:
    for key, allowed in CHOICES.items():
        value = get(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(allowed)}{did_you_mean(str(value), allowed)}")
    _check_ranges(cfg)
    try:
        layer_plan(cfg.model, cfg.norm)
    except ModelConfigError as e:
        raise ConfigError(str(e)) from e
    if not 0 <= cfg.zero.stage <= 3:
        raise ConfigError(f"zero.stage={cfg.zero.stage} must be 0, 1, 2 or 3")
    if cfg.zero.offload_param != "none" and cfg.zero.stage != 3:
        raise ConfigError(f"zero.offload_param={cfg.zero.offload_param} needs zero.stage=3 (try zero=stage3_offload)")
    if cfg.zero.offload_optimizer != "none" and cfg.zero.stage == 0:
        raise ConfigError("zero.offload_optimizer needs zero.stage >= 1")
    if cfg.zero.zero_init and cfg.zero.stage != 3:
        raise ConfigError("zero.zero_init partitions parameters at construction and needs zero.stage=3")
    if cfg.data.seq_len > cfg.model.max_seq_len:
        raise ConfigError(
            f"data.seq_len={cfg.data.seq_len} exceeds model.max_seq_len={cfg.model.max_seq_len}; "
            "lower data.seq_len or raise model.max_seq_len"
        )
    if len(cfg.optim.betas) != 2 or not all(0.0 <= b < 1.0 for b in cfg.optim.betas):
        raise ConfigError(f"optim.betas={list(cfg.optim.betas)} must be two numbers in [0, 1)")
    if not 0.0 <= cfg.data.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction={cfg.data.val_fraction} must be in [0, 1)")
    coverage = cfg.data.tokenizer.character_coverage
    if not 0.0 < coverage <= 1.0:
        raise ConfigError(f"data.tokenizer.character_coverage={coverage} must be in (0, 1]")
    if not 0.0 < cfg.train.guard.spike_lr_factor <= 1.0:
        raise ConfigError(f"train.guard.spike_lr_factor={cfg.train.guard.spike_lr_factor} must be in (0, 1] "
                          "(1 keeps the learning rate after a rollback, 0.5 halves it)")
    if cfg.train.guard.spike_window < 2:
        raise ConfigError(f"train.guard.spike_window={cfg.train.guard.spike_window} must be at least 2 (a mean "
                          "and a spread need two losses)")
    if cfg.train.stop_at and cfg.train.stop_at > cfg.train.steps:
        raise ConfigError(f"train.stop_at={cfg.train.stop_at} is beyond train.steps={cfg.train.steps}; lower it, or "
                          "set 0 to run to the end")
    for key in ("train.grad_accum_steps", "train.global_batch_size"):
        if get(cfg, key) is not None and not get(cfg, key) > 0:
            raise ConfigError(f"{key}={get(cfg, key)} must be positive (or null to derive it)")


def _check_ranges(cfg: Config) -> None:
    # Written as `not (value > 0)` so that NaN, which fails every comparison, is refused too.
    for key in POSITIVE:
        if not get(cfg, key) > 0:
            raise ConfigError(f"{key}={get(cfg, key)} must be positive")
    for key, zero in NON_NEGATIVE.items():
        if not get(cfg, key) >= 0:
            raise ConfigError(f"{key}={get(cfg, key)} must be >= 0" + (f" (0 means {zero})" if zero else ""))
    for key in UNIT_INTERVAL:
        if not 0.0 <= get(cfg, key) <= 1.0:
            raise ConfigError(f"{key}={get(cfg, key)} must be in [0, 1]")


def get(cfg: Any, dotted: str) -> Any:
    """cfg.a.b.c for the key "a.b.c"."""
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def did_you_mean(word: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=3, cutoff=0.5)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
