"""The pretraining loop: build, restore, loop, save. One Trainer per rank.

    trainer = Trainer(cfg, env)      # checks everything that can be checked, then builds data and engine
    summary = trainer.fit()          # restores (or evaluates step 0), trains to train.steps / stop_at, saves
    trainer.close()
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.distributed as dist

from ..config import Config, ConfigError, save_config, to_yaml
from ..data import TrainLoader, check_dataset, ensure_prepared, eval_batches
from ..errors import CheckpointError
from ..evaluation import loss_sums, next_token_loss, perplexity
from ..files import write_atomic
from ..grad_norms import engine_grad_norms
from ..model import summarize
from .checkpointing import Parts, check_resume, config_changes, find_resume, restore, save_checkpoint
from .distributed import DistEnv, run_on_main
from .ds_config import BatchPlan, plan_batches, resolve_precision
from .engine import build_engine
from .metrics import Reporter, flops_per_token, peak_flops
from .state import Progress, RandomState


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
        resume_ref = find_resume(cfg, self.run_dir)
        self.resume = check_resume(resume_ref, cfg, env.world_size) if resume_ref else None
        self.batch = self._plan_batches()
        self.seq_len = cfg.data.seq_len
        self.data_meta = self._check_data()

        self.progress = Progress()
        self.loader = TrainLoader(cfg.data.dir, self.seq_len, self.batch.global_batch_size, env.rank,
                                  env.world_size, cfg.data.seed)
        # Everything a checkpoint holds besides the engine; a new stateful part is one more entry here.
        self.parts = Parts(shared={"progress": self.progress, "loader": self.loader},
                           per_rank={"random": RandomState()})
        built = build_engine(cfg, env, self.batch, self.precision, load_universal=bool(self.resume and self.resume.universal),
                             warm_start=bool(cfg.train.init_from and not self.resume), log=self.log)
        self.engine, self.ds_config = built.engine, built.ds_config
        self.log(summarize(self.engine.module))
        self.log(built.description)
        self.tokens_per_step = self.batch.global_batch_size * self.seq_len
        self.flops_per_token = flops_per_token(self.engine.module, cfg.model.n_layers, cfg.model.dim, self.seq_len)
        self.report = Reporter(self.run_dir, cfg.train, env, self.log, self.tokens_per_step,
                               self.flops_per_token, peak_flops(env.device, self.precision))

    # Build --------------------------------------------------------------------------------------------------------

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
            same_world = self.resume.state["world_size"] == self.env.world_size
            if not restore(self.engine, self.resume, self.cfg, self.parts, self.env.rank, same_world):
                torch.manual_seed(self.cfg.train.seed + 1000 * self.env.rank + self.progress.step)
            self.log(f"resumed from {self.resume.ref.path} at step {self.progress.step}"
                     + (" through a universal checkpoint" if self.resume.universal else ""))
        elif self.cfg.train.eval_interval:
            self.evaluate()

    def _write_run_config(self) -> None:
        if not self.env.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log(f"run directory {self.run_dir}\n--- resolved config ---\n{to_yaml(self.cfg)}-----------------------")
        if self.resume:
            changes = config_changes(self.resume.ref.config(), self.cfg)
            if changes:
                self.log("changed since the checkpoint: "
                         + ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items()))
        save_config(self.cfg, self.run_dir / "config.yaml")
        write_atomic(self.run_dir / "deepspeed_config.json", json.dumps(self.ds_config, indent=2))

    # Loop ---------------------------------------------------------------------------------------------------------

    def fit(self) -> dict:
        t = self.cfg.train
        self._start()
        stop = min(t.steps, t.stop_at) if t.stop_at else t.steps
        self.report.begin(self.progress.step)
        while self.progress.step < stop:
            self.report.add_loss(self.train_step())
            self.progress.advance(self.tokens_per_step)
            step = self.progress.step
            if step % t.log_interval == 0 or step in (t.steps, stop):
                self.report.train(step, self._train_stats())
            if step % t.eval_interval == 0 or step == t.steps:
                self.evaluate()
            if step % t.save_interval == 0 or step in (t.steps, stop):
                self.save()
        self.report.end()
        return self.report.summary(self.progress, self.run_dir)

    def train_step(self) -> torch.Tensor:
        """One optimizer step over this rank's slice of the next global batch; returns its mean loss."""
        self.last_lr = self.engine.get_lr()[0]  # the rate this step uses (the scheduler moves on in step())
        batch = self.loader.next_batch().to(self.env.device, non_blocking=True)
        total = torch.zeros((), dtype=torch.float64, device=self.env.device)
        micro_batches = batch.split(self.batch.micro_batch_size)
        for i, micro in enumerate(micro_batches):
            loss = next_token_loss(self.engine, micro)
            self.engine.backward(loss)  # DeepSpeed divides by the accumulation steps
            if i == len(micro_batches) - 1 and self._diag_due():
                # The full gradients exist only between the last backward and step; collective under ZeRO-3.
                self.report.grad_norms(self.progress.step + 1, engine_grad_norms(self.engine))
            self.engine.step()  # a no-op except at the accumulation boundary
            total += loss.detach().double()
        return total / self.batch.grad_accum_steps

    def _diag_due(self) -> bool:
        interval = self.cfg.train.diag_interval
        return interval > 0 and (self.progress.step + 1) % interval == 0

    def _train_stats(self) -> dict:
        """What a train log line shows besides the loss (read at log intervals only: it syncs the device)."""
        grad_norm = self.engine.get_global_grad_norm()
        return {"lr": self.last_lr, "grad_norm": float(grad_norm) if grad_norm is not None else None,
                "tokens_seen": self.progress.tokens_seen}

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Mean token loss over the validation split (or its first train.eval_samples samples), all ranks."""
        self.engine.eval()
        start = time.perf_counter()
        batches = eval_batches(self.cfg.data.dir, self.seq_len, self.batch.micro_batch_size, self.env.rank,
                               self.env.world_size, self.cfg.train.eval_samples)
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
        """Free DeepSpeed's state (hooks, partitioned parameters, communication handles) and close the logs."""
        self.engine.destroy()
        self.report.close()
