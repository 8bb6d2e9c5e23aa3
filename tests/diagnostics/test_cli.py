"""launch/analyze.py end to end, on a checkpoint the real trainer wrote and the data it trained on."""

import json
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, tiny_overrides
from mixln_dist.cli.analyze import main

from .helpers import TINY

L = TINY.n_layers  # the debug model's depth, which tiny_overrides keeps


@pytest.fixture(scope="module")
def run_dir(tiny_dataset, tmp_path_factory):
    """Two optimizer steps of the default job's Mix-LN model, shrunk; evaluated and saved at step 2."""
    out = tmp_path_factory.mktemp("runs")
    overrides = tiny_overrides(tiny_dataset, out, "train.steps=2", "train.save_interval=2", "train.eval_interval=2",
                               "train.eval_samples=16", "train.tensorboard=false")
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "launch/pretrain.py"), *overrides],
                          capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out / "debug-mix0.25"


FAST = ["--batch-size", "4", "--windows", "12", "--samples", "16", "--grad-batches", "2"]


def test_all_writes_every_result_and_the_full_model_loss_is_the_trainers(run_dir):
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "launch/analyze.py"), "all", str(run_dir), *FAST],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mean d(l, l+1)" in proc.stdout
    folder = run_dir / "analysis" / "step_0000002"
    for kind in ("angular", "drop", "grad_norms"):
        assert (folder / f"{kind}.png").stat().st_size > 10_000
        assert (folder / f"{kind}.csv").read_text().count("\n") == {"angular": L * (L + 1) // 2,
                                                                      "drop": L, "grad_norms": L + 3}[kind] + 1
    drop = json.loads((folder / "drop.json").read_text())
    assert drop["source"]["step"] == 2 and drop["source"]["layer_kinds"] == ["post", "pre", "pre", "pre"]
    evals = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = next(e["loss"] for e in evals if e["kind"] == "eval" and e["step"] == 2)
    # The same 16 validation samples through the same loss definition: equal up to summation order.
    assert drop["summary"]["base_loss"] == pytest.approx(logged, abs=1e-5)


def test_text_files_and_a_second_run_that_refuses_to_overwrite(run_dir, tmp_path, capsys):
    text = tmp_path / "persuasion.txt"
    text.write_text(" ".join(["Anne Elliot walked to Uppercross in the autumn."] * 200))
    out = tmp_path / "angular"
    args = ["angular", str(run_dir / "checkpoints" / "step_0000002"), "--text", str(text), "--out", str(out),
            "--seq-len", "32", "--all-tokens", *FAST[:4]]
    assert main(args) == 0
    record = json.loads((out / "angular.json").read_text())
    assert record["settings"]["all_tokens"] and record["settings"]["seq_len"] == 32
    assert record["summary"]["tokens"] == "all"

    before = (out / "angular.csv").read_bytes()
    capsys.readouterr()
    assert main(args) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert (out / "angular.csv").read_bytes() == before
    assert main(args + ["--overwrite"]) == 0


def test_report_over_runs(run_dir, tmp_path, capsys):
    if not (run_dir / "analysis").is_dir():
        assert main(["all", str(run_dir), *FAST]) == 0
    report = tmp_path / "report.md"
    assert main(["report", str(run_dir), "--out", str(report)]) == 0
    assert "| layers | mix (1 post, 3 pre) |" in report.read_text()
    assert main(["report", str(run_dir), "--out", str(report)]) == 2
    assert "--overwrite" in capsys.readouterr().err
