#!/usr/bin/env python
"""The default job once per norm scheme, same seed and data, and the final validation perplexity of each: the
side-by-side of docs/model.md. (The 12-layer study with the depth analyses is launch/norm_study.py.)

    python bench/norm_side_by_side.py                          # every scheme below, one after another
    python bench/norm_side_by_side.py peri hybrid --nice 10    # some of them, at a lower CPU priority
    python bench/norm_side_by_side.py --out runs/side_by_side  # where the runs go (default: that folder)

Each scheme is a real `launch/pretrain.py` run (about 6 minutes on 2 free cores) named after it; a finished run
is not repeated (the trainer resumes it, and a completed one just reports its last evaluation). Prints one
markdown row per scheme: the validation perplexity of the last "eval at step N" (N = 600 for the default job).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from mixln_dist.study.runs import metrics

REPO = Path(__file__).resolve().parent.parent
SCHEMES = {
    "pre": ["norm=pre"],
    "mix": ["norm=mix"],
    "peri": ["norm=peri"],
    "reordered": ["norm=reordered"],
    "reordered_qk": ["norm=reordered", "norm.qk_norm=true"],
    "hybrid": ["norm=hybrid"],
    "hybrid_star": ["norm=hybrid", "norm.hybrid_star=true"],
    "mix_gpas": ["norm=mix", "norm.gpas=true"],
}


def final_eval(run_dir: Path) -> dict:
    return metrics(run_dir, "eval")[-1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("schemes", nargs="*", metavar="SCHEME", help=f"any of {', '.join(SCHEMES)} (default: all)")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "side_by_side")
    p.add_argument("--nice", type=int, default=0, help="run each job under `nice -n N` (a shared machine)")
    args, overrides = p.parse_known_args(argv)  # anything else is a trainer override for every run
    unknown = [s for s in args.schemes if s not in SCHEMES]
    if unknown:
        p.error(f"unknown scheme(s) {unknown}; choose from {', '.join(SCHEMES)}")
    rows = []
    for name in args.schemes or list(SCHEMES):
        cmd = [sys.executable, str(REPO / "launch/pretrain.py"), *SCHEMES[name], f"train.run_name={name}",
               f"train.out_dir={args.out}", "train.progress_bar=false", *overrides]
        if args.nice:
            cmd = ["nice", "-n", str(args.nice), *cmd]
        log = args.out / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as f:
            if subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO).returncode:
                raise SystemExit(f"{name} failed; see {log}")
        final = final_eval(args.out / name)
        rows.append(f"| {name} | `{' '.join(SCHEMES[name])}` | {final['step']} | {final['loss']:.4f} | "
                    f"{final['perplexity']:.2f} |")
        print(rows[-1], flush=True)
    print("\n| run | settings | step | validation loss | validation perplexity |\n|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
