"""The pretraining loop: build, restore, loop, save. One Trainer per rank.

    trainer = Trainer(cfg, env)      # locks the run directory, checks everything checkable, builds data and engine
    summary = trainer.fit()          # restores (or evaluates step 0), trains to train.steps / stop_at, saves
    trainer.close()

`fit` ends in one of three states: "finished" (train.steps reached), "stopped" (train.stop_at reached) or
"preempted" (a signal or a vanished launcher: checkpointed, see preemption.py). A numerical blow-up ends it
with DivergenceError (guard.py).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from ..checkpoint import CHECKPOINTS, complete_checkpoints
from ..config import Config, ConfigError, save_config, to_yaml
from ..data import TrainLoader, check_dataset, ensure_prepared, eval_batches
from ..errors import CheckpointError
from ..evaluation import loss_sums, next_token_loss, perplexity
from ..files import write_atomic
from ..grad_norms import engine_grad_norms
from ..model import summarize
from .checkpointing import (Parts, ResumePlan, check_resume, config_changes, find_resume, restore, save_checkpoint,
                            set_lr_for_step)
from .distributed import DistEnv, control_group, run_on_main
from .ds_config import BatchPlan, plan_batches, resolve_precision
from .engine import build_engine
from .guard import DivergenceGuard
from .metrics import Reporter, flops_per_token, peak_flops
from .preemption import StopRequests
from .run_lock import RunLock
from .state import Progress, RandomState


@dataclass
class StepResult:
    loss: torch.Tensor  # this rank's mean loss over the step's micro-batches (on the device)
    applied: bool  # whether the optimizer applied the update
    spike: Optional[str] = None  # why the loss was a spike (train.guard), else None
    global_loss: Optional[float] = None  # the loss averaged over ranks, when the guard watches it


class Trainer:
    def __init__(self, cfg: Config, env: DistEnv, log=print):
        self.cfg, self.env = cfg, env
        self.log = log if env.is_main else (lambda *a, **k: None)
        self.run_dir = Path(cfg.train.out_dir) / cfg.train.run_name
        self.precision = resolve_precision(cfg.train.precision, env.device)
        if self.precision == "bf16" and cfg.zero.stage == 0:
            raise ConfigError(
                "train.precision=bf16 needs zero.stage>=1: DeepSpeed keeps fp32 master weights and fp32 gradient "
                "accumulation only in its ZeRO optimizers (ZeRO-1 costs no extra communication); set zero=stage1"
            )
        self.lock = RunLock(self.run_dir)
        run_on_main(lambda: self.lock.acquire(self.log), env)  # before anything reads or writes the directory
        try:
            self._build()
        except BaseException:
            self.lock.release()
            raise

    # Build --------------------------------------------------------------------------------------------------------

    def _build(self) -> None:
        cfg, env = self.cfg, self.env
        resume_ref = run_on_main(lambda: find_resume(cfg, self.run_dir, self.log), env)
        self.resume = check_resume(resume_ref, cfg, env.world_size) if resume_ref else None
        if self.resume and cfg.train.stop_at and cfg.train.stop_at <= self.resume.ref.step:
            raise ConfigError(f"train.stop_at={cfg.train.stop_at} is not after the checkpoint's step "
                              f"{self.resume.ref.step}, so there is nothing to train; raise it, or set 0 to run to "
                              f"train.steps={cfg.train.steps}")
        self.batch = self._plan_batches()
        self.seq_len = cfg.data.seq_len
        self.data_meta = self._check_data()

        self.progress = Progress()
        self.loader = TrainLoader(cfg.data.dir, self.seq_len, self.batch.global_batch_size, env.rank,
                                  env.world_size, cfg.data.seed, vocab_size=cfg.model.vocab_size)
        self.guard = DivergenceGuard(cfg.train.guard, self.log)
        # Everything a checkpoint holds besides the engine; a new stateful part is one more entry here.
        self.parts = Parts(shared={"progress": self.progress, "loader": self.loader, "guard": self.guard},
                           per_rank={"random": RandomState()})
        built = build_engine(cfg, env, self.batch, self.precision,
                             load_universal=bool(self.resume and self.resume.universal),
                             warm_start=bool(cfg.train.init_from and not self.resume), log=self.log)
        self.engine, self.ds_config = built.engine, built.ds_config
        self.log(summarize(self.engine.module))
        self.log(built.description)
        self.tokens_per_step = self.batch.global_batch_size * self.seq_len
        self.flops_per_token = flops_per_token(self.engine.module, cfg.model.n_layers, cfg.model.dim, self.seq_len)
        self.report = Reporter(self.run_dir, cfg.train, env, self.log, self.tokens_per_step,
                               self.flops_per_token, peak_flops(env.device, self.precision))

    def _plan_batches(self) -> BatchPlan:
        t = self.cfg.train
        global_batch, accum = t.global_batch_size, t.grad_accum_steps
        if self.resume and global_batch is None and accum is None:
            # Resuming, perhaps on another number of ranks: keep the global batch, so the sequence of global
            # batches (and the loss curve) continues; the accumulation steps absorb the change.
            global_batch = self.resume.state["batch"]["global_batch_size"]
        return plan_batches(t.micro_batch_size, accum, global_batch, self.env.world_size)

    def _check_data(self):
        cfg = self.cfg
        if cfg.data.auto_prepare:
            run_on_main(lambda: ensure_prepared(cfg.data), self.env)
        meta = check_dataset(cfg.data, model_vocab_size=cfg.model.vocab_size, seq_len=self.seq_len)
        saved = self.resume.state.get("tokenizer_sha256") if self.resume else None
        if saved not in (None, meta.tokenizer_sha256):
            raise CheckpointError(
                f"{self.resume.ref.path} was trained with tokenizer {saved[:12]}, but {cfg.data.dir} was tokenized "
                f"with {meta.tokenizer_sha256[:12]}; resume on the original data, or start a new run"
            )
        return meta

    # Restore ------------------------------------------------------------------------------------------------------

    def _start(self) -> None:
        self._write_run_config()
        if self.resume:
            self._restore(self.resume)
            self.log(f"resumed from {self.resume.ref.path} at step {self.progress.step}"
                     + (" through a universal checkpoint" if self.resume.universal else ""))
        elif self.cfg.train.eval_interval:
            self.evaluate()

    def _restore(self, plan: ResumePlan) -> None:
        same_world = plan.state["world_size"] == self.env.world_size
        if not restore(self.engine, plan, self.parts, self.env.rank, same_world):
            torch.manual_seed(self.cfg.train.seed + 1000 * self.env.rank + self.progress.step)
        set_lr_for_step(self.engine, self.cfg, self.progress.step, self.guard.lr_scale)

    def _write_run_config(self) -> None:
        if not self.env.is_main:
            return
        self.log(f"run directory {self.run_dir}\n--- resolved config ---\n{to_yaml(self.cfg)}-----------------------")
        if self.resume:
            changes = config_changes(self.resume.ref.config(), self.cfg)
            if changes:
                self.log("changed since the checkpoint (applied): "
                         + ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items()))
        save_config(self.cfg, self.run_dir / "config.yaml")
        write_atomic(self.run_dir / "deepspeed_config.json", json.dumps(self.ds_config, indent=2))

    # Loop ---------------------------------------------------------------------------------------------------------

    def fit(self) -> dict:
        t = self.cfg.train
        self._start()
        last = min(t.steps, t.stop_at) if t.stop_at else t.steps
        state = "finished" if self.progress.step >= t.steps else "stopped"
        if self.progress.step >= t.steps:
            self.log(f"{self.run_dir} has already finished: it is at step {self.progress.step} of {t.steps}")
        self.report.begin(self.progress.step)
        with StopRequests(control_group(), self.log) as stops:
            while self.progress.step < last:
                rolled_back = self._one_step()
                step = self.progress.step
                reason = stops.agreed()
                if rolled_back and not reason:
                    continue  # back at a checkpointed step: nothing new to log, evaluate or save
                if reason or step % t.log_interval == 0 or step == last:
                    self.report.train(step, self._train_stats())
                if not reason and (step % t.eval_interval == 0 or step == t.steps):
                    self.evaluate()
                # While updates are being skipped the weights are those of the last applied step: an interval save
                # would only push the last healthy checkpoint out (train.keep_last), so it waits.
                if reason or step == last or (step % t.save_interval == 0 and not self.guard.bad_in_a_row):
                    self.save()
                if reason:
                    state = "preempted"
                    self.log(f"stopped at step {step} ({reason}); resume with the same command (train.resume=auto)")
                    break
                state = "finished" if step >= t.steps else "stopped"
        self.report.end()
        return {**self.report.summary(self.progress, self.run_dir), "state": state}

    def _one_step(self) -> bool:
        """Train a step and account for it; True when it ended in a rollback (train.guard.spike_action)."""
        step = self.progress.step + 1
        result = self.train_step()
        self.progress.advance(self.tokens_per_step)
        self.report.add_loss(result.loss if result.applied else None)
        if result.applied:
            self.guard.applied(result.global_loss)
        else:
            why = result.spike or f"the loss or gradients are not finite (loss on this rank {result.loss.item():.4g})"
            self.guard.skipped_update(step, why, self._newest_checkpoint())
            set_lr_for_step(self.engine, self.cfg, step, self.guard.lr_scale)  # DeepSpeed held the schedule back
        return bool(result.spike and self.cfg.train.guard.spike_action == "rollback" and self._rollback(step))

    def train_step(self) -> StepResult:
        """One optimizer step over this rank's slice of the next global batch."""
        self.last_lr = self.engine.get_lr()[0]  # the rate this step uses (the scheduler moves on in step())
        batch = self.loader.next_batch()
        if self.env.device.type == "cuda":
            # From pinned memory the copy is asynchronous: the host queues the step's kernels without waiting
            # for it (from pageable memory, non_blocking still blocks). Reading the rows from the memory-mapped
            # shards takes microseconds, so the next batch is not prefetched: that would also move the loader
            # state that checkpoints hold ahead of the weights.
            batch = batch.pin_memory()
        batch = batch.to(self.env.device, non_blocking=True)
        total = torch.zeros((), dtype=torch.float64, device=self.env.device)
        micro_batches = batch.split(self.batch.micro_batch_size)
        spike = global_loss = None
        for i, micro in enumerate(micro_batches):
            loss = next_token_loss(self.engine, micro)
            total += loss.detach().double()
            last = i == len(micro_batches) - 1
            if last and self.guard.watches_loss:
                global_loss = self._mean_over_ranks(total)
                spike = self.guard.spike(global_loss)
                if spike:
                    # Non-finite gradients on every rank: each ZeRO stage then discards the update exactly as it
                    # discards an overflow, whatever has been accumulated (guard.py).
                    loss = loss * float("nan")
            self.engine.backward(loss)  # DeepSpeed divides by the accumulation steps
            if last and self._diag_due() and not spike:
                # The full gradients exist only between the last backward and step; collective under ZeRO-3.
                self.report.grad_norms(self.progress.step + 1, engine_grad_norms(self.engine))
            if last and self.engine.zero_optimization_stage() == 0:
                self.engine.optimizer.overflow = not self._gradients_finite()
            self.engine.step()  # a no-op except at the accumulation boundary
        return StepResult(total / self.batch.grad_accum_steps, self.engine.was_step_applied(), spike, global_loss)

    def _gradients_finite(self) -> bool:
        """ZeRO-0 has no overflow check of its own (ZeRO 1-3 do; engine.make_skippable gives it their protocol).
        After the last backward every rank holds the same all-reduced gradients, so each decides alone."""
        grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
        return not grads or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())

    def _mean_over_ranks(self, total: torch.Tensor) -> float:
        value = (total / self.batch.grad_accum_steps).detach().cpu()
        if self.env.world_size > 1:
            dist.all_reduce(value, group=control_group())
        return value.item() / self.env.world_size

    def _rollback(self, step: int) -> bool:
        """Back to the newest checkpoint, skipping the data from it through the spike at `step`; False when there is
        no checkpoint yet (the spike's update was discarded all the same)."""
        target = run_on_main(self._newest_checkpoint_ref, self.env)
        if target is None:
            self.log(f"step {step}: no checkpoint to roll back to yet; the spike's update was discarded")
            return False
        self.guard.rolled_back()
        kept = self.guard.state_dict()  # the rollback's own record survives loading the older state
        self._restore(ResumePlan(target, target.state(), universal=False))
        self.guard.load_state_dict(kept)
        self.loader.skip(step - target.step)
        set_lr_for_step(self.engine, self.cfg, self.progress.step, self.guard.lr_scale)
        self.report.restart_clock()
        self.log(f"step {step}: rolled back to {target.path} (rollback {self.guard.rollbacks}), skipping the "
                 f"{step - target.step} batches up to the spike; learning rate x{self.guard.lr_scale:g}")
        return True

    def _newest_checkpoint_ref(self):
        found = complete_checkpoints(self.run_dir / CHECKPOINTS)
        return found[-1] if found else None

    def _newest_checkpoint(self) -> Optional[int]:
        ref = self._newest_checkpoint_ref()
        return ref.step if ref else None

    def _diag_due(self) -> bool:
        interval = self.cfg.train.diag_interval
        return interval > 0 and (self.progress.step + 1) % interval == 0

    def _train_stats(self) -> dict:
        """What a train log line shows besides the loss (read at log intervals only: it syncs the device)."""
        grad_norm = self.engine.get_global_grad_norm()
        return {"lr": self.last_lr, "grad_norm": float(grad_norm) if grad_norm is not None else None,
                "tokens_seen": self.progress.tokens_seen, "skipped": self.guard.skipped}

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Mean token loss over the validation split (or its first train.eval_samples samples), all ranks."""
        self.engine.eval()
        start = time.perf_counter()
        batches = eval_batches(self.cfg.data.dir, self.seq_len, self.batch.micro_batch_size, self.env.rank,
                               self.env.world_size, self.cfg.train.eval_samples, vocab_size=self.cfg.model.vocab_size)
        sums = loss_sums(self.engine, batches, self.env.device)  # (summed loss, target tokens) on this rank
        dist.all_reduce(sums)
        self.engine.train()
        loss = (sums[0] / sums[1]).item()
        values = {"loss": loss, "perplexity": perplexity(loss), "tokens": int(sums[1].item()),
                  "seconds": time.perf_counter() - start}
        self.report.eval(self.progress.step, values)
        return values

    # Save ---------------------------------------------------------------------------------------------------------

    def save(self) -> None:
        start = time.perf_counter()
        facts = {
            "world_size": self.env.world_size,
            "zero_stage": self.cfg.zero.stage,
            "precision": self.precision,
            "batch": {"global_batch_size": self.batch.global_batch_size,
                      "micro_batch_size": self.batch.micro_batch_size,
                      "grad_accum_steps": self.batch.grad_accum_steps},
            "tokenizer_sha256": self.data_meta.tokenizer_sha256,
            "time": time.time(),
        }
        ref = save_checkpoint(self.engine, self.run_dir, self.cfg, self.progress.step, facts, self.parts,
                              self.env.rank)
        self.report.note(f"saved {ref.path} in {time.perf_counter() - start:.1f}s")
        self.report.restart_clock()  # checkpoint time is not training throughput

    def close(self) -> None:
        """Free DeepSpeed's state (hooks, partitioned parameters, communication handles), close the logs and let
        go of the run directory."""
        self.engine.destroy()
        self.report.close()
        self.lock.release()
