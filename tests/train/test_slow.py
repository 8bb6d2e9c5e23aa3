"""Long checks, outside the default suite: `python -m pytest -m slow tests/train/test_slow.py`.

DeepSpeed's CPU Adam (optimizer offload) and fused Adam compile C++ on first use (about a minute each on 2
cores), and the default job takes about 5 minutes.
"""

import json
import subprocess
import sys
import time

import pytest

from conftest import REPO_ROOT, tiny_overrides
from .helpers import child_env, losses, run_jobs

pytestmark = pytest.mark.slow


def test_offload_and_deepspeed_adam_match_torch_adamw(tiny_dataset, tmp_path):
    common = ("train.steps=6", "train.eval_interval=6", "train.save_interval=6")

    def job(name, *extra):
        return {"name": name, "overrides": tiny_overrides(tiny_dataset, tmp_path, f"train.run_name={name}", *common, *extra)}

    results = run_jobs([
        job("torch_z2", "zero.stage=2"),
        job("offload_z2", "zero=stage2_offload"),  # DeepSpeedCPUAdam
        job("offload_z3", "zero=stage3_offload"),  # parameters offloaded too
        job("fused_z2", "zero.stage=2", "optim.impl=fused"),  # DeepSpeed's FusedAdam (its CPU build)
    ], tmp_path / "results", timeout=1200)
    reference = losses(results["torch_z2"][0])
    for name in ("offload_z2", "offload_z3", "fused_z2"):
        assert losses(results[name][0]) == pytest.approx(reference, abs=1e-4), name
    # Resuming an offloaded run restores the CPU optimizer states too.
    resumed = run_jobs([job("offload_z2", "zero=stage2_offload", "train.steps=8")], tmp_path / "resumed", timeout=600)
    assert [h["step"] for h in resumed["offload_z2"][0]["train"]] == [7, 8]


def test_default_job_perplexity_falls_tenfold(tmp_path):
    """The README's main job: the debug Mix-LN model on the bundled sample, from nothing (tokenizer and shards
    are prepared on first use), about 5 minutes on 2 CPU cores."""
    start = time.time()
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "launch/pretrain.py"), "train.progress_bar=false"],
                          cwd=tmp_path, env=child_env(threads=None), capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    evals = [json.loads(line) for line in (tmp_path / "runs/debug-mix0.25/metrics.jsonl").read_text().splitlines()]
    ppl = {e["step"]: e["perplexity"] for e in evals if e["kind"] == "eval"}
    print(f"default job: {time.time() - start:.0f} s, validation perplexity by step {ppl}")
    first, last = ppl[min(ppl)], ppl[max(ppl)]
    assert last * 10 <= first, f"validation perplexity fell only from {first:.1f} to {last:.1f}"
