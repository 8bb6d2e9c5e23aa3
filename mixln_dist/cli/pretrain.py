"""`mixln-pretrain` (`launch/pretrain.py`): pretraining, however the job is started.

    deepspeed launch/pretrain.py                                   # the default job (debug model, sample corpus)
    deepspeed --num_gpus 8 launch/pretrain.py model=llama_1b norm=mix zero=stage2 optim=paper
    torchrun --nproc_per_node 2 -m mixln_dist.cli.pretrain train.steps=100
    mixln-pretrain --config-dir my_configs model=my_100m
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

from .common import is_first_rank, parse_config_cli, run

USAGE = """\
usage: deepspeed [--num_gpus N] launch/pretrain.py [OVERRIDE ...]
       torchrun --nproc_per_node N launch/pretrain.py [OVERRIDE ...]   (or: torchrun ... -m mixln_dist.cli.pretrain)
       mixln-pretrain [OVERRIDE ...]                                    (one process)

Overrides use Hydra's grammar: choose a group option (model=llama_1b norm=mix zero=stage3 optim=paper) or set
any key (norm.alpha=0.25 optim.lr=5e-4 train.steps=1000). With no overrides this trains the debug Mix-LN model
on the bundled sample corpus. Runs go under $MIXLN_HOME/runs (default: ./runs). The schema, with every key
documented: mixln_dist/config/schema.py.
"""


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ..config import GROUPS, available_options

    groups = "\n".join(f"  {g}: {', '.join(available_options(g))}" for g in GROUPS)
    cli = parse_config_cli(argv, f"{USAGE}\nConfig groups and their options:\n{groups}", {})
    return run(lambda: pretrain(cli.overrides, cli.config_dir), speak=is_first_rank)


def pretrain(overrides: Sequence[str], config_dir: Optional[str] = None) -> int:
    """Exit 0 whether the run finished, reached train.stop_at or stopped on a signal after checkpointing; a
    requeue script tells them apart by MIXLN_STATUS_FILE (docs/reliability.md)."""
    from ..config import compose
    from ..errors import MixLNError

    cfg = compose(overrides, config_dir)  # before any process group or allocation: a typo costs nothing

    from ..train.distributed import init_distributed, shutdown
    from ..train.trainer import Trainer

    env = init_distributed(cfg.train.device, cfg.train.dist_timeout_s)
    clean = False
    try:
        trainer = Trainer(cfg, env)
        try:
            summary = trainer.fit()
        finally:
            trainer.close()
        if env.is_main:
            write_status(summary)
        clean = True
    except MixLNError:
        # Every rank reaches the same verdict from the same inputs, before any collective: leave together.
        clean = True
        raise
    except RuntimeError as e:
        from ..train.distributed import lost_peer_message

        lost = lost_peer_message(e, timeout_s=cfg.train.dist_timeout_s)
        if lost is None:
            raise
        # A machine's failure, not the user's: one line and exit 1 (worth a retry), not a traceback or exit 2.
        print(f"error: {lost}", file=sys.stderr, flush=True)
        raise SystemExit(1) from e
    finally:
        shutdown(clean)
    return 0


STATUS_ENV = "MIXLN_STATUS_FILE"


def write_status(summary: dict) -> None:
    """If $MIXLN_STATUS_FILE is set, record how the run ended there: {"state": "finished" | "stopped" |
    "preempted", "step": N, "run_dir": ...}, for requeue scripts."""
    import json
    import os

    from ..files import write_atomic

    path = os.environ.get(STATUS_ENV)
    if path:
        write_atomic(path, json.dumps({k: summary[k] for k in ("state", "step", "run_dir")}) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
