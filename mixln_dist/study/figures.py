"""The study's figures, every run on one figure: validation-loss curves, per-layer gradient norms during training,
the angular-distance heatmaps and the layer-removal drops side by side. Drawn from what the runs wrote (the
trainer's JSONL, launch/analyze.py's CSV and JSON), on `matplotlib.figure.Figure` as diagnostics/plots.py does."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from ..diagnostics.plots import KIND_COLORS, KIND_NAMES

Series = Tuple[str, List[float], List[float]]  # label, x, y


def _save(fig: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _styles(n: int):
    """Distinct colour and line style for up to 20 series."""
    import matplotlib

    colors = matplotlib.colormaps["tab10"].colors
    return [(colors[i % 10], "-" if i < 10 else "--") for i in range(n)]


def plot_curves(panels: Sequence[Tuple[str, Sequence[Series]]], path: Path, ylabel: str, log_y: bool = False,
                xlabel: str = "step") -> None:
    """One panel per (title, series); each series a line."""
    panels = [(title, series) for title, series in panels if series]  # an empty panel says nothing
    fig = Figure(figsize=(6.5 * len(panels), 4.5))
    for i, (title, series) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for (label, x, y), (color, style) in zip(series, _styles(len(series))):
            ax.plot(x, y, style, color=color, label=label, marker="o", markersize=3, linewidth=1.3)
        if log_y:
            ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps and layers are whole numbers
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(fig, path)


def read_angular(csv_path: Path) -> np.ndarray:
    """angular.csv -> an (L, L) array, row n-1, column l: d(l, l+n); NaN where undefined."""
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    L = max(int(r["n"]) for r in rows)
    grid = np.full((L, L), np.nan)
    for r in rows:
        n, l = int(r["n"]), int(r["start_layer"])
        if l < L and r["distance"] not in ("", "nan"):
            grid[n - 1, l] = float(r["distance"])
    return grid


def _grid(n: int) -> Tuple[int, int]:
    cols = min(n, 5)
    return math.ceil(n / cols), cols


def plot_heatmaps(maps: Sequence[Tuple[str, np.ndarray]], path: Path) -> None:
    """Every run's angular-distance heatmap (x = l, y = n, as in the paper) on one colour scale."""
    rows, cols = _grid(len(maps))
    fig = Figure(figsize=(3.3 * cols + 1, 3.1 * rows), layout="constrained")  # room for the shared colour bar
    top = max(float(np.nanmax(m)) for _, m in maps)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(len(maps))]
    im = None
    for ax, (label, grid) in zip(axes, maps):
        L = grid.shape[0]
        im = ax.imshow(np.ma.masked_invalid(grid), origin="lower", cmap="viridis", vmin=0.0, vmax=top,
                       aspect="auto", extent=(-0.5, L - 0.5, 0.5, L + 0.5))
        ax.set_title(label, fontsize=9)
        ax.set_xticks(range(0, L, max(1, L // 6)))
        ax.set_yticks(range(1, L + 1, max(1, L // 6)))
        ax.set_xlabel("layer l", fontsize=8)
        ax.set_ylabel("n", fontsize=8)
    fig.colorbar(im, ax=axes, label="angular distance d(l, l+n)", shrink=0.9)
    fig.savefig(path, dpi=100)


def plot_drops(drops: Sequence[Tuple[str, List[float], List[str]]], path: Path) -> None:
    """Every run's validation-loss increase per removed layer, bars coloured by the layer's kind, one y scale."""
    rows, cols = _grid(len(drops))
    fig = Figure(figsize=(3.4 * cols, 2.8 * rows + 0.6))
    values = [v for _, inc, _ in drops for v in inc]
    low, high = min(0.0, min(values)), max(values)
    kinds_seen: Dict[str, None] = {}
    for i, (label, increase, kinds) in enumerate(drops):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.bar(range(len(increase)), increase, color=[KIND_COLORS.get(k, "gray") for k in kinds])
        kinds_seen.update(dict.fromkeys(kinds))
        ax.set_ylim(low * 1.1, high * 1.1)
        ax.axhline(0.0, color="black", linewidth=0.6)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("removed layer", fontsize=8)
        if i % cols == 0:
            ax.set_ylabel("loss increase (nats)", fontsize=8)
    fig.legend(handles=[Patch(color=KIND_COLORS.get(k, "gray"), label=f"{KIND_NAMES.get(k, k)} layer")
                        for k in kinds_seen], loc="lower center", ncol=len(kinds_seen), fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=100)
