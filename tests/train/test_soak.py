"""The soak test (slow, about 2-3 minutes on 2 quiet cores): runs killed at random moments, with SIGKILL (of the
launcher or of a rank) or SIGTERM, and restarted each time until they finish, end with every step's loss equal to
an uninterrupted run's. With 1 rank (a plain python start) and with 2 (torchrun).

    python -m pytest -m slow tests/train/test_soak.py
"""

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from conftest import tiny_overrides

from .test_preemption import finish, logged, start, status, wait_for_step
from .helpers import free_port

pytestmark = pytest.mark.slow

STEPS = 80
RUN = (f"train.steps={STEPS}", "train.save_interval=5", "train.eval_interval=1000", "train.log_interval=1")
FAULTS = 12  # per world size


def command(nproc, overrides):
    if nproc == 1:
        return [sys.executable, "launch/pretrain.py", *overrides]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
            "127.0.0.1", "--master_port", free_port(), "launch/pretrain.py", *overrides]


def ranks_of(proc) -> list:
    out = subprocess.run(["pgrep", "-f", "-g", str(os.getpgid(proc.pid)), "launch/pretrain.py"],
                         capture_output=True, text=True).stdout.split()
    return [int(p) for p in out if int(p) != proc.pid]


@pytest.mark.parametrize("nproc", [1, 2])
def test_random_kills_and_restarts_end_where_an_uninterrupted_run_does(nproc, tiny_dataset, tmp_path):
    reference = tiny_overrides(tiny_dataset, tmp_path, *RUN, "train.run_name=reference")
    finish(command(nproc, reference), tmp_path, "reference")
    rng = random.Random(nproc)
    soaked = tiny_overrides(tiny_dataset, tmp_path, *RUN, "train.run_name=soaked")
    faults = []
    while len(faults) < FAULTS:
        proc = start(command(nproc, soaked), tmp_path, "soaked")
        done = max(logged(tmp_path / "soaked") or {0: 0})
        try:
            wait_for_step(tmp_path / "soaked", min(done + rng.randint(1, 8), STEPS - 1), proc)
        except AssertionError:  # it finished before the fault
            break
        kind = rng.choice(["SIGKILL launcher", "SIGKILL rank", "SIGTERM launcher"])
        victims = ranks_of(proc) if kind == "SIGKILL rank" else [proc.pid]
        os.kill(rng.choice(victims or [proc.pid]), signal.SIGKILL if kind.startswith("SIGKILL") else signal.SIGTERM)
        faults.append(kind)
        try:
            proc.wait(timeout=120)
        finally:
            try:
                os.killpg(os.getpgid(proc.pid), signal.SIGKILL)  # whatever a killed launcher left behind
            except ProcessLookupError:
                pass
        time.sleep(0.5)
    finish(command(nproc, soaked), tmp_path, "soaked")
    assert status(tmp_path, "soaked")["state"] == "finished"
    print(f"{nproc} rank(s): {len(faults)} faults: " + ", ".join(f"{faults.count(k)} x {k}" for k in sorted(set(faults))))
    assert logged(tmp_path / "soaked") == logged(tmp_path / "reference")
