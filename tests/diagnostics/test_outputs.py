"""What lands on disk: CSVs of the expected shape, real PNGs, JSON summaries, and the comparison report."""

import csv
import json
import math
import re

import pytest
import torch

from mixln_dist.diagnostics.angular import angular_distances
from mixln_dist.diagnostics.drop import layer_removal_drop
from mixln_dist.diagnostics.grad_norms import grad_norm_profile
from mixln_dist.diagnostics.report import (comparison_report, find_analysis, outputs, refuse_to_overwrite,
                                           save_result)
from mixln_dist.diagnostics.sources import AnalysisError
from mixln_dist.model import SCHEMES, NormConfig

from .helpers import TINY, build, tokens

L = TINY.n_layers


def results(model):
    rows = tokens(8, 17)
    batches = [(b, torch.ones(len(b), dtype=torch.bool)) for b in rows.split(4)]
    return {"angular": angular_distances(model, rows[:, :16]), "drop": layer_removal_drop(model, batches),
            "grad_norms": grad_norm_profile(model, [rows[:4]])}


def analyse(model, folder, run_name):
    """What `analyze.py all` writes, for an in-memory model."""
    source = {"path": "memory", "run_name": run_name, "step": 7, "model": "tiny",
              "scheme": model.norm_cfg.scheme, "layer_kinds": model.layer_kinds}
    for kind, result in results(model).items():
        save_result(folder, kind, result, source, {"seq_len": 16}, 0.1, run_name)
    return folder


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """Two analysed runs: a Pre-LN one inside a run directory, a Mix-LN one in a folder of its own."""
    root = tmp_path_factory.mktemp("analysed")
    pre = analyse(build(NormConfig(scheme="pre")), root / "runs/tiny-pre/analysis/step_0000007", "tiny-pre")
    mix = analyse(build(NormConfig(scheme="mix", alpha=0.5)), root / "elsewhere", "tiny-mix")
    return root, pre, mix


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_each_analysis_writes_a_csv_of_the_expected_shape_a_png_and_a_summary(analysed):
    folder = analysed[2]
    angular = read_csv(folder / "angular.csv")
    assert len(angular) == L * (L + 1) // 2 and list(angular[0]) == ["start_layer", "n", "distance", "count"]
    drop = read_csv(folder / "drop.csv")
    assert [int(r["layer"]) for r in drop] == list(range(L)) and drop[0]["kind"] == "post"
    grads = read_csv(folder / "grad_norms.csv")
    assert len(grads) == L + 3 and list(grads[0]) == ["part", "total", "attn", "mlp", "norm"]
    for kind in ("angular", "drop", "grad_norms"):
        png = (folder / f"{kind}.png").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000, kind
        record = json.loads((folder / f"{kind}.json").read_text())
        assert record["source"]["run_name"] == "tiny-mix" and record["summary"]


def test_undefined_numbers_are_written_as_json_null(tmp_path):
    model = build(NormConfig(scheme="pre"))
    with torch.no_grad():
        model.embed_tokens.weight.zero_()  # every state is zero: no angle anywhere
    save_result(tmp_path, "angular", angular_distances(model, tokens(2, 8)), {"run_name": "z"}, {}, 0.0, "z")
    summary = json.loads((tmp_path / "angular.json").read_text())["summary"]  # strict JSON: no NaN literal
    assert summary["mean_adjacent"] is None and summary["adjacent"] == [None] * L


def test_existing_results_are_never_replaced_silently(tmp_path):
    paths = outputs(tmp_path, "drop")
    paths[0].write_text("my notes")
    with pytest.raises(AnalysisError, match="--overwrite"):
        refuse_to_overwrite(paths, overwrite=False)
    refuse_to_overwrite(paths, overwrite=True)


def test_report_tabulates_the_summaries_and_shows_the_figures_side_by_side(analysed):
    root, pre, mix = analysed
    out = root / "reports/report.md"
    text = comparison_report([root / "runs/tiny-pre", mix], out)

    assert text.startswith("# Depth diagnostics: tiny-pre (step 7) vs tiny-mix (step 7)")
    assert "| layers | pre (4 pre) | mix (2 post, 2 pre) |" in text
    drop = json.loads((pre / "drop.json").read_text())["summary"]
    assert f"| {drop['max_increase']:.3f} (layer {drop['max_increase_layer']}) |" in text
    images = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
    assert len(images) == 6  # three figures x two runs
    assert all((out.parent / image).resolve().is_file() for image in images)  # relative to the report
    assert re.search(r"\| !\[angular tiny-pre[^|]*\| !\[angular tiny-mix", text)  # one row: side by side


def test_find_analysis_picks_the_newest_analysed_step_of_a_run(tmp_path):
    for step in ("step_0000010", "step_0000020", "step_0000030"):
        (tmp_path / "run/analysis" / step).mkdir(parents=True)
    for step in ("step_0000010", "step_0000020"):  # step 30's analysis never finished: no JSON
        (tmp_path / "run/analysis" / step / "drop.json").write_text("{}")
    assert find_analysis(tmp_path / "run").name == "step_0000020"
    assert find_analysis(tmp_path / "run/checkpoints/step_0000010").name == "step_0000010"
    with pytest.raises(AnalysisError, match="analyze.py all"):
        find_analysis(tmp_path / "empty")


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_norm_scheme_is_analysed(scheme):
    for kind, result in results(build(NormConfig(scheme=scheme))).items():
        numbers = [v for v in result.summary().values() if isinstance(v, float)]
        assert numbers and all(math.isfinite(v) for v in numbers), (kind, result.summary())
