#!/usr/bin/env python
"""Will a run fit, and with which micro-batch? Its per-GPU memory from the config alone (mixln_dist/cli/plan.py;
`mixln-plan`).

    python launch/plan.py experiment=mixln_7b --gpus-per-node 8 --gpu-memory-gib 80 [--json]
"""

from mixln_dist.cli.plan import main

if __name__ == "__main__":
    raise SystemExit(main())
