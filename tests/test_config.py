"""The configuration behaves the way Hydra users expect, and fails early and clearly when it cannot run."""

import subprocess
import sys
import time

import pytest

from mixln_dist.config import Config, ConfigError, compose, load_config, save_config, to_yaml
from mixln_dist.model import FLAVORS

from conftest import REPO_ROOT


def test_defaults_compose_into_the_default_job():
    cfg = compose()
    assert isinstance(cfg, Config)
    assert cfg.model == FLAVORS["debug"]
    assert (cfg.norm.scheme, cfg.norm.alpha, cfg.norm.post_layers) == ("mix", 0.25, None)
    assert cfg.data.name == "sample" and cfg.zero.stage == 2
    assert cfg.train.run_name == "debug-mix0.25"  # interpolations are resolved


def test_default_run_names_keep_norm_placements_apart():
    """A sweep over alpha (or the post-layer count, or schemes) starts separate runs instead of refusing to resume
    one another's checkpoints."""
    sweeps = [(), ("norm.alpha=0.125",), ("norm.alpha=0.5",), ("norm.alpha=0",), ("norm.post_layers=1",),
              ("norm=pre",), ("norm=pre", "norm.scaled_init=true"), ("norm=post",),
              ("norm.layer_kinds=[post,pre,post,pre]",), ("norm.layer_kinds=[pre,post,pre,post]",),
              ("norm.gpas=true",), ("norm=reordered",), ("norm=reordered", "norm.qk_norm=true"), ("norm=hybrid",),
              ("norm=hybrid", "norm.hybrid_star=true"), ("norm=peri",), ("norm=peri", "norm.embed_norm=false"),
              ("norm=sandwich",), ("norm=pre", "norm.embed_norm=true")]
    names = [compose(list(o)).train.run_name for o in sweeps]
    assert len(set(names)) == len(names), names
    assert names[:5] == ["debug-mix0.25", "debug-mix0.125", "debug-mix0.5", "debug-mix0", "debug-mix-post1"]
    assert names[5:8] == ["debug-pre", "debug-pre-scaled", "debug-post"]
    assert names[10:] == ["debug-mix0.25-gpas", "debug-reordered", "debug-reordered-qk", "debug-hybrid",
                          "debug-hybrid-star", "debug-peri", "debug-peri-noembnorm", "debug-sandwich",
                          "debug-pre-embnorm"]
    assert compose(["train.run_name=mine"]).train.run_name == "mine"


def test_group_and_dotted_overrides_apply():
    cfg = compose(["model=llama_1b", "norm=mix", "norm.alpha=0.25", "optim.lr=5e-4", "zero=stage3",
                   "optim=paper", "train.steps=7", "optim.betas=[0.8,0.9]"])
    assert cfg.model.name == "llama_1b" and cfg.model.dim == 2048
    assert cfg.norm.alpha == 0.25 and cfg.zero.stage == 3
    assert cfg.optim.lr == 5e-4 and cfg.optim.weight_decay == 0.0  # lr override wins over the group's value
    assert cfg.optim.betas == [0.8, 0.9] and cfg.train.steps == 7
    assert cfg.train.run_name == "llama_1b-mix0.25"


def test_group_switch_replaces_the_whole_group():
    cfg = compose(["norm=pre"])
    assert cfg.norm.scheme == "pre"
    assert compose(["zero=stage3_offload"]).zero.offload_param == "cpu"


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["optim.lrr=1e-3"], r"unknown config key 'optim.lrr' \(did you mean 'optim.lr'"),
        (["norm.alhpa=0.5"], r"'norm.alhpa' \(did you mean 'norm.alpha'"),
        (["modle.dim=3"], r"'modle.dim' \(did you mean 'model.dim'"),
        (["data.tokenizer.vocab=3"], r"did you mean 'data.tokenizer.vocab_size'"),
        (["norm=mixx"], r"unknown option 'mixx' for config group 'norm' \(did you mean 'mix'"),
        (["model=llama_1x"], r"unknown option 'llama_1x' for config group 'model' \(did you mean 'llama_1b'"),
        (["optim.lr=fast"], r"optim.lr: Value 'fast'.*Float"),
        (["train.steps=1.5"], r"train.steps"),
        (["+train.foo=1"], r"fixed schema"),
        (["norm.scheme=prre"], r"unknown norm.scheme 'prre' \(did you mean 'pre'"),
        (["norm.alpha=1.5"], r"norm.alpha=1.5 is outside \[0, 1\]"),
        (["norm.post_layers=9"], r"norm.post_layers=9 is outside \[0, n_layers=4\]"),
        (["zero.stage=4"], r"zero.stage=4"),
        (["zero.offload_param=cpu"], r"needs zero.stage=3"),
        (["train.precision=fp8"], r"train.precision='fp8' is not one of auto, bf16, fp32"),
        (["data.seq_len=1000"], r"data.seq_len=1000 exceeds model.max_seq_len=256"),
        (["model.n_heads=5"], r"model.dim=128 is not divisible by model.n_heads=5"),
    ],
)
def test_bad_overrides_fail_naming_the_key(overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        compose(overrides)


def test_yaml_round_trip_is_identical(tmp_path):
    cfg = compose(["model=llama_7b", "norm.post_layers=2", "optim=paper", "zero=stage3_offload",
                   "train.global_batch_size=512", "norm.layer_kinds=[post,post,pre,pre]", "model.n_layers=4"])
    save_config(cfg, tmp_path / "config.yaml")
    back = load_config(tmp_path / "config.yaml")
    assert back == cfg
    assert to_yaml(back) == to_yaml(cfg)


def test_loading_a_yaml_with_an_unknown_key_fails(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(to_yaml(compose()).replace("  lr:", "  lrr:"))
    with pytest.raises(ConfigError, match="optim.lrr"):
        load_config(path)


def test_model_summary_cli_for_7b_without_allocating():
    start = time.time()
    out = subprocess.run(
        [sys.executable, "-m", "mixln_dist.cli.model", "model=llama_7b", "norm=mix", "norm.post_layers=2"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=60, check=True,
    ).stdout
    assert time.time() - start < 30
    assert "6,738,415,616 total (6.74B)" in out
    assert "layers 0-1     Post-LN (2 layers)" in out
    assert "layers 2-31    Pre-LN (30 layers)" in out


def test_model_summary_cli_reports_config_errors():
    proc = subprocess.run([sys.executable, "-m", "mixln_dist.cli.model", "norm.alpah=0.1"],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert proc.returncode == 2
    assert "did you mean 'norm.alpha'" in proc.stderr


def test_a_users_config_folder_is_searched_first(tmp_path, monkeypatch):
    """Hydra users expect their own folder to add options and replace packaged ones (mixln_dist.paths)."""
    from mixln_dist.config import available_options

    (tmp_path / "optim").mkdir()
    (tmp_path / "optim" / "adamw.yaml").write_text("lr: 0.123\n")  # replaces the packaged default optimizer
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "wide.yaml").write_text("name: wide\ndim: 256\nn_layers: 2\nn_heads: 4\nffn_dim: 512\n")
    cfg = compose(["model=wide"], config_dir=tmp_path)
    assert cfg.optim.lr == 0.123 and cfg.model.dim == 256 and cfg.train.run_name == "wide-mix0.25"
    assert compose().optim.lr == 1e-3  # without the folder, the packaged options
    monkeypatch.setenv("MIXLN_CONFIG_DIR", str(tmp_path))
    assert compose(["model=wide"]).model.dim == 256
    assert "wide" in available_options("model") and "llama_7b" in available_options("model")
    with pytest.raises(ConfigError, match="does not exist"):
        compose(config_dir=tmp_path / "nowhere")


def test_default_paths_are_under_mixln_home_and_the_package(tmp_path, monkeypatch):
    from mixln_dist.paths import package_file

    monkeypatch.setenv("MIXLN_HOME", str(tmp_path))
    cfg = compose()
    assert cfg.train.out_dir == str(tmp_path / "runs")
    assert cfg.data.dir == str(tmp_path / "data" / "prepared" / "sample")
    assert cfg.data.tokenizer.path == str(tmp_path / "data" / "prepared" / "sample" / "tokenizer.model")
    assert cfg.data.train == [f"{package_file('corpora/sample/train')}/*.txt.gz"]
    assert compose(["data.dir=relative/dir"]).data.dir == "relative/dir"  # a user's own path keeps its meaning


def test_an_experiment_recipe_sets_groups_and_keys_and_the_command_line_still_wins(tmp_path):
    """`experiment=NAME` is one override for a whole recipe; it comes after the defaults, the overrides after it."""
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "deep.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /norm: pre\nmodel:\n  n_layers: 8\noptim:\n  lr: 0.005\n")
    cfg = compose(["experiment=deep", "optim.lr=0.002"], config_dir=tmp_path)
    assert (cfg.norm.scheme, cfg.model.n_layers, cfg.optim.lr) == ("pre", 8, 0.002)
    assert compose(config_dir=tmp_path).model.n_layers == 4  # no recipe unless one is asked for
    with pytest.raises(ConfigError, match="unknown option 'dep' for config group 'experiment'.*did you mean 'deep'"):
        compose(["experiment=dep"], config_dir=tmp_path)
