"""The divergence guard: what the trainer does when a step's numbers stop making sense.

- A step whose loss or gradients are not finite is never applied. Under ZeRO 1-3 DeepSpeed already discards
  such an update (its overflow check sees a non-finite gradient norm, fp32 and bf16 alike); under ZeRO-0, which
  has no such check, the trainer looks at the reduced gradients itself and drops them. After
  `train.guard.max_bad_steps` skipped updates in a row the run stops with DivergenceError, keeping its
  checkpoints: none holds bad weights, because the trainer checks the weights before every save.
- A loss spike (`train.guard.spike_action`): the step's loss, averaged over the ranks, against the mean and
  spread of the last `spike_window` applied steps. `skip` discards that update; `rollback` also returns to the
  newest checkpoint and skips the data between it and the spike, optionally lowering the learning rate.

A skipped update still counts as a step: its batch is consumed and the schedule moves on, so a resumed run and
an uninterrupted one agree step for step. The guard is a stateful part of every checkpoint.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Callable, Optional

from ..errors import DivergenceError

STD_FLOOR = 0.01  # of the mean loss: a window of near-identical losses must not make every wobble a spike


class DivergenceGuard:
    def __init__(self, cfg, log: Callable[[str], None] = print):
        self.cfg, self.log = cfg, log
        self.bad_in_a_row = 0  # skipped updates since the last applied one
        self.skipped = 0  # updates not applied over the whole run, for whatever reason
        self.spikes = 0
        self.rollbacks = 0
        self.lr_scale = 1.0  # lowered by rollbacks (spike_lr_factor)
        self.window: deque = deque(maxlen=cfg.spike_window)  # losses of the latest applied steps

    @property
    def watches_loss(self) -> bool:
        return self.cfg.spike_action != "off"

    def spike(self, loss: float) -> Optional[str]:
        """Why `loss` (this step's, all ranks) is a spike, or None. A non-finite loss is not a spike: it is never
        applied anyway. The window must be full first, so early training's fast descent is not judged."""
        if not math.isfinite(loss) or len(self.window) < self.window.maxlen:
            return None
        mean = sum(self.window) / len(self.window)
        std = math.sqrt(sum((x - mean) ** 2 for x in self.window) / (len(self.window) - 1))
        z = (loss - mean) / max(std, STD_FLOOR * abs(mean), 1e-12)
        if z <= self.cfg.spike_zscore:
            return None
        self.spikes += 1
        return (f"loss {loss:.4f} is {z:.1f} standard deviations above the mean {mean:.4f} of the last "
                f"{len(self.window)} steps (train.guard.spike_zscore={self.cfg.spike_zscore})")

    def applied(self, loss: Optional[float]) -> None:
        self.bad_in_a_row = 0
        if loss is not None and math.isfinite(loss):
            self.window.append(loss)

    def skipped_update(self, step: int, why: str, newest_checkpoint: Optional[int]) -> None:
        """Count an update that was not applied; stop the run after max_bad_steps of them in a row."""
        self.skipped += 1
        self.bad_in_a_row += 1
        limit = self.cfg.max_bad_steps
        self.log(f"step {step}: update not applied: {why} ({self.bad_in_a_row} in a row"
                 + (f"; the run stops at {limit})" if limit else ")"))
        if limit and self.bad_in_a_row >= limit:
            kept = f"its newest checkpoint, step {newest_checkpoint}, is kept" if newest_checkpoint else \
                "it has no checkpoint yet"
            raise DivergenceError(
                f"the run diverged: {self.bad_in_a_row} updates in a row were not applied (steps "
                f"{step - self.bad_in_a_row + 1}-{step}; the last because {why}). It stopped without saving; {kept}. "
                "Resume with a lower optim.lr or a longer optim.warmup_steps, or with "
                "train.guard.spike_action=rollback"
            )

    def rolled_back(self) -> None:
        """After a rollback: count it, lower the learning rate, stop after max_rollbacks."""
        self.rollbacks += 1
        self.lr_scale *= self.cfg.spike_lr_factor
        if self.rollbacks > self.cfg.max_rollbacks:
            raise DivergenceError(
                f"the run rolled back {self.rollbacks - 1} times (train.guard.max_rollbacks) and spiked again; its "
                "checkpoints are kept. Resume with a lower optim.lr or a lower train.guard.spike_lr_factor"
            )

    def state_dict(self) -> dict:
        return {"bad_in_a_row": self.bad_in_a_row, "skipped": self.skipped, "spikes": self.spikes,
                "rollbacks": self.rollbacks, "lr_scale": self.lr_scale, "window": list(self.window)}

    def load_state_dict(self, state: dict) -> None:
        self.bad_in_a_row, self.skipped = int(state["bad_in_a_row"]), int(state["skipped"])
        self.spikes, self.rollbacks = int(state["spikes"]), int(state["rollbacks"])
        self.lr_scale = float(state["lr_scale"])
        self.window = deque((float(x) for x in state["window"]), maxlen=self.cfg.spike_window)
