"""The study's runs: one recipe (configs/experiment/cpu_norm_study.yaml), one run per norm placement, an alpha
sweep for Mix-LN and more seeds for Pre-LN and Mix-LN; and `--smoke`'s tiny version of the same.

Every run shares the recipe's seed, data order and token budget; a run differs from `pre` only in the overrides
it lists. Runs are listed in the order they are trained: the paper's Table 1 schemes and one more seed each for
`pre` and `mix` first, so that a study cut short still answers the main question.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

EXPERIMENT = "cpu_norm_study"


@dataclass(frozen=True)
class StudyRun:
    name: str  # the run directory under the study's folder
    label: str  # how tables and legends name it
    overrides: Tuple[str, ...]  # trainer overrides on top of the recipe
    group: str = "scheme"  # scheme | alpha | seed: which table it belongs to
    config: str = ""  # runs sharing a config (seeds of one scheme) share this key; default: the name
    seed: int = 0

    @property
    def key(self) -> str:
        return self.config or self.name


def _scheme(name: str, label: str, *overrides: str) -> StudyRun:
    return StudyRun(name, label, overrides)


def _seed(base: StudyRun, seed: int) -> StudyRun:
    # Another seed changes the initialisation (train.seed) and the order of the training samples (data.seed).
    return StudyRun(f"{base.name}_seed{seed}", f"{base.label}, seed {seed}",
                    (*base.overrides, f"train.seed={seed}", f"data.seed={1234 + seed}"), "seed", base.name, seed)


def _alpha(alpha: float) -> StudyRun:
    return StudyRun(f"mix_alpha{alpha:g}", f"Mix-LN, alpha {alpha:g}", ("norm=mix", f"norm.alpha={alpha}"), "alpha")


PRE = _scheme("pre", "Pre-LN", "norm=pre")
MIX = _scheme("mix", "Mix-LN (alpha 0.25)", "norm=mix", "norm.alpha=0.25")
SCHEMES = [
    PRE,
    _scheme("post", "Post-LN", "norm=post"),
    _scheme("deepnorm", "DeepNorm", "norm=deepnorm"),
    MIX,
    _scheme("sandwich", "Sandwich-LN", "norm=sandwich"),
    _scheme("lns", "LayerNorm Scaling", "norm=lns"),
    _scheme("peri", "Peri-LN", "norm=peri"),
    _scheme("reordered", "reordered norm (OLMo 2)", "norm=reordered"),
    _scheme("hybrid", "HybridNorm", "norm=hybrid"),
    _scheme("mix_gpas", "Mix-LN + GPAS", "norm=mix", "norm.alpha=0.25", "norm.gpas=true"),
]
ALPHAS = [0.125, 0.5, 0.0]  # with the mix run's 0.25: the sweep; 0 is Pre-LN by construction, a check, so last


def full_plan() -> List[StudyRun]:
    first, rest = SCHEMES[:4], SCHEMES[4:]
    seeds1 = [_seed(PRE, 1), _seed(MIX, 1)]
    seeds2 = [_seed(PRE, 2), _seed(MIX, 2)]
    return [*first, *seeds1, *(_alpha(a) for a in ALPHAS[:2]), *rest, *seeds2, _alpha(ALPHAS[2])]


def smoke_plan() -> List[StudyRun]:
    return [PRE, MIX]


@dataclass(frozen=True)
class Settings:
    """What the whole study shares: the recipe's overrides and how much each analysis reads."""

    overrides: Tuple[str, ...]  # on top of experiment=cpu_norm_study, for every run
    data: str  # the data config (its prepared copy lives in the study folder)
    angular_windows: int
    drop_samples: int
    grad_batches: int
    eval_samples: int = 0  # validation samples for the final perplexity; 0 = the whole held-out work


FULL = Settings(overrides=(), data="books", angular_windows=256, drop_samples=128, grad_batches=4)

# Tiny: a 4-layer, 64-wide model on the Austen sample with a 512-piece tokenizer, 20 steps. Seconds per run.
SMOKE = Settings(
    overrides=("data=sample", "data.tokenizer.vocab_size=512", "model.vocab_size=512", "model.n_layers=4",
               "model.dim=64", "model.n_heads=4", "model.ffn_dim=176", "data.seq_len=64", "train.steps=20",
               "train.micro_batch_size=4", "train.eval_interval=10", "train.eval_samples=32", "train.diag_interval=5",
               "train.save_interval=10", "train.log_interval=5", "optim.warmup_steps=2"),
    data="sample", angular_windows=32, drop_samples=32, grad_batches=2, eval_samples=256)
