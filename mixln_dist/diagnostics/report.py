"""Analysis results on disk, and the markdown report that puts several runs side by side.

An analysis folder (by default `<run_dir>/analysis/step_NNNNNNN/`) holds, per analysis, a CSV of the numbers,
a PNG, and a JSON of the summary, the settings and the source checkpoint:

    angular.csv   start_layer, n, distance, count       angular.png   heatmap, x = l, y = n
    drop.csv      layer, kind, loss, perplexity, ...    drop.png      bar chart of the loss increase
    grad_norms.csv part, total, attn, mlp, norm         grad_norms.png per-layer profile, log scale
"""

from __future__ import annotations

import csv
import json
import math
import os
from itertools import groupby
from pathlib import Path
from typing import List, Sequence, Union

from .plots import plot_angular, plot_drop, plot_grad_profile
from ..errors import AnalysisError

KINDS = ("angular", "drop", "grad_norms")
TITLES = {"angular": "Angular distance d(l, l+n)", "drop": "Validation loss increase when a layer is removed",
          "grad_norms": "Per-layer gradient norm"}
PLOTS = {"angular": plot_angular, "drop": plot_drop, "grad_norms": plot_grad_profile}


def outputs(out_dir: Path, kind: str) -> List[Path]:
    return [out_dir / f"{kind}.{ext}" for ext in ("csv", "png", "json")]


def refuse_to_overwrite(paths: Sequence[Path], overwrite: bool, how: str = "--out DIR") -> None:
    """Before any work: a user's earlier results are replaced only when asked."""
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        folder = existing[0].parent
        names = ", ".join(p.name if p.parent == folder else str(p) for p in existing)
        raise AnalysisError(f"{folder} already holds {names}; pass --overwrite to replace them, or {how} to write "
                            "elsewhere")


def save_result(out_dir: Path, kind: str, result, source: dict, settings: dict, seconds: float, title: str) -> None:
    """One analysis result (AngularDistances, LayerDrop or GradNormProfile) -> its CSV, PNG and JSON."""
    csv_path, png_path, json_path = outputs(out_dir, kind)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = result.rows()
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    PLOTS[kind](result, png_path, title)
    # The JSON last: its presence is what marks a complete result for `find_analysis` and the report.
    record = {"source": source, "settings": settings, "summary": result.summary(), "seconds": seconds}
    json_path.write_text(json.dumps(_json_safe(record), indent=2) + "\n")


def _json_safe(value):
    """NaN and infinities -> null: standard JSON, readable by any tool."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


# Reading results back ------------------------------------------------------------------------------------------


def find_analysis(path: Union[str, Path]) -> Path:
    """An analysis folder, a run directory (its newest analysis), or a checkpoint folder (its analysis)."""
    path = Path(path)
    candidates = [path]
    if (path / "analysis").is_dir():  # a run directory
        candidates = sorted((p for p in (path / "analysis").iterdir() if p.is_dir()), reverse=True)
    elif path.parent.name == "checkpoints":  # a checkpoint folder
        candidates = [path.parent.parent / "analysis" / path.name]
    for candidate in candidates:
        if any((candidate / f"{kind}.json").is_file() for kind in KINDS):
            return candidate
    raise AnalysisError(f"no analysis results under {path}; run `python launch/analyze.py all {path}` first")


def read_results(folder: Path) -> Dict[str, dict]:
    return {kind: json.loads((folder / f"{kind}.json").read_text())
            for kind in KINDS if (folder / f"{kind}.json").is_file()}


# The comparison report -------------------------------------------------------------------------------------------


def comparison_report(paths: Sequence[Union[str, Path]], out: Path) -> str:
    """Markdown comparing analysed runs: a table of summary numbers, then each figure side by side."""
    runs = []
    for path in paths:
        folder = find_analysis(path)
        results = read_results(folder)
        source = next(iter(results.values()))["source"]
        runs.append((folder, results, source))
    labels = [_label(source) for _, _, source in runs]
    lines = [f"# Depth diagnostics: {' vs '.join(labels)}", ""]
    lines += _table([""] + labels, [[name] + [fmt(results) for _, results, _ in runs] for name, fmt in ROWS])
    lines += ["", "Loss increases are in nats (positive = worse); the deepest quarter is the last ceil(L/4) layers; "
              "d(l, l+1) is the angular distance across layer l (0 = same direction, 1 = opposite).", ""]
    for kind in KINDS:
        pngs = [folder / f"{kind}.png" for folder, _, _ in runs]
        cells = [f"![{kind} {label}]({_relative(png, out)})" if png.is_file() else "(not analysed)"
                 for png, label in zip(pngs, labels)]
        lines += [f"## {TITLES[kind]}", ""] + _table(labels, [cells]) + [""]
    return "\n".join(lines)


def _label(source: dict) -> str:
    step = source.get("step")
    return source["run_name"] + (f" (step {step})" if step is not None else "")


def _relative(target: Path, report: Path) -> str:
    return Path(os.path.relpath(target.resolve(), report.resolve().parent)).as_posix()


def _table(header: List[str], rows: List[List[str]]) -> List[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _get(results: dict, kind: str, key: str):
    return results.get(kind, {}).get("summary", {}).get(key)


def _num(value, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def _kinds(results: dict) -> str:
    source = next(iter(results.values()))["source"]
    runs = [f"{len(list(group))} {kind}" for kind, group in groupby(source["layer_kinds"])]
    return f"{source['scheme']} ({', '.join(runs)})"


def _drop_max(results: dict) -> str:
    value = _get(results, "drop", "max_increase")
    return "n/a" if value is None else f"{value:.3f} (layer {_get(results, 'drop', 'max_increase_layer')})"


def _base(results: dict) -> str:
    loss = _get(results, "drop", "base_loss")
    return "n/a" if loss is None else f"{loss:.3f} ({_get(results, 'drop', 'base_perplexity'):.1f})"


ROWS = [
    ("layers", _kinds),
    ("validation loss (perplexity)", _base),
    ("angular distance over", lambda r: {"last": "last token of each window", "all": "every token"}.get(
        _get(r, "angular", "tokens"), "n/a")),
    ("mean d(l, l+1), all layers", lambda r: _num(_get(r, "angular", "mean_adjacent"))),
    ("mean d(l, l+1), deepest quarter", lambda r: _num(_get(r, "angular", "mean_adjacent_deepest_quarter"))),
    ("largest loss increase (layer)", _drop_max),
    ("mean loss increase, deepest quarter", lambda r: _num(_get(r, "drop", "mean_increase_deepest_quarter"))),
    ("gradient norm, last / first layer", lambda r: _num(_get(r, "grad_norms", "last_to_first_ratio"), ".2f")),
]
