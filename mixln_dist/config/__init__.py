"""The run configuration: one typed schema (schema.py), composed Hydra-style from `configs/` plus command-line
overrides (compose.py), validated once (checks.py) with errors that name the key and the fix.

    cfg = compose(["model=llama_1b", "norm=mix", "norm.alpha=0.25", "optim.lr=5e-4", "zero=stage3"])

Groups (`model`, `norm`, `data`, `optim`, `zero`, `train`) are chosen in `configs/config.yaml`'s defaults list and
by `group=option` overrides; single values by dotted overrides. `save_config`/`load_config` round-trip a config
through YAML exactly; every run directory and checkpoint holds one.
"""

from ..errors import ConfigError
from .checks import CHOICES, validate
from .compose import (GROUPS, available_options, compose, default_run_name, load_config, save_config, schema_keys,
                      to_dict, to_yaml)
from .schema import Config, DataConfig, OptimConfig, TokenizerConfig, TrainConfig, ZeroConfig

__all__ = [
    "CHOICES",
    "GROUPS",
    "Config",
    "ConfigError",
    "DataConfig",
    "OptimConfig",
    "TokenizerConfig",
    "TrainConfig",
    "ZeroConfig",
    "available_options",
    "compose",
    "default_run_name",
    "load_config",
    "save_config",
    "schema_keys",
    "to_dict",
    "to_yaml",
    "validate",
]
