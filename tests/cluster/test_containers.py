"""The CPU image, built for real from Debian's packages (docker/debian-base.sh, docker/Dockerfile.cpu) and run with
no network: the default job trains a few steps inside it and leaves its run, checkpoint included, in a host folder.

    python -m pytest -m cluster tests/cluster/test_containers.py    # root, docker.io and debootstrap; 143 s cold

The last test also runs a Slurm job whose ranks start inside the image (Charliecloud's ch-run under srun): it needs
munge slurmctld slurmd slurm-client charliecloud-runtime too.
"""

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from cluster.docker_engine import DOCKER, REPO, DockerEngine, missing_requirements

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(2400)]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    with DockerEngine(tmp_path_factory.mktemp("docker")) as engine:
        yield engine


@pytest.fixture(scope="module")
def cpu_image(engine):
    started = time.monotonic()
    base = engine.debian_base()
    built_base = time.monotonic()
    image = engine.build_cpu_image(base)
    print(f"\nbase image {engine.image_size(base) / 1e6:.0f} MB in {built_base - started:.0f} s; "
          f"CPU image {engine.image_size(image) / 1e9:.2f} GB in {time.monotonic() - built_base:.0f} s")
    return image


def test_the_cpu_image_trains_the_default_job_with_no_network(engine, cpu_image, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    runs.chmod(0o777)  # the image runs as uid 1000
    started = time.monotonic()
    engine.docker("run", "--rm", "--network", "none", "-v", f"{runs}:/workspace/runs",
                  "-e", "MIXLN_STATUS_FILE=/workspace/runs/status.json", cpu_image, "pretrain",
                  "train.steps=3", "train.eval_interval=3", "train.save_interval=3", timeout=900)
    print(f"\ndefault job, 3 steps in the container: {time.monotonic() - started:.0f} s")
    run = runs / "debug-mix0.25"
    assert (run / "checkpoints" / "step_0000003" / "trainer_state.json").is_file()
    steps = [json.loads(line).get("step") for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert 3 in steps
    assert json.loads((runs / "status.json").read_text())["state"] == "finished"


def test_the_entry_point_runs_any_command(engine, cpu_image):
    out = engine.docker("run", "--rm", "--network", "none", cpu_image, "python", "-c",
                        "import mixln_dist, deepspeed; print(mixln_dist.__file__)").stdout
    assert "/site-packages/mixln_dist/" in out  # installed as a wheel, not the checkout


def test_a_slurm_job_runs_its_ranks_inside_the_image(engine, cpu_image, tmp_path):
    """The image unpacked for Charliecloud (the unprivileged runtime Slurm sites use), one `ch-run` per srun task
    (launch/slurm/pretrain.sbatch with MIXLN_WRAP), 2 ranks; the run lands in a host folder mounted at the same
    path, where the batch script also finds the run's status."""
    from cluster.slurm_cluster import SlurmCluster
    from cluster.slurm_cluster import missing_requirements as slurm_missing
    from train.helpers import child_env

    reason = slurm_missing() or (None if shutil.which("ch-run") else "ch-run is missing (apt-get install "
                                                                      "--no-install-recommends charliecloud-runtime)")
    if reason:
        pytest.skip(reason)
    image = tmp_path / "image"
    image.mkdir()
    container = engine.docker("create", cpu_image).stdout.strip()
    exported = subprocess.Popen([DOCKER, "export", container], stdout=subprocess.PIPE, env=engine.env)
    subprocess.run(["tar", "-x", "-C", str(image)], stdin=exported.stdout, check=True, timeout=600)
    assert exported.wait(timeout=60) == 0
    engine.docker("rm", container)
    work = tmp_path / "work"
    work.mkdir()
    # The image's Python: this host has none at that path, so a task that trained ran inside the image.
    assert not Path("/opt/venv/bin/python").exists()
    wrap = f"ch-run --write --bind={work} --cd={work} --unset-env=VIRTUAL_ENV {image} --"
    env = dict(child_env(), USER="root", MIXLN_PYTHON="/opt/venv/bin/python", MIXLN_WRAP=wrap)
    with SlurmCluster(tmp_path / "slurm", layout="single", cpus_per_node=2) as cluster:
        started = time.monotonic()
        job = cluster.submit(REPO / "launch/slurm/pretrain.sbatch", "--ntasks-per-node=2",
                             f"--output={work}/job-%j.log", env=env, cwd=work,
                             script_args=["train.steps=3", "train.eval_interval=3", "train.save_interval=3",
                                          "train.progress_bar=false"])
        info = cluster.wait(job, timeout_s=900)
        print(f"\nSlurm job, 2 ranks in ch-run: {time.monotonic() - started:.0f} s")
        assert info.state == "COMPLETED" and info.exit_code == 0, cluster.explain(job)
    run = work / "runs" / "debug-mix0.25"
    assert sorted(p.name for p in (run / "checkpoints" / "step_0000003").glob("rank*.pt")) == ["rank0.pt", "rank1.pt"]
    assert json.loads((work / f"mixln-status-{job}.json").read_text())["state"] == "finished"
