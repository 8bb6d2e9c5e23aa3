"""The run configuration: one typed schema, composed Hydra-style from `configs/` plus command-line overrides.

    cfg = compose(["model=llama_1b", "norm=mix", "norm.alpha=0.25", "optim.lr=5e-4", "zero=stage3"])

Groups (`model`, `norm`, `data`, `optim`, `zero`, `train`) are chosen in `configs/config.yaml`'s defaults list and
by `group=option` overrides; single values by dotted overrides. Model flavors are registered from
mixln_dist.model.FLAVORS (one source of truth); a YAML file dropped into `configs/model/` adds another.
Unknown keys, unknown options and wrong types raise ConfigError naming the key and the closest valid ones,
before any work starts. `save_config`/`load_config` round-trip a config through YAML exactly.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence, Union, get_args, get_origin, get_type_hints

from omegaconf import MISSING, OmegaConf

from .model.args import ModelConfig, ModelConfigError, NormConfig, layer_plan
from .model.flavors import FLAVORS

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"
GROUPS = ("model", "norm", "data", "optim", "zero", "train")


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key and the fix."""


# Schema -------------------------------------------------------------------------------------------------------


@dataclass
class TokenizerConfig:
    path: str = MISSING  # the SentencePiece .model: written here when trained, read from here when adopted
    adopt: bool = False  # true: use an existing .model (a LLaMA or T5 tokenizer) instead of training one
    model_type: str = "bpe"  # bpe | unigram
    vocab_size: int = 8192  # pieces; when adopting, the adopted model must have exactly this many
    character_coverage: float = 0.9995  # share of characters given their own piece; the rest fall back to bytes
    max_sentences: int = 2_000_000  # lines sampled (seeded reservoir) from the training text to train on
    seed: int = 0  # which lines are sampled


@dataclass
class DataConfig:
    name: str = MISSING
    # Training text: local files, globs or directories (.txt, .jsonl, .json, .parquet, optionally .gz), or
    # "hf:NAME[:CONFIG[:SPLIT]]" for a hub dataset (streamed; needs a network).
    train: List[str] = MISSING
    # Validation text from a separate source (same forms); when empty, val_fraction of the training documents
    # is held out instead. Exactly one of the two must be given.
    validation: List[str] = field(default_factory=list)
    val_fraction: float = 0.0
    text_field: str = "text"  # column holding the text in .jsonl/.parquet/hub sources
    sample_by: str = "paragraph"  # how .txt files split into documents: line | paragraph | document
    dir: str = MISSING  # where the prepared shards and their metadata live
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    seq_len: int = 256  # tokens per training sample (the model sees seq_len inputs and seq_len targets)
    seed: int = 1234  # the per-epoch permutation of training samples
    split_seed: int = 42  # which documents val_fraction holds out
    num_proc: int = 0  # CPU cores for tokenizer training and tokenization (SentencePiece threads); 0 = all
    shard_tokens: int = 100_000_000  # tokens per shard file
    max_train_tokens: int = 0  # stop reading training text after the document that reaches this; 0 = all
    max_val_tokens: int = 0  # the same for the validation split (either kind); 0 = all
    auto_prepare: bool = False  # train the tokenizer and write the shards at start if they are missing


@dataclass
class OptimConfig:
    lr: float = 1e-3
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1  # never applied to norm weights or biases
    grad_clip: float = 1.0  # global L2 norm; 0 disables clipping (the paper's scripts)
    impl: str = "auto"  # auto | torch | fused | cpu: DeepSpeed's fused/CPU Adam when its ops build, else torch's
    schedule: str = "cosine"  # cosine | constant | wsd (warmup-stable-decay)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine and wsd decay to lr * min_lr_ratio
    decay_fraction: float = 0.2  # wsd: the final fraction of steps spent decaying


@dataclass
class ZeroConfig:
    stage: int = 2  # 0 (plain data parallel) to 3
    offload_optimizer: str = "none"  # none | cpu | nvme
    offload_param: str = "none"  # none | cpu | nvme (stage 3 only)
    nvme_path: str = "/local_nvme"
    zero_init: bool = False  # stage 3: build the model already partitioned (deepspeed.zero.Init)
    overlap_comm: bool = False
    contiguous_gradients: bool = True
    reduce_bucket_size: int = 500_000_000
    allgather_bucket_size: int = 500_000_000
    stage3_prefetch_bucket_size: int = 50_000_000
    stage3_param_persistence_threshold: int = 100_000
    stage3_max_live_parameters: int = 1_000_000_000


@dataclass
class TrainConfig:
    out_dir: str = "runs"
    run_name: str = "${model.name}-${norm.scheme}"  # the run directory is out_dir/run_name
    seed: int = 0
    steps: int = 1000  # optimizer steps of the whole run (the LR schedule spans them)
    stop_at: int = 0  # end this invocation after this step, with a checkpoint (time-limited jobs); 0 = at `steps`
    micro_batch_size: int = 8  # sequences per rank per forward pass
    grad_accum_steps: Optional[int] = None  # derived from global_batch_size when null
    global_batch_size: Optional[int] = None  # = micro x accumulation x data-parallel ranks; derived when null
    precision: str = "auto"  # auto (bf16 on GPUs that have it, else fp32) | bf16 | fp32
    activation_checkpointing: str = "none"  # none | full | every_k (every ac_every_k-th layer)
    ac_every_k: int = 2
    device: str = "auto"  # auto | cpu | cuda
    log_interval: int = 10
    eval_interval: int = 100
    eval_samples: int = 0  # validation samples per evaluation; 0 = the whole validation split
    save_interval: int = 500
    keep_last: int = 2  # checkpoints kept in the run directory (the newest ones)
    resume: str = "auto"  # auto (newest complete checkpoint in the run directory) | never | a checkpoint path
    # Start a fresh run from these weights (a Hugging Face folder or one of our checkpoints) instead of a random
    # init; the shape must match, the norm placement need not. Ignored when resuming.
    init_from: str = ""
    tensorboard: bool = True
    progress_bar: bool = True
    diag_interval: int = 0  # per-layer gradient norms every N steps; 0 = off
    dist_timeout_s: int = 600  # a rank that stops answering fails the run after this long
    compile: bool = False  # torch.compile the model


@dataclass
class Config:
    model: ModelConfig = MISSING
    norm: NormConfig = field(default_factory=NormConfig)
    data: DataConfig = MISSING
    optim: OptimConfig = field(default_factory=OptimConfig)
    zero: ZeroConfig = field(default_factory=ZeroConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# Checks that span fields (types and key names are checked by the schema itself) --------------------------------

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
}


def validate(cfg: Config) -> None:
    for key, allowed in CHOICES.items():
        value = _get(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(allowed)}{_did_you_mean(str(value), allowed)}")
    try:
        layer_plan(cfg.model, cfg.norm)
    except ModelConfigError as e:
        raise ConfigError(str(e)) from None
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
    if not 0.0 <= cfg.optim.min_lr_ratio <= 1.0:
        raise ConfigError(f"optim.min_lr_ratio={cfg.optim.min_lr_ratio} must be in [0, 1]")
    if not 0.0 <= cfg.data.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction={cfg.data.val_fraction} must be in [0, 1)")
    coverage = cfg.data.tokenizer.character_coverage
    if not 0.0 < coverage <= 1.0:
        raise ConfigError(f"data.tokenizer.character_coverage={coverage} must be in (0, 1]")
    for key in ("data.num_proc", "data.max_train_tokens", "data.max_val_tokens"):
        if _get(cfg, key) < 0:
            raise ConfigError(f"{key}={_get(cfg, key)} must be >= 0 (0 means all cores / no limit)")
    positive = ("train.steps", "train.micro_batch_size", "train.log_interval", "train.eval_interval",
                "train.save_interval", "train.keep_last", "train.ac_every_k", "data.seq_len", "data.shard_tokens",
                "data.tokenizer.vocab_size", "data.tokenizer.max_sentences")
    for key in positive:
        if _get(cfg, key) <= 0:
            raise ConfigError(f"{key}={_get(cfg, key)} must be positive")
    if cfg.train.stop_at < 0:
        raise ConfigError(f"train.stop_at={cfg.train.stop_at} must be 0 (run to train.steps) or a step number")
    for key in ("train.grad_accum_steps", "train.global_batch_size"):
        if _get(cfg, key) is not None and _get(cfg, key) <= 0:
            raise ConfigError(f"{key}={_get(cfg, key)} must be positive (or null to derive it)")


# Composition --------------------------------------------------------------------------------------------------


def _register() -> None:
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="schema", node=Config)
    for name, flavor in FLAVORS.items():
        cs.store(group="model", name=name, node=flavor)
    if not OmegaConf.has_resolver("repo"):
        # ${repo:data/sample} -> an absolute path inside this checkout, wherever the job is started from.
        OmegaConf.register_new_resolver("repo", lambda rel="": str(REPO_ROOT / rel))


def compose(overrides: Sequence[str] = (), config_dir: Union[str, Path, None] = None) -> Config:
    """Compose configs/config.yaml with Hydra-grammar overrides into a validated, typed Config."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    _register()
    overrides = list(overrides)
    _check_override_keys(overrides)
    config_dir = Path(config_dir or CONFIG_DIR).resolve()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            composed = hydra_compose("config", overrides=overrides)
            cfg = _to_config(composed)
    except MissingConfigException as e:
        raise ConfigError(_explain_missing_option(e, config_dir)) from None
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(_explain(e)) from None
    validate(cfg)
    return cfg


def _to_config(node) -> Config:
    """DictConfig -> Config dataclass, with every interpolation resolved."""
    from omegaconf.errors import MissingMandatoryValue

    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), node))
    except MissingMandatoryValue as e:
        raise ConfigError(f"{e.full_key} has no value; set it with {e.full_key}=...") from None


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: Config, path: Union[str, Path]) -> None:
    Path(path).write_text(to_yaml(cfg))


def load_config(path: Union[str, Path]) -> Config:
    """Read a YAML written by save_config (or by hand) back into a validated Config."""
    from omegaconf.errors import OmegaConfBaseException

    _register()
    try:
        cfg = _to_config(OmegaConf.load(path))
    except OmegaConfBaseException as e:
        raise ConfigError(f"{path}: {_explain(e)}") from None
    validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


# Friendly errors ----------------------------------------------------------------------------------------------


def _did_you_mean(word: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=3, cutoff=0.5)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def _schema_keys(cls: type, prefix: str = "") -> List[str]:
    """Every dotted key of a dataclass schema, nested ones included."""
    keys = []
    for f in fields(cls):
        key = f"{prefix}{f.name}"
        keys.append(key)
        sub = _dataclass_type(get_type_hints(cls)[f.name])
        if sub is not None:
            keys += _schema_keys(sub, key + ".")
    return keys


def _dataclass_type(tp: Any) -> Optional[type]:
    if get_origin(tp) is Union:
        tp = next((a for a in get_args(tp) if a is not type(None)), tp)
    return tp if is_dataclass(tp) else None


def _check_override_keys(overrides: Sequence[str]) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        raise ConfigError(f"cannot parse the overrides {list(overrides)}: {e}") from None
    valid = _schema_keys(Config)
    for o in parsed:
        key = o.key_or_group
        if o.is_add() or o.is_force_add() or o.is_delete():
            raise ConfigError(
                f"'{o.input_line}': the configuration has a fixed schema, so keys cannot be added or deleted; "
                f"set an existing key with {key.lstrip('+~')}=VALUE"
            )
        if key in GROUPS or key in valid:
            continue
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        siblings = [k for k in valid if "." in k and k.rsplit(".", 1)[0] == parent]
        hint = _did_you_mean(key, siblings or [k for k in valid if k.count(".") == key.count(".")])
        listing = f" Keys under '{parent}': {', '.join(s.split('.')[-1] for s in siblings)}." if siblings else ""
        raise ConfigError(f"unknown config key '{key}'{hint}.{listing}")


def _explain_missing_option(e: Exception, config_dir: Path) -> str:
    m = re.search(r"Could not find '([^/']+)/([^']+)'", str(e))
    if not m:
        return str(e).split("\nConfig search path")[0]
    group, option = m.groups()
    options = sorted(set(available_options(group, config_dir)))
    return (
        f"unknown option '{option}' for config group '{group}'{_did_you_mean(option, options)}. "
        f"Available: {', '.join(options)}"
    )


def available_options(group: str, config_dir: Union[str, Path, None] = None) -> List[str]:
    """The options of a config group: YAML files in configs/<group>/ plus registered flavors for `model`."""
    folder = Path(config_dir or CONFIG_DIR) / group
    names = [p.stem for p in folder.glob("*.yaml")] if folder.is_dir() else []
    return names + (list(FLAVORS) if group == "model" else [])


def _explain(e: Exception) -> str:
    """Turn an OmegaConf/Hydra error into one line naming the key and what was wrong."""
    cause = e.__cause__ or e
    text = str(cause)
    key = getattr(cause, "full_key", None) or (re.search(r"full_key: (\S+)", text) or [None, None])[1]
    first = text.strip().splitlines()[0] if text.strip() else type(cause).__name__
    if "not in" in first and key:
        return f"unknown config key '{key}'{_did_you_mean(key, _schema_keys(Config))}"
    if key:
        return f"{key}: {first}"
    return first


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def split_cli_args(argv: Sequence[str]) -> tuple[List[str], dict]:
    """Separate Hydra overrides from --flags; the deepspeed launcher appends --local_rank=N."""
    overrides, flags = [], {}
    it = iter(argv)
    for arg in it:
        if arg.startswith("--local_rank") or arg.startswith("--local-rank"):
            value = arg.split("=", 1)[1] if "=" in arg else next(it)
            flags["local_rank"] = int(value)
            os.environ.setdefault("LOCAL_RANK", str(value))
        elif arg in ("-h", "--help"):
            flags["help"] = True
        elif arg.startswith("--"):
            flags[arg[2:].replace("-", "_")] = True
        else:
            overrides.append(arg)
    return overrides, flags


def parse_cli(argv: Optional[Sequence[str]], usage: str, options: dict) -> tuple[List[str], dict]:
    """The overrides and --flags of a config-driven entry point. `options` maps each flag to its help line;
    --help prints `usage` and them and exits 0; an unknown flag exits 2 naming the valid ones."""
    import sys

    overrides, flags = split_cli_args(sys.argv[1:] if argv is None else argv)
    flags.pop("local_rank", None)
    if flags.pop("help", False):
        listing = "".join(f"\n  --{k:<10} {v}" for k, v in options.items())
        print(usage.rstrip() + (f"\n\nOptions:{listing}" if options else ""))
        raise SystemExit(0)
    unknown = [f"--{k}" for k in flags if k not in options]
    if unknown:
        valid = ", ".join("--" + k for k in options) or "none besides --help"
        print(f"error: unknown option {', '.join(unknown)}; options: {valid}", file=sys.stderr)
        raise SystemExit(2)
    return overrides, flags
