#!/usr/bin/env python
"""The CPU-scale norm-placement study and its report, in one command (mixln_dist/cli/norm_study.py;
`mixln-norm-study`; docs/results/cpu_norm_study.md).

    python launch/norm_study.py --jobs 2 --report docs/results/cpu_norm_study.md
    python launch/norm_study.py --smoke --out /tmp/smoke
"""

from mixln_dist.cli.norm_study import main

if __name__ == "__main__":
    raise SystemExit(main())
