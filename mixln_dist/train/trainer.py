"""The pretraining loop: build, (resume,) train, evaluate, checkpoint. One Trainer per rank.

    trainer = Trainer(cfg, env)      # checks everything that can be checked before any work
    summary = trainer.fit()
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..checkpoint import CheckpointError
from ..config import Config, ConfigError, save_config, to_yaml
from ..diagnostics.grad_norms import engine_grad_norms
from ..data import TrainLoader, check_dataset, ensure_prepared, eval_batches
from ..evaluation import loss_sums
from ..model import Transformer
from .activation_checkpointing import apply_activation_checkpointing
from .checkpointing import check_resume, config_changes, find_resume, load_rng, make_universal, save_checkpoint
from .distributed import DistEnv, run_on_main
from .ds_config import BatchPlan, deepspeed_config, plan_batches, resolve_precision
from .metrics import MetricsLogger, flops_per_token, format_train_line, peak_flops
from .optim import build_optimizer, build_scheduler, choose_impl, lr_factor
from .warm_start import load_weights, read_weights


def repair_loaded_optimizer(optimizer, hyperparameters: List[dict]) -> None:
    """Undo two defects of DeepSpeed 0.19's ZeRO-3 universal-checkpoint loader (harmless elsewhere).

    1. It copies param group 0's hyperparameters onto every group, so the norm weights would start decaying:
       hyperparameters come from the config, the checkpoint only gives optimizer state.
    2. It gives every group's Adam state one shared `step` tensor; torch's Adam increments it in place once per
       group per step, so every group after the first would use a wrong bias correction.
    """
    for group, saved in zip(optimizer.param_groups, hyperparameters):
        group.update(saved)
    inner = getattr(optimizer, "optimizer", optimizer)
    for state in inner.state.values():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()


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

        if cfg.data.auto_prepare:
            run_on_main(lambda: ensure_prepared(cfg.data), env)
        self.data_meta = check_dataset(cfg.data, model_vocab_size=cfg.model.vocab_size, seq_len=self.seq_len)
        if self.resume and self.resume.state.get("tokenizer_sha256") not in (None, self.data_meta.tokenizer_sha256):
            raise CheckpointError(
                f"{self.resume.ref.path} was trained with tokenizer {self.resume.state['tokenizer_sha256'][:12]}, "
                f"but {cfg.data.dir} was tokenized with {self.data_meta.tokenizer_sha256[:12]}; resume on the "
                "original data, or start a new run"
            )
        self.loader = TrainLoader(cfg.data.dir, self.seq_len, self.batch.global_batch_size, env.rank,
                                  env.world_size, cfg.data.seed)
        self.step, self.tokens_seen = 0, 0
        self.engine = self._build_engine()
        self.tokens_per_step = self.batch.global_batch_size * self.seq_len
        self.flops_per_token = flops_per_token(self.engine.module, cfg.model.n_layers, cfg.model.dim, self.seq_len)
        self.peak_flops = peak_flops(env.device, self.precision)
        self.metrics = MetricsLogger(self.run_dir, env.is_main, cfg.train.tensorboard)
        self.history: List[Dict] = []  # every logged and evaluated value, for callers and tests

    # Setup ------------------------------------------------------------------------------------------------------

    def _plan_batches(self) -> BatchPlan:
        t = self.cfg.train
        global_batch, accum = t.global_batch_size, t.grad_accum_steps
        if self.resume and global_batch is None and accum is None:
            # Resuming, perhaps on another number of ranks: keep the global batch, so the sequence of global
            # batches (and the loss curve) continues; the accumulation steps absorb the change.
            global_batch = self.resume.state["batch"]["global_batch_size"]
        return plan_batches(t.micro_batch_size, accum, global_batch, self.env.world_size)

    def _build_model(self, ds_config: dict) -> Transformer:
        model = self._initialised_model(ds_config)
        if self.cfg.train.init_from and not self.resume:
            state = read_weights(self.cfg.train.init_from, self.cfg.model)
            load_weights(model, state, zero3=self.cfg.zero.zero_init, is_main=self.env.is_main)
            self.log(f"initialised from {self.cfg.train.init_from}")
        return model

    def _initialised_model(self, ds_config: dict) -> Transformer:
        cfg = self.cfg
        if cfg.zero.zero_init:
            import deepspeed

            with deepspeed.zero.Init(config_dict_or_path=ds_config):
                model = Transformer(cfg.model, cfg.norm)
            torch.manual_seed(cfg.train.seed)
            model.reset_rope()
            for unit, init in model.init_units():
                # Gather one unit at a time; rank 0 draws the values and ZeRO scatters them back.
                with deepspeed.zero.GatheredParameters(list(unit.parameters()), modifier_rank=0):
                    if self.env.is_main:
                        init()
            return model
        with torch.device("meta"):  # no throwaway default init of a large model
            model = Transformer(cfg.model, cfg.norm)
        model.to_empty(device=self.env.device)
        torch.manual_seed(cfg.train.seed)
        model.init_weights()
        return model

    def _build_engine(self):
        import deepspeed

        cfg = self.cfg
        universal = bool(self.resume and self.resume.universal)
        ds_config = deepspeed_config(cfg, self.batch, self.precision, load_universal=universal)
        model = self._build_model(ds_config)
        layers = apply_activation_checkpointing(model, cfg.train.activation_checkpointing, cfg.train.ac_every_k)
        impl = choose_impl(cfg.optim, self.env.device, offload=cfg.zero.offload_optimizer != "none")
        optimizer = build_optimizer(model, cfg.optim, impl)
        engine, _, _, _ = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=lambda opt: build_scheduler(opt, cfg.optim, cfg.train.steps),
            config=ds_config,
            dist_init_required=False,
        )
        if cfg.train.compile:
            engine.compile()
        self.log(
            f"engine: ZeRO-{cfg.zero.stage}, {self.precision}, optimizer {impl}, {self.env.world_size} rank(s) on "
            f"{self.env.device.type}, batch {self.batch.global_batch_size} = {self.batch.micro_batch_size} micro x "
            f"{self.batch.grad_accum_steps} accumulation x {self.env.world_size} ranks, activation checkpointing on "
            f"{len(layers)}/{cfg.model.n_layers} layers"
        )
        self.ds_config = ds_config
        return engine

    def _restore(self) -> None:
        plan = self.resume
        if plan.universal:
            make_universal(plan, self.env.rank)
        hyper = [{k: v for k, v in g.items() if k != "params"} for g in self.engine.optimizer.param_groups]
        load_path, _ = self.engine.load_checkpoint(str(plan.ref.root), tag=plan.load_tag)
        if load_path is None:
            raise CheckpointError(f"DeepSpeed could not load {plan.ref.root / plan.load_tag}")
        repair_loaded_optimizer(self.engine.optimizer, hyper)
        state = plan.state
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]
        self.loader.load_state_dict(state["loader"])
        self._set_lr_for_step(self.step)
        same_world = state["world_size"] == self.env.world_size
        if not load_rng(plan.ref, self.env.rank) or not same_world:
            torch.manual_seed(self.cfg.train.seed + 1000 * self.env.rank + self.step)
        self.log(f"resumed from {plan.ref.path} at step {self.step}"
                 + (" through a universal checkpoint" if plan.universal else ""))

    def _set_lr_for_step(self, step: int) -> None:
        """The schedule is a pure function of the step, so set it from the step rather than trusting whatever
        scheduler state a (possibly converted) checkpoint carried."""
        sched = self.engine.lr_scheduler
        sched.last_epoch = step
        factor = lr_factor(self.cfg.optim, self.cfg.train.steps)(step)
        for group, base in zip(self.engine.optimizer.param_groups, sched.base_lrs):
            group["lr"] = base * factor
        sched._last_lr = [g["lr"] for g in self.engine.optimizer.param_groups]

    # The loop ---------------------------------------------------------------------------------------------------

    def fit(self) -> dict:
        cfg, t = self.cfg, self.cfg.train
        self._write_run_config()
        if self.resume:
            self._restore()
        elif t.eval_interval:
            self.evaluate()
        bar = self._progress_bar()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.env.device)
        steps_in_window, window_start = 0, time.perf_counter()
        stop = min(t.steps, t.stop_at) if t.stop_at else t.steps
        while self.step < stop:
            loss_sum += self.train_step()
            self.step += 1
            self.tokens_seen += self.tokens_per_step
            steps_in_window += 1
            if bar is not None:
                bar.update(1)
            if self.step % t.log_interval == 0 or self.step in (t.steps, stop):
                elapsed = time.perf_counter() - window_start
                self._log_train(loss_sum, steps_in_window, elapsed, bar)
                loss_sum.zero_()
                steps_in_window, window_start = 0, time.perf_counter()
            if self.step % t.eval_interval == 0 or self.step == t.steps:
                self.evaluate(bar)
            if self.step % t.save_interval == 0 or self.step in (t.steps, stop):
                self.save()
                window_start = time.perf_counter()  # checkpoint time is not training throughput
        if bar is not None:
            bar.close()
        self.metrics.flush()
        evals = [h for h in self.history if h["kind"] == "eval"]
        return {"step": self.step, "tokens_seen": self.tokens_seen, "evals": evals,
                "train": [h for h in self.history if h["kind"] == "train"], "run_dir": str(self.run_dir)}

    def close(self) -> None:
        """Free DeepSpeed's state (hooks, partitioned parameters, communication handles) and close the logs."""
        self.engine.destroy()
        self.metrics.close()

    def train_step(self) -> torch.Tensor:
        """One optimizer step over this rank's slice of the next global batch; returns its mean loss."""
        self.last_lr = self.engine.get_lr()[0]  # the rate this step uses (the scheduler moves on in step())
        batch = self.loader.next_batch().to(self.env.device, non_blocking=True)
        total = torch.zeros((), dtype=torch.float64, device=self.env.device)
        micro_batches = batch.split(self.batch.micro_batch_size)
        for i, micro in enumerate(micro_batches):
            loss = self._loss(micro)
            self.engine.backward(loss)  # DeepSpeed divides by the accumulation steps
            if i == len(micro_batches) - 1 and self._diag_due():
                self._log_grad_norms()  # the full gradients exist only between the last backward and step
            self.engine.step()  # a no-op except at the accumulation boundary
            total += loss.detach().double()
        return total / self.batch.grad_accum_steps

    def _diag_due(self) -> bool:
        interval = self.cfg.train.diag_interval
        return interval > 0 and (self.step + 1) % interval == 0

    def _log_grad_norms(self) -> None:
        norms = engine_grad_norms(self.engine)  # collective under ZeRO-3: every rank is here
        self.metrics.log(self.step + 1, norms, kind="grad_norm", jsonl="diagnostics/grad_norms.jsonl")

    def _loss(self, tokens: torch.Tensor) -> torch.Tensor:
        logits = self.engine(tokens[:, :-1])
        return F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())

    def _log_train(self, loss_sum: torch.Tensor, n_steps: int, elapsed: float, bar) -> None:
        dist.all_reduce(loss_sum)
        loss = loss_sum.item() / (n_steps * self.env.world_size)
        tokens_per_s = n_steps * self.tokens_per_step / max(elapsed, 1e-9)
        grad_norm = self.engine.get_global_grad_norm()
        grad_norm = float(grad_norm) if grad_norm is not None else None
        mfu = None
        if self.peak_flops:
            mfu = self.flops_per_token * tokens_per_s / (self.peak_flops * self.env.world_size)
        values = {"loss": loss, "lr": self.last_lr, "grad_norm": grad_norm,
                  "tokens_per_s": tokens_per_s, "mfu": mfu, "tokens_seen": self.tokens_seen}
        self._record("train", values)
        self._print(format_train_line(self.step, self.cfg.train.steps, values), bar)

    @torch.no_grad()
    def evaluate(self, bar=None) -> dict:
        """Mean token loss over the validation split (or its first train.eval_samples samples), all ranks."""
        self.engine.eval()
        start = time.perf_counter()
        batches = eval_batches(self.cfg.data.dir, self.seq_len, self.batch.micro_batch_size, self.env.rank,
                               self.env.world_size, self.cfg.train.eval_samples)
        sums = loss_sums(self.engine, batches, self.env.device)  # (summed loss, target tokens) on this rank
        dist.all_reduce(sums)
        self.engine.train()
        loss = (sums[0] / sums[1]).item()
        values = {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": int(sums[1].item()),
                  "seconds": time.perf_counter() - start}
        self._record("eval", values)
        self._print(f"eval at step {self.step}: loss {loss:.4f} | perplexity {values['perplexity']:.2f} "
                    f"({values['tokens']:,} tokens)", bar)
        return values

    def save(self) -> None:
        start = time.perf_counter()
        state = {
            "tokens_seen": self.tokens_seen,
            "loader": self.loader.state_dict(),
            "world_size": self.env.world_size,
            "zero_stage": self.cfg.zero.stage,
            "precision": self.precision,
            "batch": {"global_batch_size": self.batch.global_batch_size,
                      "micro_batch_size": self.batch.micro_batch_size,
                      "grad_accum_steps": self.batch.grad_accum_steps},
            "tokenizer_sha256": self.data_meta.tokenizer_sha256,
            "time": time.time(),
        }
        ref = save_checkpoint(self.engine, self.run_dir, self.cfg, self.step, state, self.env.rank)
        self.log(f"saved {ref.path} in {time.perf_counter() - start:.1f}s")

    # Reporting --------------------------------------------------------------------------------------------------

    def _record(self, kind: str, values: dict) -> None:
        self.history.append({"kind": kind, "step": self.step, **values})
        self.metrics.log(self.step, values, kind=kind)

    def _print(self, line: str, bar) -> None:
        if bar is not None:
            bar.write(line)
        else:
            self.log(line, flush=True)

    def _progress_bar(self):
        if not (self.env.is_main and self.cfg.train.progress_bar):
            return None
        from tqdm import tqdm

        return tqdm(total=self.cfg.train.steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)

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
        (self.run_dir / "deepspeed_config.json").write_text(json.dumps(self.ds_config, indent=2))
