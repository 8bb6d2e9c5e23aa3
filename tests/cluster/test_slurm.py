"""The project's own sbatch script (launch/slurm/pretrain.sbatch) on a real Slurm: Debian's slurmctld, slurmd and
munge started by the tests (tests/cluster/slurm_cluster.py), CPU overrides, real DeepSpeed ranks.

    python -m pytest -m cluster tests/cluster/test_slurm.py     # root; munge slurmctld slurmd slurm-client iproute2

Every run here trains the same tiny model for the same steps on 2 ranks, so every one of them must log exactly
the losses of one reference run started with torchrun on this host.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.slurm_cluster import SlurmCluster, missing_requirements
from conftest import REPO_ROOT, tiny_overrides
from train.helpers import child_env, logged_losses, torchrun

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

SBATCH = REPO_ROOT / "launch" / "slurm" / "pretrain.sbatch"
STEPS = 40
RUN = [f"train.steps={STEPS}", "zero.stage=2", "train.eval_interval=1000", "train.save_interval=1000",
       "train.dist_timeout_s=60"]


def _cluster(tmp_path_factory, layout: str):
    reason = missing_requirements(netns=layout == "netns")
    if reason:
        pytest.skip(reason)
    return SlurmCluster(tmp_path_factory.mktemp(f"slurm-{layout}"), layout=layout, cpus_per_node=2)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    with _cluster(tmp_path_factory, "single") as cluster:
        yield cluster


@pytest.fixture(scope="module")
def reference(tiny_dataset, tmp_path_factory):
    """Every step's loss of one uninterrupted 2-rank torchrun run of the same job."""
    out = tmp_path_factory.mktemp("reference")
    proc = torchrun(["launch/pretrain.py", *tiny_overrides(tiny_dataset, out, *RUN, "train.run_name=ref")], nproc=2)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return logged_losses(out / "ref")


def job_env(**extra) -> dict:
    """What the submitting shell passes on: the test's Python as MIXLN_PYTHON, no rank variables."""
    return dict(child_env(), MIXLN_PYTHON=sys.executable, **extra)


def submit_training(cluster: SlurmCluster, tiny_dataset, tmp_path: Path, *sbatch_args: str, extra=(), env=None):
    overrides = tiny_overrides(tiny_dataset, tmp_path, *RUN, "train.run_name=run", *extra)
    return cluster.submit(SBATCH, *sbatch_args, f"--output={tmp_path}/job-%j.log", env=env or job_env(),
                          cwd=tmp_path, script_args=overrides)


def wait_for_step(run_dir: Path, step: int, cluster: SlurmCluster, job: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    metrics = run_dir / "metrics.jsonl"
    while time.monotonic() < deadline:
        if metrics.exists() and any(json.loads(line).get("step", 0) >= step
                                    for line in metrics.read_text().splitlines() if line.strip()):
            return
        info = cluster.info(job)
        assert info is None or info.state in ("PENDING", "RUNNING", "CONFIGURING"), cluster.explain(job)
        time.sleep(0.2)
    raise TimeoutError(f"step {step} not reached\n{cluster.explain(job)}")


def assert_finished_like(reference: dict, run_dir: Path, info, cluster, job) -> None:
    assert info.state == "COMPLETED" and info.exit_code == 0, cluster.explain(job)
    assert (run_dir / "checkpoints" / f"step_{STEPS:07d}" / "trainer_state.json").is_file()
    assert logged_losses(run_dir) == reference, cluster.explain(job)  # bit for bit


def train_to_the_end(cluster, what: str, reference, tiny_dataset, tmp_path, *sbatch_args, env=None):
    """Submit the training job, wait for it, and require a finished run with the reference's every loss."""
    started = time.monotonic()
    job = submit_training(cluster, tiny_dataset, tmp_path, *sbatch_args, env=env)
    info = cluster.wait(job, timeout_s=600)
    print(f"\n{what}: {time.monotonic() - started:.1f} s")
    assert_finished_like(reference, tmp_path / "run", info, cluster, job)
    return job, info.log()


@pytest.fixture(scope="module")
def two_on_one_host(tmp_path_factory):
    with _cluster(tmp_path_factory, "ports") as cluster:
        yield cluster


def test_two_tasks_on_one_node_train_exactly_like_torchrun(single, reference, tiny_dataset, tmp_path):
    job, log = train_to_the_end(single, "2 tasks on 1 node", reference, tiny_dataset, tmp_path, "--ntasks-per-node=2")
    assert "1 nodes, 2 tasks, srun" in log and "run state: finished" in log, log
    assert json.loads((tmp_path / f"mixln-status-{job}.json").read_text())["state"] == "finished"


def test_two_nodes_on_one_host_train_exactly_like_torchrun(two_on_one_host, reference, tiny_dataset, tmp_path):
    _, log = train_to_the_end(two_on_one_host, "2 nodes on one host", reference, tiny_dataset, tmp_path,
                              "--nodes=2", "--ntasks-per-node=1")
    assert "on node[1-2] (2 nodes, 2 tasks, srun), rendezvous 127.0.0.1:" in log


def test_one_torchrun_per_node_trains_exactly_like_torchrun(two_on_one_host, reference, tiny_dataset, tmp_path):
    train_to_the_end(two_on_one_host, "2 nodes, torchrun per node", reference, tiny_dataset, tmp_path, "--nodes=2",
                     "--ntasks-per-node=1", env=job_env(MIXLN_LAUNCHER="torchrun", MIXLN_PROCS_PER_NODE="1"))


def test_a_preempted_job_checkpoints_requeues_and_resumes_exactly(single, reference, tiny_dataset, tmp_path):
    """Slurm's warning before the time limit (--signal=B:USR1@600) goes to the batch script, which stops the ranks;
    they checkpoint, the script requeues the job, and the requeued job resumes from that step to the end."""
    started = time.monotonic()
    job = submit_training(single, tiny_dataset, tmp_path, "--ntasks-per-node=2")
    wait_for_step(tmp_path / "run", 3, single, job)
    single.signal(job, "USR1", batch=True)
    info = single.wait(job, timeout_s=600)
    print(f"\npreempted, requeued and finished: {time.monotonic() - started:.1f} s")
    log = info.log()
    assert info.restarts == 1, single.explain(job)
    assert "SIGUSR1 from Slurm: the ranks stop" in log and "run state: preempted" in log and "requeueing job" in log, log
    stopped_at = int(log.split("stopped at step ")[1].split()[0])
    assert 3 <= stopped_at < STEPS, log
    assert f"step_{stopped_at:07d} at step {stopped_at}" in log, log  # "resumed from .../step_N at step N"
    assert_finished_like(reference, tmp_path / "run", info, single, job)


@pytest.fixture
def two_namespaces(tmp_path_factory):
    with _cluster(tmp_path_factory, "netns") as cluster:
        yield cluster


def test_two_nodes_in_their_own_network_namespaces_agree(two_namespaces, reference, tiny_dataset, tmp_path):
    _, log = train_to_the_end(two_namespaces, "2 nodes in 2 network namespaces", reference, tiny_dataset, tmp_path,
                              "--nodes=2", "--ntasks-per-node=1")
    assert "rendezvous 10.200.0.1:" in log


def test_losing_a_node_ends_the_other_within_the_timeout_naming_the_lost_rank(two_namespaces, tiny_dataset,
                                                                               tmp_path):
    cluster = two_namespaces
    job = submit_training(cluster, tiny_dataset, tmp_path, "--nodes=2", "--ntasks-per-node=1", "--no-requeue",
                          extra=["train.steps=100000"])
    wait_for_step(tmp_path / "run", 3, cluster, job)
    node2 = cluster.namespaces[1]
    pids = subprocess.run(["ip", "netns", "pids", node2], capture_output=True, text=True).stdout.split()
    killed = time.monotonic()
    for pid in pids:  # node2 dies: its slurmd and everything it started
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    log_file = tmp_path / f"job-{job}.log"
    while "error: lost rank" not in log_file.read_text(errors="replace"):
        assert time.monotonic() - killed < 60, f"rank 0 still running 60 s (the timeout) after node2 died\n" \
            + cluster.explain(job)
        time.sleep(0.2)
    noticed = time.monotonic() - killed
    info = cluster.wait(job, timeout_s=300)
    print(f"\nnode2 killed: rank 0 named it after {noticed:.1f} s; the job ended after "
          f"{time.monotonic() - killed:.1f} s ({info.state})")
    log = info.log()
    assert info.state != "COMPLETED", log
    assert "error: lost rank 1 (node2, 10.200.0.2): its process or node died" in log, log
    assert "Traceback" not in log, log  # one line, not a traceback from inside DeepSpeed
