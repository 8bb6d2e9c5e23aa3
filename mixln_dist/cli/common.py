"""What every entry point shares: one way to report a user's error, and the command line of the config-driven ones.

    def main(argv=None) -> int:
        cli = parse_config_cli(argv, __doc__, {"force": "rebuild everything"})
        return run(lambda: do_the_work(cli))

`run` catches the project's error family (mixln_dist.errors) and nothing else: the user gets `error: <message>`
and exit code 2 (do not retry); any other exception is a bug and keeps its traceback (exit 1).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from ..errors import EXIT_USER_ERROR, MixLNError


def is_first_rank() -> bool:
    """Whether this process speaks for a distributed job: rank 0 of a launcher or Slurm, or a lone process."""
    return os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) == "0"


def run(body: Callable[[], Optional[int]], speak: Callable[[], bool] = lambda: True) -> int:
    """Run an entry point's body; a MixLNError becomes one line on stderr (where `speak()`) and EXIT_USER_ERROR."""
    try:
        return body() or 0
    except MixLNError as e:
        if speak():
            print(f"error: {e}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR


@dataclass
class ConfigCli:
    overrides: List[str] = field(default_factory=list)  # Hydra-grammar: group=option, key=value
    flags: Dict[str, bool] = field(default_factory=dict)  # --name, by name
    config_dir: Optional[str] = None  # --config-dir DIR (else $MIXLN_CONFIG_DIR, see mixln_dist.paths)


CONFIG_DIR_HELP = "a folder of your own configs, searched before the packaged ones (or set MIXLN_CONFIG_DIR)"


def parse_config_cli(argv: Optional[Sequence[str]], usage: str, options: Dict[str, str]) -> ConfigCli:
    """The overrides and --flags of a config-driven entry point. `options` maps each boolean flag to its help
    line; `--config-dir DIR` is always accepted, and the deepspeed launcher's `--local_rank=N` is absorbed.
    --help prints `usage` and the options and exits 0; an unknown option exits 2 naming the valid ones."""
    args = list(sys.argv[1:] if argv is None else argv)
    cli = ConfigCli()
    it = iter(args)
    for arg in it:
        name, _, value = arg.partition("=")
        if name in ("--local_rank", "--local-rank"):  # the deepspeed launcher appends it
            os.environ.setdefault("LOCAL_RANK", value or next(it, "0"))
        elif name in ("--config-dir", "--config_dir"):
            cli.config_dir = value or next(it, None)
            if not cli.config_dir:
                _usage_error("--config-dir needs a folder: --config-dir DIR")
        elif arg in ("-h", "--help"):
            listing = "".join(f"\n  --{k:<12} {v}" for k, v in {**options, "config-dir DIR": CONFIG_DIR_HELP}.items())
            print(usage.rstrip() + f"\n\nOptions:{listing}")
            raise SystemExit(0)
        elif arg.startswith("--"):
            flag = arg[2:].replace("-", "_")
            if flag not in options:
                valid = ", ".join("--" + k for k in [*options, "config-dir"])
                _usage_error(f"unknown option {arg}; options: {valid}")
            cli.flags[flag] = True
        else:
            cli.overrides.append(arg)
    return cli


def _usage_error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USER_ERROR)
