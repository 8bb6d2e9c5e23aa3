#!/usr/bin/env bash
# The GPU check (docs/scale.md, "The GPU check"): on one GPU, in under 8 minutes on an H200, it trains llama_1b
# Mix-LN in bf16 with ZeRO-1 and with ZeRO-2 for a few dozen steps on the bundled sample corpus, then gives
# llama_7b a step with ZeRO-3 and the optimizer offloaded to the CPU, and prints tokens/s, MFU and peak memory
# next to the planner's prediction. It installs nothing: it runs the checkout with the Python environment that
# is already there (.venv, or $PYTHON). Data and runs go to a scratch folder that is removed at the end; no
# checkpoint is written.
#
#   bash bench/gpu_check.sh             # needs a CUDA GPU
#   bash bench/gpu_check.sh --dry-run   # the same path on the CPU with the debug model, to check the plumbing
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
DRY=0
case "${1:-}" in
  --dry-run) DRY=1 ;;
  "") ;;
  *) echo "usage: bash bench/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ "$DRY" = 0 ] && ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu_check: torch ($PY) sees no CUDA GPU, so nothing was run; on a CPU machine use --dry-run" >&2
  exit 2
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export MIXLN_HOME="$WORK"  # the sample corpus is prepared here on first use, and the runs' directories go here
RESULTS="$WORK/results.jsonl"
COMMON=(data=sample train.global_batch_size=null train.grad_accum_steps=1 train.progress_bar=false
        train.tensorboard=false)

run_case() {  # LIMIT_S STEPS OVERRIDES...
  local limit=$1 steps=$2
  shift 2
  echo "== $* ($steps steps)" >&2
  if ! timeout "$limit" "$PY" bench/gpu_check.py "$steps" "${COMMON[@]}" "$@" >"$WORK/case.log" 2>&1; then
    echo "   failed or ran past ${limit}s; the end of its log:" >&2
    tail -n 15 "$WORK/case.log" >&2
    echo "{\"config\": \"$*\", \"failed\": true}" >>"$RESULTS"
    return 0
  fi
  grep '^GPU_CHECK ' "$WORK/case.log" | sed 's/^GPU_CHECK //' >>"$RESULTS"
}

if [ "$DRY" = 1 ]; then
  export DS_ACCELERATOR=cpu OMP_NUM_THREADS=1
  SMALL=(model=debug train.precision=fp32 train.micro_batch_size=4 train.run_name=check)
  run_case 300 3 zero=stage1 "${SMALL[@]}"
  run_case 300 3 zero=stage2 "${SMALL[@]}"
  run_case 300 2 zero=stage3_init "${SMALL[@]}"
else
  ONE_B=(model=llama_1b norm=mix train.precision=bf16 train.micro_batch_size=32 optim.impl=torch
         train.run_name=check)
  run_case 210 30 zero=stage1 "${ONE_B[@]}"
  run_case 150 30 zero=stage2 "${ONE_B[@]}"
  SEVEN_B=(zero=stage3_init zero.offload_optimizer=cpu model=llama_7b norm=mix norm.post_layers=2
           train.precision=bf16 train.micro_batch_size=4 train.run_name=check7b)
  # The optimizer states of a 7B model take 16 bytes per parameter of host memory: check before trying.
  need=$("$PY" launch/plan.py "${COMMON[@]}" "${SEVEN_B[@]}" --json |
         "$PY" -c 'import json, sys; print(json.load(sys.stdin)["cpu_bytes"])')
  have=$(awk '/MemAvailable/ {print $2 * 1024}' /proc/meminfo)
  if [ "$have" -gt $((need + need / 10)) ]; then
    run_case 240 2 "${SEVEN_B[@]}"
  else
    echo "== llama_7b skipped: its offloaded optimizer needs $((need >> 30)) GiB of host memory;" \
         "$((have >> 30)) GiB are free" >&2
  fi
fi

"$PY" - "$RESULTS" <<'PYEOF'
import json, sys
gib = lambda b: "-" if b is None else f"{b / 2**30:.1f}"
print(f"{'config':<66} {'tok/s':>9} {'MFU':>6} {'peak GiB':>9} {'plan GiB':>9} {'plan CPU':>9}")
for line in open(sys.argv[1]):
    r = json.loads(line)
    name = " ".join(w for w in r["config"].split() if not w.startswith(("data=", "train.global", "train.grad_accum",
                                                                          "train.progress", "train.tensorboard",
                                                                          "train.run_name")))
    if r.get("failed"):
        print(f"{name[:66]:<66} failed")
        continue
    mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
    peak = r["peak_allocated"] if r["peak_allocated"] is not None else r["peak_rss"]
    print(f"{name[:66]:<66} {r['tokens_per_s']:>9,.0f} {mfu:>6} {gib(peak):>9} {gib(r['planned_gpu']):>9} "
          f"{gib(r['planned_cpu']):>9}")
PYEOF
