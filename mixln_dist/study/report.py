"""The study's markdown report and its figures, from the runs' own outputs: nothing in it is typed in. Numbers come
from the trainer's metrics, launch/analyze.py's results and launch/evaluate.py's perplexities; the paper's own
numbers (docs/paper.md) are quoted as the paper's, next to ours. A run that is not complete is listed as missing.
"""

from __future__ import annotations

import math
import os
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..diagnostics.report import ROWS
from . import figures, runs
from .plan import StudyRun

# The paper's own numbers, quoted (docs/paper.md section 4; arXiv v1 Table 1 and Table 5), never computed here.
PAPER_71M = {"dim": 512, "tokens": 1.1e9, "warmup": 1000}  # its setup (docs/paper.md section 3)
PAPER_TABLE1_71M = {"post": 35.18, "deepnorm": 34.87, "pre": 34.77, "mix": 33.12}  # 12 layers, 1.1B tokens
MAIN = (("pre", "Pre-LN"), ("post", "Post-LN"), ("mix", "Mix-LN"))
PAPER_TABLE5_1B = {0.0: 18.65, 0.167: 18.34, 0.25: 18.18, 0.33: 18.41, 0.417: 18.55, 0.5: 18.86, 1.0: 1434}


@dataclass
class RunResult:
    run: StudyRun
    run_dir: Path
    trained: bool
    validation: Optional[dict]
    analyses: Dict[str, dict]
    evals: List[dict]
    train: List[dict]
    grad_norms: List[dict]
    seconds: Dict[str, float] = field(default_factory=dict)  # driver-measured wall time of each step

    @property
    def complete(self) -> bool:
        return self.trained and self.validation is not None and len(self.analyses) == 3

    @property
    def ppl(self) -> Optional[float]:
        return self.validation["perplexity"] if self.validation else None

    @property
    def loss(self) -> Optional[float]:
        return self.validation["loss"] if self.validation else None

    def summary(self, kind: str, key: str):
        return self.analyses.get(kind, {}).get("summary", {}).get(key)


def collect(out: Path, plan: Sequence[StudyRun], steps: int) -> List[RunResult]:
    seconds: Dict[str, Dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for record in runs.read_jsonl(out / runs.LOG, "step"):
        seconds[record["run"]][record["step"]] += record["seconds"]
    results = []
    for r in plan:
        d = out / r.name
        results.append(RunResult(r, d, runs.is_trained(d, steps), runs.validation(d, steps), runs.analyses(d, steps),
                                 runs.metrics(d, "eval"), runs.metrics(d, "train"), runs.training_grad_norms(d),
                                 dict(seconds.get(r.name, {}))))
    return results


# Small formatting helpers ---------------------------------------------------------------------------------------


def _table(header: List[str], rows: List[List[str]]) -> List[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _f(value, spec: str = ".2f") -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def _rel(target: Path, report: Path) -> str:
    return Path(os.path.relpath(target.resolve(), report.resolve().parent)).as_posix()


def spread(values: List[float]) -> str:
    """mean ± sample standard deviation (n), or the single value."""
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} (n={len(values)})"


def layer_profile(records: List[dict], n_layers: int, first: int, last: int) -> List[float]:
    """Per-layer gradient norm during training, averaged over the records logged at steps first..last."""
    chosen = [m for m in records if first <= m["step"] <= last]
    if not chosen:
        return []
    return [statistics.mean(m[f"layer{l}"] for m in chosen) for l in range(n_layers)]


# The report ---------------------------------------------------------------------------------------------------


class Report:
    def __init__(self, out: Path, plan: Sequence[StudyRun], cfg, report: Path, command: str):
        self.out, self.cfg, self.report, self.command = out, cfg, report, command
        self.steps, self.L = cfg.train.steps, cfg.model.n_layers
        self.results = collect(out, plan, self.steps)
        self.by_name = {r.run.name: r for r in self.results}
        self.fig_dir = report.with_suffix("")  # docs/results/cpu_norm_study.md -> docs/results/cpu_norm_study/
        self.schemes = [r for r in self.results if r.run.group == "scheme"]  # the perplexity table lists all
        self.done = [r for r in self.results if r.complete]  # the figures and the other tables: complete runs only

    def get(self, name: str) -> Optional[RunResult]:
        r = self.by_name.get(name)
        return r if r is not None and r.complete else None

    def seeds(self, key: str) -> List[RunResult]:
        return [r for r in self.results if r.run.key == key and r.complete]

    def ppls(self, key: str) -> List[float]:
        return [r.ppl for r in self.seeds(key)]

    def figure(self, name: str) -> Path:
        return self.fig_dir / name

    def link(self, name: str, alt: str) -> str:
        return f"![{alt}]({_rel(self.figure(name), self.report)})"

    # Sections -------------------------------------------------------------------------------------------------

    def render(self) -> str:
        self.fig_dir.mkdir(parents=True, exist_ok=True)
        lines = [f"# Norm placement at CPU scale: a {self.L}-layer LLaMA on `data={self.cfg.data.name}`", ""]
        lines += self.setup() + self.perplexity() + self.alpha() + self.curves() + self.gradients()
        lines += self.depth() + self.paper() + self.findings()
        return "\n".join(lines) + "\n"

    def setup(self) -> List[str]:
        from ..data import DatasetMeta
        from ..model import Transformer
        from ..model.summary import count_parameters

        cfg, m = self.cfg, self.cfg.model
        params = count_parameters(Transformer(m, cfg.norm))
        tokens = cfg.train.steps * cfg.train.micro_batch_size * cfg.data.seq_len
        meta = DatasetMeta.load(cfg.data.dir) if (Path(cfg.data.dir) / "meta.json").is_file() else None
        done = [r for r in self.results if r.complete]
        missing = [r.run.name for r in self.results if not r.complete]
        invocations = runs.read_jsonl(self.out / runs.LOG, "invocation")
        wall = sum(i["seconds"] for i in invocations)
        per_step = defaultdict(list)
        for r in done:
            for step, s in r.seconds.items():
                per_step[step].append(s)
        lines = [
            "Generated by `launch/norm_study.py` (mixln_dist/study/report.py) from the runs themselves: every "
            "number below is read from their metrics, analyses and evaluations, and the figures are drawn from "
            "them. The paper's numbers are quoted from [docs/paper.md](../paper.md) and marked as the paper's.",
            "", "## Setup", "",
            f"- **Model**: {m.n_layers} layers, hidden {m.dim}, {m.n_heads} heads, SwiGLU {m.ffn_dim}, vocabulary "
            f"{m.vocab_size}, untied head: {params['total']:,} parameters ({params['non_embedding']:,} "
            "non-embedding).",
        ]
        if meta is not None:
            val = meta.splits["validation"]
            lines.append(
                f"- **Data** (`data={cfg.data.name}`: public-domain books shipped inside the package, so every user "
                "and installed copy has them; provenance and sha256 checksums in mixln_dist/corpora/README.md): "
                f"{meta.splits['train'].num_tokens:,} training tokens in {meta.splits['train'].num_documents:,} "
                f"documents; validation {val.num_tokens:,} tokens of a work held out whole "
                f"({', '.join(Path(v).name for v in cfg.data.validation)}); a tokenizer of {meta.vocab_size} "
                f"{cfg.data.tokenizer.model_type.upper()} pieces trained on the training text (sha256 "
                f"{meta.tokenizer_sha256[:12]}).")
        o = cfg.optim
        lines += [
            f"- **Budget**, the same for every run: {cfg.train.steps} steps of {cfg.train.micro_batch_size} x "
            f"{cfg.data.seq_len} tokens = {tokens:,} tokens"
            + (f" ({tokens / meta.splits['train'].num_tokens:.2f} epochs)" if meta else "")
            + f"; AdamW lr {o.lr:g}, betas {tuple(o.betas)}, weight decay {o.weight_decay:g}, clipping "
            f"{o.grad_clip:g}, {o.warmup_steps} warmup steps then cosine to {o.min_lr_ratio:g} of the peak; "
            f"fp32; seed {cfg.train.seed} and data order {cfg.data.seed} unless the run says otherwise "
            "(another seed changes both).",
            f"- **Diagnostics**: per-layer gradient norms every {cfg.train.diag_interval} steps during training; "
            f"validation loss every {cfg.train.eval_interval} steps on {cfg.train.eval_samples} samples (the loss "
            "curves); after training, on the final checkpoint, `launch/analyze.py all` (angular distance, "
            "layer-removal drop, gradient profile) and `launch/evaluate.py` on the whole held-out work (the "
            "perplexities below).",
            f"- **Reproduce**: `{self.command}` (configs/experiment/cpu_norm_study.yaml is the recipe, "
            "mixln_dist/study/plan.py the list of runs; an interrupted study resumes, a complete one is not "
            "redone).",
        ]
        if invocations:
            parts = ", ".join(f"{step} {_minutes(statistics.mean(v))}" for step, v in sorted(per_step.items()))
            lines.append(
                f"- **Measured wall time**: {_minutes(wall)} in {len(invocations)} invocation"
                f"{'s' if len(invocations) > 1 else ''} (--jobs {invocations[-1]['jobs']}, {os.cpu_count()} "
                f"cores shared with other work); per run, mean: {parts}.")
        lines.append(f"- **Runs complete**: {len(done)} of {len(self.results)}"
                     + (f"; **missing: {', '.join(missing)}** (not finished when this report was made; rerunning "
                        "the command completes them)" if missing else "") + ".")
        if len(invocations) > 1:
            import datetime

            def utc(t: float) -> str:
                return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

            lines += ["", "The invocations that made these runs (study_log.jsonl):", ""]
            lines += _table(["started", "--jobs", "runs", "wall time", "ended"], [
                [utc(i["start"]), str(i["jobs"]), " ".join(i.get("only") or []) or "all", _minutes(i["seconds"]),
                 i["state"]] for i in invocations])
        return lines + [""]

    def perplexity(self) -> List[str]:
        rows = []
        for r in self.schemes:
            seeds = self.seeds(r.run.key)
            if not r.complete:
                rows.append([r.run.label, f"`{' '.join(r.run.overrides)}`", "missing", "", "", "", ""])
                continue
            last_train = r.train[-1]["loss"] if r.train else None
            rows.append([r.run.label, f"`{' '.join(r.run.overrides)}`", _f(r.loss, ".4f"), _f(r.ppl),
                         spread([s.ppl for s in seeds]) if len(seeds) > 1 else "", _f(last_train, ".3f"),
                         _f(r.validation.get("bits_per_byte"), ".3f")])
        lines = ["## Validation perplexity on the held-out work", "",
                 "The whole held-out work, scored after the last step (`launch/evaluate.py RUN --shards --samples 0`). "
                 "Where a scheme has more seeds, the spread column gives the mean and the sample standard deviation "
                 "over all of them (seed 0 included).", ""]
        lines += _table(["scheme", "overrides", "validation loss", "perplexity (seed 0)", "over seeds",
                         "last train loss", "bits/byte"], rows)
        seed_rows = [[r.run.label, _f(r.loss, ".4f"), _f(r.ppl)] for r in self.results
                     if r.run.group == "seed" and r.complete]
        if seed_rows:
            lines += ["", "The other seeds:", ""] + _table(["run", "validation loss", "perplexity"], seed_rows)
        return lines + [""]

    def alpha_runs(self) -> List[tuple]:
        """(alpha, Post-LN layers, result) for the sweep, mix (alpha 0.25) included, by alpha."""
        found = []
        for r in self.results:
            alpha = next((float(o.split("=")[1]) for o in r.run.overrides if o.startswith("norm.alpha=")), None)
            if r.run.group in ("alpha", "scheme") and alpha is not None and r.run.name.startswith("mix") \
                    and "norm.gpas=true" not in r.run.overrides:
                found.append((alpha, math.floor(alpha * self.L), r))
        return sorted(found, key=lambda t: t[0])

    def sweep(self) -> List[tuple]:
        """(alpha, Post-LN layers, run name, perplexity) of the complete runs of the sweep, seed 0; alpha 0 is the
        `pre` run (Pre-LN is Mix-LN with no Post-LN layer), and the mix_alpha0 run, when there, checks that."""
        found = [(a, n, r.run.name, r.ppl) for a, n, r in self.alpha_runs()
                 if r.complete and r.run.name != "mix_alpha0"]
        pre = self.get("pre")
        return sorted(found + ([(0.0, 0, "pre", pre.ppl)] if pre else []))

    def alpha(self) -> List[str]:
        if not self.alpha_runs():
            return []
        done = {name for _, _, name, _ in self.sweep()}
        rows = [(a, n, name, _f(p)) for a, n, name, p in self.sweep()]
        rows += [(a, n, r.run.name, _f(r.ppl) if r.complete else "missing")
                 for a, n, r in self.alpha_runs() if r.run.name not in done]
        rows = [[f"{a:g}", str(n), f"`{name}`", p] for a, n, name, p in sorted(rows)]
        lines = ["## Mix-LN's alpha", "",
                 f"The first floor(alpha x {self.L}) layers Post-LN, the rest Pre-LN; seed 0. alpha 0 is Pre-LN, so "
                 "its row is the `pre` run; the `mix_alpha0` run builds the same model through `norm=mix` (a check).",
                 ""]
        return lines + _table(["alpha", "Post-LN layers", "run", "perplexity"], rows) + [""]

    def curves(self) -> List[str]:
        def series(rs: List[RunResult]):
            return [(r.run.label, [e["step"] for e in r.evals], [e["loss"] for e in r.evals]) for r in rs if r.evals]

        schemes = [r for r in self.schemes if r.complete]
        others = [r for _, _, r in self.alpha_runs()] + [r for r in self.results if r.run.group == "seed"]
        others = [r for r in others + [self.by_name["pre"]] if r.complete]
        if not schemes:
            return []
        figures.plot_curves([("every scheme, seed 0", series(schemes)),
                             ("Mix-LN's alpha, and the seeds of Pre-LN and Mix-LN", series(others))],
                            self.figure("loss_curves.png"),
                            f"validation loss (nats, {self.cfg.train.eval_samples} samples)")
        return ["## Loss curves", "",
                f"Validation loss during training (every {self.cfg.train.eval_interval} steps, on the first "
                f"{self.cfg.train.eval_samples} validation samples).", "",
                self.link("loss_curves.png", "validation loss curves"), ""]

    def training_profiles(self, window: str) -> List[tuple]:
        """(label, per-layer norms) of every scheme run, averaged over the first or the last quarter of training."""
        first, last = self.window(window)
        out = []
        for r in self.schemes:
            if not r.complete:
                continue
            profile = layer_profile(r.grad_norms, self.L, first, last)
            if profile:
                out.append((r.run.label, profile))
        return out

    def window(self, which: str) -> tuple:
        quarter = max(1, self.steps // 4)
        return (1, quarter) if which == "early" else (self.steps - quarter + 1, self.steps)

    def gradients(self) -> List[str]:
        early, late = self.training_profiles("early"), self.training_profiles("late")
        if not early:
            return []
        layers = list(range(self.L))
        (a, b), (c, d) = self.window("early"), self.window("late")
        figures.plot_curves([(f"first quarter (steps {a}-{b})", [(lab, layers, p) for lab, p in early]),
                             (f"last quarter (steps {c}-{d})", [(lab, layers, p) for lab, p in late])],
                            self.figure("grad_norms_training.png"), "gradient L2 norm of the layer", log_y=True,
                            xlabel="layer")
        ckpt = [(r.run.label, layers, r.summary("grad_norms", "layers")) for r in self.schemes if r.complete]
        if ckpt:
            figures.plot_curves([("final checkpoint, launch/analyze.py grads", ckpt)],
                                self.figure("grad_norms_checkpoint.png"), "gradient L2 norm of the layer",
                                log_y=True, xlabel="layer")
        late_by = dict(late)
        rows = [[lab, _f(p[-1] / p[0]), _f(late_by[lab][-1] / late_by[lab][0]) if lab in late_by else "n/a",
                 _f(max(late_by[lab]) / min(late_by[lab]) if lab in late_by and min(late_by[lab]) > 0 else None)]
                for lab, p in early]
        lines = ["## Per-layer gradient norms during training", "",
                 f"The L2 norm of each decoder layer's gradient (`train.diag_interval={self.cfg.train.diag_interval}`, "
                 "before clipping), averaged over the steps of each window; every scheme on one plot, log scale.", "",
                 self.link("grad_norms_training.png", "per-layer gradient norms during training"), ""]
        lines += _table(["scheme", "last / first layer, first quarter", "last / first layer, last quarter",
                         "largest / smallest layer, last quarter (1 = uniform)"], rows)
        if ckpt:
            lines += ["", "The same profile measured on the final checkpoint (4 batches of validation text):", "",
                      self.link("grad_norms_checkpoint.png", "per-layer gradient norms of the final checkpoints")]
        return lines + [""]

    def depth(self) -> List[str]:
        done = [r for r in self.schemes if r.complete]
        if not done:
            return []
        figures.plot_heatmaps([(r.run.label, figures.read_angular(runs.analysis_dir(r.run_dir, self.steps) /
                                                                   "angular.csv")) for r in done],
                              self.figure("angular.png"))
        figures.plot_drops([(r.run.label, r.summary("drop", "loss_increase"),
                             r.analyses["drop"]["source"]["layer_kinds"]) for r in done], self.figure("drop.png"))
        a = done[0].analyses
        rows = [[name] + [fmt(r.analyses) for r in done] for name, fmt in ROWS
                if name != "validation loss (perplexity)"]  # the perplexity table has it, on the whole work
        lines = ["## Depth diagnostics of the final checkpoints", "",
                 f"`launch/analyze.py all` on each run's last checkpoint, on the held-out work: angular distance "
                 f"over {a['angular']['settings']['windows']} windows of {a['angular']['settings']['seq_len']} tokens "
                 f"(last token of each), layer-removal drop on the first {a['drop']['settings']['samples']} "
                 "validation samples (the loss increase when the layer is removed, in nats), gradient profile on "
                 f"{a['grad_norms']['settings']['batches']} batches. The same scale on every panel.", "",
                 self.link("angular.png", "angular distance heatmaps"), "",
                 self.link("drop.png", "layer-removal drops"),
                 ""]
        lines += _table([""] + [r.run.label for r in done], rows)
        return lines + [""]

    # The paper and the findings: prose around numbers read from the runs -------------------------------------

    def facts(self) -> dict:
        """The numbers the comparison and the findings quote, each from the runs (None when a run is missing)."""
        f: dict = {}
        for key in ("pre", "post", "deepnorm", "mix"):
            ppls = self.ppls(key)
            f[key] = statistics.mean(ppls) if ppls else None
            f[key + "_n"] = len(ppls)
            f[key + "_sd"] = statistics.stdev(ppls) if len(ppls) > 1 else None
        sds = [f[k + "_sd"] for k in ("pre", "mix") if f[k + "_sd"] is not None]
        f["noise"] = max(sds) if sds else None
        f["ranked"] = sorted((r.ppl, r.run.label) for r in self.schemes if r.complete)
        f["sweep"] = [(a, n, p) for a, n, _, p in self.sweep()]
        f["best_alpha"] = min(f["sweep"], key=lambda t: t[2]) if len(f["sweep"]) > 1 else None
        f["ranks"] = {label: i + 1 for i, (_, label) in enumerate(f["ranked"])}
        profiles = {w: dict(self.training_profiles(w)) for w in ("early", "late")}
        for key, name in MAIN:
            r = self.get(key)
            label = r.run.label if r else name
            for w in ("early", "late"):
                p = profiles[w].get(label)
                f[f"{key}_grad_{w}"] = p[-1] / p[0] if p else None  # last layer over first
                f[f"{key}_spread_{w}"] = max(p) / min(p) if p and min(p) > 0 else None  # 1 = uniform
            # The depth numbers: means over the scheme's seeds (pre and mix have three), with their spread.
            seeds = self.seeds(key)
            for name_, (kind, stat) in {"ang_deep": ("angular", "mean_adjacent_deepest_quarter"),
                                        "ang": ("angular", "mean_adjacent"),
                                        "drop_deep": ("drop", "mean_increase_deepest_quarter"),
                                        "drop_max": ("drop", "max_increase")}.items():
                values = [s.summary(kind, stat) for s in seeds if s.summary(kind, stat) is not None]
                f[f"{key}_{name_}"] = statistics.mean(values) if values else None
                f[f"{key}_{name_}_sd"] = statistics.stdev(values) if len(values) > 1 else None
            f[key + "_seeds"] = len(seeds)
        pre, a0 = self.get("pre"), self.get("mix_alpha0")
        f["alpha0_check"] = (pre.ppl, a0.ppl) if pre and a0 else None
        return f

    def paper(self) -> List[str]:
        """What agrees with the paper and what does not, each verdict decided by the runs' numbers."""
        f = self.facts()
        lines = ["## Comparison with the paper", ""]
        if f["pre"] is None or f["mix"] is None:
            return lines + ["Not yet: the `pre` and `mix` runs are not complete.", ""]
        tokens = self.cfg.train.steps * self.cfg.train.micro_batch_size * self.cfg.data.seq_len
        gap, noise = f["mix"] - f["pre"], f["noise"]
        beyond = noise is not None and abs(gap) > 2 * noise
        t1 = PAPER_TABLE1_71M
        order = [name for key, name in (("mix", "Mix-LN"), ("pre", "Pre-LN"), ("deepnorm", "DeepNorm"),
                                        ("post", "Post-LN")) if f[key] is not None]
        ours = sorted(order, key=lambda name: f[{"Mix-LN": "mix", "Pre-LN": "pre", "DeepNorm": "deepnorm",
                                                 "Post-LN": "post"}[name]])
        t1_verdict = "agrees" if gap < 0 and beyond else "same direction, within the noise" if gap < 0 else \
            "does not agree"
        lines.append(
            f"**Table 1, perplexity: {t1_verdict}.** "
            f"The paper's 12-layer 71M model ({PAPER_71M['tokens'] / 1e9:g}B tokens of C4): Mix-LN {t1['mix']}, "
            f"Pre-LN {t1['pre']}, DeepNorm "
            f"{t1['deepnorm']}, Post-LN {t1['post']}, Mix-LN ahead of Pre-LN by {t1['pre'] - t1['mix']:.2f}. Here "
            f"({self.L} layers of width {self.cfg.model.dim}, {tokens:,} tokens): Mix-LN {f['mix']:.2f} "
            f"(mean of {f['mix_n']} seeds), Pre-LN {f['pre']:.2f} (mean of {f['pre_n']}), a difference of "
            f"{gap:+.2f}" + (f" against a seed standard deviation of up to {noise:.2f}" if noise is not None else "")
            + "; " + ", ".join(f"{name} {f[k]:.2f}" for k, name in (("deepnorm", "DeepNorm"), ("post", "Post-LN"))
                               if f[k] is not None)
            + f". Order here: {' < '.join(ours)} (the paper's: {' < '.join(order)}).")
        lines.append("")
        if f["best_alpha"]:
            best, t5 = f["best_alpha"], PAPER_TABLE5_1B
            by_alpha = {a: p for a, _, p in f["sweep"]}
            half = by_alpha.get(0.5)
            verdicts = [f"{'agrees' if best[0] == 0.25 else 'does not agree'} on the best alpha"]
            if half is not None and 0.0 in by_alpha:
                verdicts.append(f"{'agrees' if half > by_alpha[0.0] else 'does not agree'} that alpha 0.5 is worse "
                                "than Pre-LN")
            lines.append(
                f"**Table 5, alpha: {'; '.join(verdicts)}.** The paper (24 layers, 1B): best at alpha 0.25 "
                f"({t5[0.25]}), Pre-LN {t5[0.0]}, alpha 0.5 {t5[0.5]}. Here (seed 0): "
                + ", ".join(f"alpha {a:g} ({n} Post-LN layer{'' if n == 1 else 's'}) {p:.2f}" for a, n, p in f["sweep"])
                + f"; best alpha {best[0]:g}.")
            if f["alpha0_check"]:
                p, q = f["alpha0_check"]
                lines.append(f"alpha 0 builds the Pre-LN model, and its run gives {q:.4f} against `pre`'s {p:.4f}"
                             + (" (the same run, as it should be)." if abs(p - q) < 1e-6 else
                                f" (a difference of {q - p:+.4f}: the two runs are not bit-identical)."))
            lines.append("")
        if f["pre_grad_late"] is not None and f["post_grad_late"] is not None and f["mix_spread_late"] is not None:
            def both(key: str, above: bool) -> str:  # the paper's direction in both windows, one, or none
                hits = sum((f[f"{key}_grad_{w}"] > 1) == above for w in ("early", "late"))
                mild = 0.8 < f[f"{key}_grad_late"] < 1.25  # the last quarter's profile nearly flat
                return ("agrees" + (" in direction, mildly" if mild else ""), "partly (one window of two)",
                        "does not agree")[2 - hits]

            uniform = f["mix_spread_late"] < min(f["pre_spread_late"], f["post_spread_late"])
            verdict = "; ".join([f"Pre-LN {both('pre', False)}", f"Post-LN {both('post', True)}",
                                 f"Mix-LN {'the most uniform' if uniform else 'not more uniform than Pre-LN'}"])
            lines.append(
                f"**Figures 3e and 6a, gradient norms: {verdict}.** The paper: Pre-LN's deep layers get smaller "
                "gradients than its early ones, Post-LN's early layers smaller than its deep ones, Mix-LN's are more "
                "uniform across depth. Here, the last layer's gradient norm over the first layer's (first quarter "
                "of training / last quarter): "
                + "; ".join(f"{name} {_f(f[k + '_grad_early'])} / {_f(f[k + '_grad_late'])}" for k, name in MAIN)
                + ". The largest over the smallest layer's, last quarter (1 = uniform): "
                + "; ".join(f"{name} {_f(f[k + '_spread_late'])}" for k, name in MAIN) + ".")
            lines.append("")
        if f["pre_ang_deep"] is not None and f["mix_ang_deep"] is not None:
            def clear(key: str) -> bool:  # Mix-LN above Pre-LN by more than twice the larger seed spread
                spread = max(f.get(f"{k}_{key}_sd") or 0.0 for k in ("pre", "mix"))
                return f[f"mix_{key}"] - f[f"pre_{key}"] > 2 * spread

            turns = f["mix_ang_deep"] > f["pre_ang_deep"]
            matters = f["mix_drop_deep"] > f["pre_drop_deep"]
            depth_verdict = ("agrees" if clear("ang_deep") and clear("drop_deep") else
                             "same direction, within the seed spread" if turns and matters else
                             "partly" if turns or matters else "does not agree")

            def sd(key: str) -> str:
                return f" ± {f[key + '_sd']:.3f}" if f.get(key + "_sd") is not None else ""
            lines.append(
                f"**Figures 3 and 6b, angular distance and layer removal: {depth_verdict}.** The "
                "paper: Pre-LN's deep layers barely turn the residual stream and cost little when removed, Mix-LN's "
                "deep layers matter more. Here (means ± standard deviations over the seeds where there are several) "
                "the deepest quarter's mean d(l, l+1) (all layers in brackets) is "
                + "; ".join(f"{name} {_f(f[k + '_ang_deep'], '.3f')}{sd(k + '_ang_deep')} ({_f(f[k + '_ang'], '.3f')})"
                            for k, name in MAIN if f[k + "_ang"] is not None)
                + ", and removing one of its layers costs on average "
                + "; ".join(f"{name} {_f(f[k + '_drop_deep'], '.3f')}{sd(k + '_drop_deep')}" for k, name in MAIN
                            if f[k + "_drop_deep"] is not None)
                + " nats (the most costly layer of any: "
                + "; ".join(f"{name} {_f(f[k + '_drop_max'], '.3f')}" for k, name in MAIN
                            if f[k + "_drop_max"] is not None)
                + ").")
            lines.append("")
        return lines + self.discussion(f)

    def discussion(self, f: dict) -> List[str]:
        """Why this scale may differ from the paper's: our reading, around the runs' numbers."""
        tokens = self.cfg.train.steps * self.cfg.train.micro_batch_size * self.cfg.data.seq_len
        lines = [f"**Why this scale may differ.** *Budget*: the paper's smallest runs see "
                 f"{PAPER_71M['tokens'] / tokens:,.0f} times more tokens ({tokens:,} here against "
                 f"{PAPER_71M['tokens'] / 1e9:g}B) with layers {PAPER_71M['dim'] / self.cfg.model.dim:g} times wider, "
                 "on web text with a 32k vocabulary. These runs rank the placements by how fast they learn in "
                 "their first steps, not by where they converge" + self._still_falling() + "."]
        if f.get("pre_spread_late") is not None and f.get("post") is not None:
            starved = f["pre_spread_late"] >= 3
            lines.append(
                "*The pathology Mix-LN treats*: the paper's case is that Pre-LN's deep layers are starved of "
                "gradient and become redundant. Here Pre-LN's per-layer gradient norms span a factor of "
                f"{f['pre_spread_late']:.2f} from the largest layer to the smallest over the last quarter (its last "
                f"layer gets {f['pre_grad_late']:.2f} times the first's): its deep layers are "
                + ("already starved" if starved else "not starved yet")
                + f". What Mix-LN adds, Post-LN layers, is the slowest learner here: Post-LN alone ends at perplexity "
                f"{f['post']:.2f}{self._stalled('post')}, its first layer's gradient {f['post_grad_late']:.0f} "
                "times smaller than its "
                "last's over the last quarter (vanishing gradients in the early layers, the paper's own account "
                f"of Post-LN), after only {self.cfg.optim.warmup_steps} warmup steps (the paper: "
                f"{PAPER_71M['warmup']:,} at 71M). "
                + ("So at this scale the Post-LN layers cost more than they bring." if f["mix"] > f["pre"] else
                   "Mix-LN gains all the same."))
        lines.append("*Measures*: the drop is measured as validation loss, not as ARC-e accuracy after fine-tuning "
                     "as in the paper; the seed spreads above are the yardstick for every difference.")
        return [" ".join(lines), ""]

    def _evals(self, name: str) -> List[dict]:
        r = self.get(name)
        return r.evals if r else []

    def _still_falling(self) -> str:
        evals = self._evals("pre")
        quarter = [e for e in evals if e["step"] >= self.steps - self.steps // 4]
        if len(quarter) < 2:
            return ""
        fall = quarter[0]["loss"] - quarter[-1]["loss"]
        return (f" (Pre-LN's validation loss still fell by {fall:.3f} nats over "
                f"the last quarter, steps {quarter[0]['step']}-{quarter[-1]['step']}, with the learning rate near "
                "its floor)")

    def _stalled(self, name: str) -> str:
        evals = self._evals(name)
        if len(evals) < 4:
            return ""
        early, last = evals[2], evals[-1]  # the third point: after the warmup
        return (f" (its validation loss goes from {early['loss']:.2f} at step {early['step']} to "
                f"{last['loss']:.2f} at step {last['step']})")

    def findings(self) -> List[str]:
        f = self.facts()
        lines = ["## Findings in five lines", ""]
        if f["pre"] is None or f["mix"] is None or not f["ranked"]:
            return lines + ["Not yet: the main runs are not complete.", ""]
        best, worst = f["ranked"][0], f["ranked"][-1]
        gap, noise = f["mix"] - f["pre"], f["noise"]
        size = ("" if noise is None else f", {'more' if abs(gap) > 2 * noise else 'less'} than twice the seed "
                f"spread ({noise:.2f})")
        lines.append(f"1. Mix-LN vs Pre-LN on the held-out work: {f['mix']:.2f} vs {f['pre']:.2f} perplexity "
                     f"(means of {f['mix_n']} and {f['pre_n']} seeds), {gap:+.2f}{size}.")
        mix_label = self.by_name["mix"].run.label
        lines.append(f"2. Of the {len(f['ranked'])} placements (seed 0), best {best[1]} ({best[0]:.2f}), worst "
                     f"{worst[1]} ({worst[0]:.2f}); Pre-LN ranks {f['ranks'].get('Pre-LN', 'n/a')}, Mix-LN "
                     f"{f['ranks'].get(mix_label, 'n/a')}.")
        sweep = ", ".join(f"{a:g}: {p:.2f}" for a, _, p in f["sweep"])
        lines.append("3. Mix-LN's alpha (0 = Pre-LN): "
                     + (f"{sweep}; best {f['best_alpha'][0]:g}." if f["best_alpha"] else "not complete."))
        lines.append("4. Gradient norm, last over first layer, last quarter of training: "
                     + ", ".join(f"{name} {_f(f[k + '_grad_late'])}" for k, name in MAIN) + ".")
        lines.append("5. Deepest quarter: mean d(l, l+1) "
                     + ", ".join(f"{name} {_f(f[k + '_ang_deep'], '.3f')}" for k, name in MAIN)
                     + "; mean loss increase when one of its layers is removed "
                     + ", ".join(f"{name} {_f(f[k + '_drop_deep'], '.3f')}" for k, name in MAIN) + " nats.")
        return lines + [""]


def write_report(out: Path, plan: Sequence[StudyRun], cfg, report: Path, command: str) -> str:
    """The report's markdown (the caller writes it to `report`); its figures are written beside it now."""
    return Report(out, plan, cfg, report, command).render()
