"""The `pretrain` entry point, shared by `deepspeed`, `torchrun` and plain `python` launches."""

from __future__ import annotations

import sys
from typing import Optional, Sequence

USAGE = """\
usage: deepspeed [--num_gpus N] launch/pretrain.py [OVERRIDE ...]
       torchrun --nproc_per_node N launch/pretrain.py [OVERRIDE ...]
       python launch/pretrain.py [OVERRIDE ...]

Overrides use Hydra's grammar: choose a group option (model=llama_1b norm=mix zero=stage3 optim=paper) or set
any key (norm.alpha=0.25 optim.lr=5e-4 train.steps=1000). With no overrides this trains the debug Mix-LN model
on the bundled sample corpus. The schema, with every key documented: mixln_dist/config.py.
"""


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ..checkpoint import CheckpointError
    from ..config import GROUPS, ConfigError, available_options, compose, parse_cli

    groups = "\n".join(f"  {g}: {', '.join(sorted(available_options(g)))}" for g in GROUPS)
    overrides, _ = parse_cli(argv, f"{USAGE}\nConfig groups and their options:\n{groups}", {})
    try:
        cfg = compose(overrides)  # before any process group or allocation: a typo costs nothing
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from ..data import DataError
    from .distributed import init_distributed, shutdown
    from .trainer import Trainer

    env = init_distributed(cfg.train.device, cfg.train.dist_timeout_s)
    clean = False
    try:
        trainer = Trainer(cfg, env)
        try:
            trainer.fit()
        finally:
            trainer.close()
        clean = True
    except (ConfigError, DataError, CheckpointError) as e:
        # Every rank reaches the same verdict from the same inputs, before any collective; rank 0 speaks for them.
        if env.is_main:
            print(f"error: {e}", file=sys.stderr)
        clean = True
        return 2
    finally:
        shutdown(clean)
    return 0
