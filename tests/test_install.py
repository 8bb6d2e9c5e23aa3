"""An installed copy (a wheel, not the checkout) runs by itself: from a folder outside the checkout it composes the
packaged configs, finds the bundled sample inside the package, and writes runs and data where the user is."""

import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The project built as a wheel and installed, non-editable, into a folder of its own."""
    root = tmp_path_factory.mktemp("installed")
    wheels, site = root / "wheels", root / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(REPO_ROOT)],
                   check=True, timeout=300, capture_output=True)
    wheel = next(wheels.glob("mixln_dist-*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, timeout=300,
                   capture_output=True)
    env = dict(os.environ, PYTHONPATH=str(site), OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "MIXLN_HOME", "MIXLN_CONFIG_DIR"):
        env.pop(key, None)
    return site, env


def test_the_installed_package_trains_from_a_folder_outside_the_checkout(installed, tmp_path):
    site, env = installed
    work = tmp_path / "work"
    work.mkdir()
    where = subprocess.run([sys.executable, "-c", "import mixln_dist; print(mixln_dist.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(site)), f"imported the checkout, not the installed copy: {where}"
    assert not (site / "mixln_dist" / "configs").is_symlink() and (site / "mixln_dist/configs/config.yaml").is_file()

    proc = subprocess.run([str(site / "bin" / "mixln-pretrain"), "train.steps=3", "train.log_interval=1",
                           "train.eval_samples=16", "train.progress_bar=false"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = work / "runs" / "debug-mix0.25"
    assert (run / "checkpoints" / "step_0000003" / "trainer_state.json").is_file()
    assert (work / "data" / "prepared" / "sample" / "meta.json").is_file()
    assert f"{site}/mixln_dist/corpora/sample/train" in (run / "config.yaml").read_text()

    # MIXLN_HOME moves where runs and prepared data go; a user's config folder adds options.
    home, mine = tmp_path / "home", tmp_path / "my_configs"
    (mine / "model").mkdir(parents=True)
    (mine / "model" / "tiny.yaml").write_text("name: tiny\ndim: 64\nn_layers: 2\nn_heads: 2\nffn_dim: 128\n")
    proc = subprocess.run([str(site / "bin" / "mixln-model"), "--config-dir", str(mine), "model=tiny"], cwd=work,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "model tiny: dim 64, 2 layers" in proc.stdout, proc.stderr
    proc = subprocess.run([str(site / "bin" / "mixln-prepare-data")], cwd=work, env={**env, "MIXLN_HOME": str(home)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (home / "data" / "prepared" / "sample" / "meta.json").is_file()
