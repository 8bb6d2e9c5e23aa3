"""The study driver end to end, at smoke size (`launch/norm_study.py --smoke`: 2 schemes, a 4-layer model, 20
steps): real trainings, analyses and evaluations, then the report, whose numbers must be the runs' own; a second
invocation redoes only what is missing."""

import json
import re

from mixln_dist.cli import norm_study
from mixln_dist.study import runs
from mixln_dist.study.plan import smoke_plan

STEPS = 20  # the smoke recipe's train.steps


def test_smoke_study_trains_analyses_reports_and_resumes(tmp_path):
    out, report = tmp_path / "study", tmp_path / "docs" / "results" / "cpu_norm_study.md"
    argv = ["--smoke", "--jobs", "2", "--out", str(out), "--report", str(report)]
    assert norm_study.main(argv) == 0
    text = report.read_text()
    figures = report.with_suffix("")
    for name in ("loss_curves", "grad_norms_training", "grad_norms_checkpoint", "angular", "drop"):
        assert (figures / f"{name}.png").stat().st_size > 10_000, name
        assert f"(cpu_norm_study/{name}.png)" in text  # linked relative to the report
    table = {}  # the first table naming a run is the perplexity table
    for row in text.splitlines():
        if row.startswith("| "):
            table.setdefault(row.split("|")[1].strip(), row)
    for run in smoke_plan():
        run_dir = out / run.name
        validation = runs.validation(run_dir, STEPS)
        assert validation["tokens"] > 0
        row = table[run.label]
        assert f"{validation['loss']:.4f}" in row and f"{validation['perplexity']:.2f}" in row
        assert f"{runs.metrics(run_dir, 'train')[-1]['loss']:.3f}" in row
        # The drop's full-model loss is the trainer's last logged evaluation: same samples, same definition.
        final_eval = runs.metrics(run_dir, "eval")[-1]
        drop = runs.analyses(run_dir, STEPS)["drop"]["summary"]
        assert final_eval["step"] == STEPS and abs(drop["base_loss"] - final_eval["loss"]) < 1e-4
        assert len(runs.training_grad_norms(run_dir)) == STEPS // 5  # train.diag_interval=5
    assert "Runs complete**: 2 of 2." in text and "missing" not in text
    minutes = re.search(r"Measured wall time\*\*: ([\d.]+) min in 1 invocation", text)
    assert minutes and float(minutes.group(1)) > 0

    # A lost result is redone, and nothing else: the trainings and the other analyses are complete.
    (runs.analysis_dir(out / "mix", STEPS) / runs.VALIDATION).unlink()
    before = len(runs.read_jsonl(out / runs.LOG, "step"))
    assert norm_study.main(argv) == 0
    redone = [(r["run"], r["step"]) for r in runs.read_jsonl(out / runs.LOG, "step")[before:]]
    assert redone == [("", "prepare_data"), ("mix", "validation")]
    assert "in 2 invocations" in report.read_text()
    assert json.loads((runs.analysis_dir(out / "mix", STEPS) / runs.VALIDATION).read_text())["tokens"] > 0
