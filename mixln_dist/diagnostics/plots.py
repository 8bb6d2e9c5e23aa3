"""The three figures. Drawn on `matplotlib.figure.Figure` objects, never pyplot: no display, no global state,
the Agg renderer whatever backend the user has configured."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from .angular import AngularDistances
from .drop import LayerDrop
from .grad_norms import GradNormProfile

KIND_COLORS = {"post": "tab:orange", "deepnorm": "tab:red", "pre": "tab:blue", "lns": "tab:purple",
               "sandwich": "tab:green", "reordered": "tab:olive", "hybrid": "tab:brown"}
KIND_NAMES = {"post": "Post-LN", "deepnorm": "DeepNorm", "pre": "Pre-LN", "lns": "LayerNorm Scaling",
              "sandwich": "Sandwich-LN", "reordered": "reordered norm", "hybrid": "HybridNorm"}
ANNOTATE_UP_TO = 12  # layers; beyond this the cell values are unreadable


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_angular(result: AngularDistances, path: Path, title: str) -> None:
    """Heatmap as in the paper: x = starting layer l, y = n, colour = d(l, l+n); undefined cells blank."""
    L = result.n_layers
    size = min(4 + 0.2 * L, 9)
    fig = Figure(figsize=(size + 1, size))
    ax = fig.add_subplot()
    data = np.ma.masked_invalid(result.distance.numpy())
    im = ax.imshow(data, origin="lower", cmap="viridis", vmin=0.0, aspect="auto",
                   extent=(-0.5, L - 0.5, 0.5, L + 0.5))
    fig.colorbar(im, ax=ax, label="angular distance d(l, l+n)")
    if L <= ANNOTATE_UP_TO and data.count():
        top = float(data.max())
        for (i, l), value in np.ndenumerate(data.filled(np.nan)):
            if np.isfinite(value):
                color = "black" if value > 0.6 * top else "white"
                label = f"{value:.2f}" if value >= 0.01 else f"{value:.0e}"
                ax.text(l, i + 1, label, ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(0, L, max(1, L // 16)))
    ax.set_yticks(range(1, L + 1, max(1, L // 16)))
    ax.set_xlabel("starting layer l (0 = embedding output)")
    ax.set_ylabel("n (layers apart)")
    ax.set_title(f"{title}\nangular distance ({'all tokens' if result.all_tokens else 'last token'})")
    _save(fig, path)


def plot_drop(result: LayerDrop, path: Path, title: str) -> None:
    """Bars: validation-loss increase when each layer is removed, coloured by the removed layer's kind."""
    L = len(result.losses)
    fig = Figure(figsize=(min(6 + 0.3 * L, 14), 4))
    ax = fig.add_subplot()
    ax.bar(range(L), result.increase(), color=[KIND_COLORS.get(k, "gray") for k in result.kinds])
    kinds = dict.fromkeys(result.kinds)  # in order of appearance
    ax.legend(handles=[Patch(color=KIND_COLORS.get(k, "gray"), label=f"{KIND_NAMES.get(k, k)} layer")
                       for k in kinds], fontsize=8)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("removed layer")
    ax.set_ylabel("validation loss increase (nats)")
    ax.set_xticks(range(0, L, max(1, L // 32)))
    full = result.summary()
    ax.set_title(f"{title}\nlayer removal (full model: loss {full['base_loss']:.3f}, "
                 f"perplexity {full['base_perplexity']:.1f})")
    _save(fig, path)


def plot_grad_profile(result: GradNormProfile, path: Path, title: str) -> None:
    """Per-layer gradient norm (total and its attention/MLP/norm parts) on a log scale."""
    L = result.n_layers
    fig = Figure(figsize=(min(7 + 0.3 * L, 15), 4))
    ax = fig.add_subplot()
    layers = np.arange(L)
    ax.plot(layers, result.layers(), "o-", color="black", label="layer total")
    for part, style, label in ((".attn", "s--", "attention"), (".mlp", "^--", "MLP"), (".norm", "v:", "norm gains")):
        values = np.array(result.layers(part))
        if (values > 0).any():  # a log axis cannot show an all-zero series
            ax.plot(layers, np.where(values > 0, values, np.nan), style, label=label, alpha=0.8)
    for part, color, label in (("embed", "tab:gray", "embedding"), ("head", "tab:brown", "LM head")):
        if result.norms.get(part, 0.0) > 0:  # a tied head has no gradient of its own
            ax.axhline(result.norms[part], color=color, linestyle=":", label=label)
    ax.set_yscale("log")
    ax.set_xticks(range(0, L, max(1, L // 32)))
    ax.set_xlabel("layer")
    ax.set_ylabel("gradient L2 norm")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title(f"{title}\ngradient norms, mean over {result.batches} batch{'es' if result.batches > 1 else ''}")
    _save(fig, path)
