"""Throughput accounting (FLOPs per token, MFU), the metrics sinks (TensorBoard, JSONL) and the Reporter that
turns the loop's numbers into log lines.

FLOPs per token (training, forward + backward), the PaLM appendix-B formula:

    6 * N  +  12 * n_layers * dim * seq_len

where N counts every parameter that takes part in a matrix multiply: all of them except the input embedding
(a table lookup); the untied LM head is included. The second term is attention's score and value products,
without discounting the causal mask. Activation recomputation is not counted (this is MFU, not HFU).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
import torch.distributed as dist

# Dense bf16 tensor-core peaks (no sparsity), FLOP/s, by a substring of torch.cuda.get_device_name().
# fp32 runs on GPUs use TF32 tensor cores where torch allows it; we only report MFU for bf16.
PEAK_BF16_FLOPS = [
    ("H200", 989e12),
    ("GH200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H800", 989e12),
    ("B200", 2250e12),
    ("B100", 1750e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("RTX 4090", 165e12),
    ("MI300X", 1307e12),
    ("MI250X", 383e12),
]


def flops_per_token(model: torch.nn.Module, n_layers: int, dim: int, seq_len: int) -> float:
    embedding = model.embed_tokens.weight.numel()
    n_matmul = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in model.parameters()) - embedding
    return 6.0 * n_matmul + 12.0 * n_layers * dim * seq_len


def peak_flops(device: torch.device, precision: str) -> Optional[float]:
    """The device's dense peak for this precision, or None when unknown (CPUs, fp32, unlisted GPUs)."""
    if device.type != "cuda" or precision != "bf16":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_BF16_FLOPS:
        if key in name:
            return flops
    return None


class MetricsLogger:
    """Rank 0 writes; the other ranks' loggers do nothing. Values arrive already reduced across ranks."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool):
        self.enabled = enabled
        self.run_dir = run_dir
        self.writer = None
        self.files: Dict[str, object] = {}  # JSONL files by path relative to the run directory
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log(self, step: int, values: Dict[str, float], kind: str = "train", jsonl: str = "metrics.jsonl") -> None:
        """One JSON line in run_dir/<jsonl> and one TensorBoard scalar `<kind>/<key>` per value."""
        if not self.enabled:
            return
        if jsonl not in self.files:
            path = self.run_dir / jsonl
            path.parent.mkdir(parents=True, exist_ok=True)
            self.files[jsonl] = open(path, "a")
            if path.stat().st_size and not _ends_with_newline(path):
                self.files[jsonl].write("\n")  # a run killed mid-line: its half record stays on a line of its own
        f = self.files[jsonl]
        f.write(json.dumps({"kind": kind, "step": step, "time": time.time(), **values}) + "\n")
        f.flush()
        if self.writer is not None:
            for key, value in values.items():
                if value is not None:
                    self.writer.add_scalar(f"{kind}/{key}", value, step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        for f in self.files.values():
            f.close()


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, 2)
        return f.read(1) == b"\n"


def format_train_line(step: int, total: int, m: Dict[str, Optional[float]]) -> str:
    mfu = "n/a" if m.get("mfu") is None else f"{100 * m['mfu']:.1f}%"
    grad = "n/a" if m.get("grad_norm") is None else f"{m['grad_norm']:.3f}"
    skipped = f" | {m['skipped_steps']} updates skipped" if m.get("skipped_steps") else ""
    return (
        f"step {step:>6}/{total} | loss {m['loss']:.4f} | lr {m['lr']:.3e} | grad norm {grad} | "
        f"{m['tokens_per_s']:,.0f} tok/s | MFU {mfu}{skipped}"
    )


class Reporter:
    """What the run tells people and tools: a train line every train.log_interval steps (loss averaged over the
    window and the ranks, lr, grad norm, tokens/s, MFU), evaluations, gradient norms, a progress bar, TensorBoard
    and JSONL (MetricsLogger); and the history `Trainer.fit` returns. Only rank 0 prints and writes, but every
    rank calls `train` (it all-reduces the window's loss)."""

    def __init__(self, run_dir: Path, train_cfg, env, log: Callable[..., None], tokens_per_step: int,
                 flops_per_token: float, peak: Optional[float]):
        self.cfg, self.env, self.log = train_cfg, env, log
        self.tokens_per_step, self.flops_per_token, self.peak = tokens_per_step, flops_per_token, peak
        self.metrics = MetricsLogger(run_dir, env.is_main, train_cfg.tensorboard)
        self.history: List[Dict] = []  # every logged and evaluated value, for callers and tests
        self.bar = None
        # The window's summed loss stays on the device: one transfer per log line, not one per step. Steps whose
        # update was not applied (train.guard) count for throughput but not in the loss.
        self._loss_sum = torch.zeros((), dtype=torch.float64, device=env.device)
        self._steps, self._loss_steps, self._clock = 0, 0, time.perf_counter()

    def begin(self, step: int) -> None:
        if self.env.is_main and self.cfg.progress_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=self.cfg.steps, initial=step, desc="train", unit="step", dynamic_ncols=True)
        self.restart_clock()

    def restart_clock(self) -> None:
        """Time spent outside training steps (evaluation, checkpoints) is not throughput."""
        self._loss_sum.zero_()
        self._steps, self._loss_steps, self._clock = 0, 0, time.perf_counter()

    def add_loss(self, loss: Optional[torch.Tensor]) -> None:
        """A step done; `loss` is its loss, or None when its update was not applied."""
        if loss is not None:
            self._loss_sum += loss
            self._loss_steps += 1
        self._steps += 1
        if self.bar is not None:
            self.bar.update(1)

    def train(self, step: int, stats: Dict[str, Optional[float]]) -> None:
        elapsed = time.perf_counter() - self._clock
        dist.all_reduce(self._loss_sum)
        tokens_per_s = self._steps * self.tokens_per_step / max(elapsed, 1e-9)
        mfu = self.flops_per_token * tokens_per_s / (self.peak * self.env.world_size) if self.peak else None
        loss = self._loss_sum.item() / (self._loss_steps * self.env.world_size) if self._loss_steps else float("nan")
        values = {"loss": loss, "lr": stats["lr"], "grad_norm": stats["grad_norm"], "tokens_per_s": tokens_per_s,
                  "mfu": mfu, "tokens_seen": stats["tokens_seen"], "skipped_steps": stats.get("skipped", 0)}
        self._record("train", step, values)
        self.note(format_train_line(step, self.cfg.steps, values))
        self.restart_clock()

    def eval(self, step: int, values: Dict[str, float]) -> None:
        self._record("eval", step, values)
        self.note(f"eval at step {step}: loss {values['loss']:.4f} | perplexity {values['perplexity']:.2f} "
                  f"({values['tokens']:,} tokens)")
        self.restart_clock()

    def grad_norms(self, step: int, norms: Dict[str, float]) -> None:
        self.metrics.log(step, norms, kind="grad_norm", jsonl="diagnostics/grad_norms.jsonl")

    def note(self, line: str) -> None:
        """A line for people, above the progress bar when there is one."""
        if self.bar is not None:
            self.bar.write(line)
        else:
            self.log(line, flush=True)

    def end(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.metrics.flush()

    def summary(self, progress, run_dir: Path) -> dict:
        return {"step": progress.step, "tokens_seen": progress.tokens_seen, "run_dir": str(run_dir),
                "evals": [h for h in self.history if h["kind"] == "eval"],
                "train": [h for h in self.history if h["kind"] == "train"]}

    def close(self) -> None:
        self.end()
        self.metrics.close()

    def _record(self, kind: str, step: int, values: dict) -> None:
        self.history.append({"kind": kind, "step": step, **values})
        self.metrics.log(step, values, kind=kind)
