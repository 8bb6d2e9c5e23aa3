"""The CPU image, built for real from Debian's packages (docker/debian-base.sh, docker/Dockerfile.cpu) and run with
no network: the default job trains a few steps inside it and leaves its run, checkpoint included, in a host folder.

    python -m pytest -m cluster tests/cluster/test_containers.py    # root, docker.io and debootstrap; 143 s cold
"""

import json
import time

import pytest

from cluster.docker_engine import DockerEngine, missing_requirements

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
