"""Launching training jobs for tests: real DeepSpeed, real gloo process groups, real subprocesses."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Optional

from conftest import REPO_ROOT

WORKER = Path(__file__).with_name("worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(threads: Optional[str] = "1") -> dict:
    """A clean environment for a launched job: no rank variables of this process; `threads` None lets the job
    choose its own thread count, as a user's run would."""
    env = dict(os.environ, DS_ACCELERATOR="cpu", PYTHONUNBUFFERED="1")
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "LOCAL_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "OMP_NUM_THREADS"):
        env.pop(key, None)
    if threads:
        env["OMP_NUM_THREADS"] = threads
    return env


def torchrun(script_and_args, nproc: int, timeout: int = 600, cwd=REPO_ROOT) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *map(str, script_and_args)]
    return subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=timeout, cwd=cwd)


def run_jobs(jobs, out_dir: Path, nproc: int = 2, timeout: int = 600, allow_errors: bool = False) -> dict:
    """Run jobs (see worker.py) in one process group of nproc ranks; return {name: [result of each rank]}.
    A job that raised fails the test unless allow_errors (then its result holds "error")."""
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = out_dir / "jobs.json"
    spec.write_text(json.dumps(jobs))
    proc = torchrun([WORKER, spec, out_dir], nproc=nproc, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    results = {}
    for job in jobs:
        results[job["name"]] = [json.loads((out_dir / f"{job['name']}.rank{r}.json").read_text()) for r in range(nproc)]
        for r, res in enumerate(results[job["name"]]):
            assert allow_errors or "error" not in res, f"{job['name']} rank {r}: {res.get('traceback', res['error'])}"
    return results


def losses(result) -> list:
    return [h["loss"] for h in result["train"]]


def logged_losses(run_dir: Path) -> dict:
    """{step: loss} of a run's train records in metrics.jsonl (a resumed run logs each step once, after its
    checkpoint)."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {m["step"]: m["loss"] for m in lines if m["kind"] == "train"}
