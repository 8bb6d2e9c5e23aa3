"""`mixln-plan` (`python launch/plan.py`): will a run fit, and with which micro-batch? Per-GPU memory of the
composed config (parameters, gradients, optimizer states, activations, DeepSpeed's buffers), the CPU memory
offload needs, the FLOPs per token, and the largest micro-batch that fits; nothing is allocated. The formulas and
where they differ from DeepSpeed's own estimators: docs/scale.md.

    mixln-plan experiment=mixln_7b --gpus-per-node 8 --gpu-memory-gib 80
    mixln-plan model=llama_1b zero=stage2 train.micro_batch_size=32 --json
"""

from __future__ import annotations

import json
import sys
from typing import List, Optional, Sequence, Tuple

from ..errors import ConfigError
from .common import parse_config_cli, run

VALUED = {"gpus-per-node": int, "nodes": int, "gpu-memory-gib": float}


def split_valued(argv: Sequence[str]) -> Tuple[dict, List[str]]:
    """--name VALUE and --name=VALUE of the valued options; everything else is left for parse_config_cli."""
    values, rest, it = {}, [], iter(argv)
    for arg in it:
        name, eq, value = arg.partition("=")
        key = name[2:].replace("_", "-") if name.startswith("--") else None
        if key in VALUED:
            raw = value if eq else next(it, None)
            try:
                values[key.replace("-", "_")] = VALUED[key](raw)
            except (TypeError, ValueError):
                raise ConfigError(f"--{key} needs a number, got {raw!r}") from None
        else:
            rest.append(arg)
    return values, rest


def gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


def render(plan) -> str:
    b, g = plan.batch, plan.per_gpu_bytes
    lines = [
        f"{plan.model}: {plan.parameters:,} parameters ({plan.non_embedding_parameters:,} non-embedding), "
        f"layers {plan.norm_layers}",
        f"FLOPs per token {plan.flops_per_token:.4g} = {plan.flops_formula}",
        f"ZeRO-{plan.zero_stage}, {plan.precision}, offload {plan.offload}, {plan.gpus} GPU(s); batch {b['global']} = "
        f"{b['micro']} micro x {b['accumulation']} accumulation x {plan.gpus} GPUs, sequence {b['seq_len']}; "
        f"activation checkpointing {plan.activation_checkpointing}",
        "per GPU:",
        *(f"  {k:<12}{gib(g[k]):>12}" for k in ("parameters", "gradients", "optimizer", "buffers", "activations")),
        f"  {'total':<12}{gib(g['total']):>12}   of {gib(plan.gpu_memory_bytes)}",
        f"  activations of micro-batch {b['micro']}: {gib(plan.activations_bytes['none'])} without checkpointing, "
        f"{gib(plan.activations_bytes['full'])} with full checkpointing",
        f"CPU per node (offload): {gib(plan.cpu_bytes)}",
        f"largest micro-batch that fits: {plan.max_micro_batch}",
    ]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    def body() -> None:
        from ..config import compose
        from ..train.memory_plan import plan_memory

        values, rest = split_valued(list(sys.argv[1:] if argv is None else argv))
        cli = parse_config_cli(rest, __doc__ + "\nValued options: --gpus-per-node N (1), --nodes M (1), "
                               "--gpu-memory-gib G (80)", {"json": "print one JSON object"})
        for key, value in values.items():
            if value <= 0:
                raise ConfigError(f"--{key.replace('_', '-')} must be positive, got {value}")
        plan = plan_memory(compose(cli.overrides, cli.config_dir), **values)
        print(json.dumps(plan.to_json(), indent=1) if cli.flags.get("json") else render(plan))

    return run(body)


if __name__ == "__main__":
    raise SystemExit(main())
