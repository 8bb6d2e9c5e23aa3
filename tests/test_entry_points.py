"""Every entry point treats errors the same way: a user's error is one line, `error: <message>`, and exit code 2
(do not retry); anything else is a bug and keeps its traceback."""

import subprocess
import sys

import pytest

import mixln_dist.config
from conftest import REPO_ROOT
from mixln_dist.cli import (analyze, evaluate, export_hf, model, norm_study, plan, prepare_data, pretrain,
                            train_tokenizer)
from mixln_dist.errors import EXIT_USER_ERROR


def user_errors(tmp_path):
    missing = str(tmp_path / "missing")
    no_text = [f"data.dir={tmp_path / 'data'}", f"data.train=[{tmp_path}/nothing/*.txt]"]
    return [
        (pretrain, ["optim.lrr=1"], "unknown config key 'optim.lrr'"),
        (pretrain, ["--config-dir", missing], "does not exist"),
        (model, ["norm.alpah=0.1"], "did you mean 'norm.alpha'"),
        (model, ["model=llama_9b"], "unknown option 'llama_9b' for config group 'model'"),
        (prepare_data, no_text, "no input files match"),
        (train_tokenizer, no_text, "no input files match"),
        (evaluate, [missing, "--shards"], "does not exist"),
        (export_hf, [missing, str(tmp_path / "hf")], "no complete checkpoint"),
        (analyze, ["all", missing], "does not exist"),
        (plan, ["model=llama_9b"], "unknown option 'llama_9b' for config group 'model'"),
        (norm_study, ["--smoke", "--out", missing, "--only", "prex"], "--only prex: not in the plan"),
    ]


@pytest.mark.parametrize("case", range(10))
def test_a_users_error_is_one_line_and_exit_code_2(case, tmp_path, capsys):
    entry, argv, message = user_errors(tmp_path)[case]
    assert entry.main(argv) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


@pytest.mark.parametrize("entry, argv, target", [
    (pretrain, [], (mixln_dist.config, "compose")),
    (model, [], (mixln_dist.config, "compose")),
    (plan, [], (mixln_dist.config, "compose")),
    (prepare_data, [], (mixln_dist.config, "compose")),
    (train_tokenizer, [], (mixln_dist.config, "compose")),
    (evaluate, ["somewhere", "--shards"], (evaluate, "load_pretrained")),
    (analyze, ["all", "somewhere"], (analyze, "load_pretrained")),
    (export_hf, ["somewhere", "out"], (export_hf, "export_checkpoint")),
])
def test_an_internal_error_is_not_caught(entry, argv, target, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(*target, broken)
    with pytest.raises(RuntimeError, match="a bug"):
        entry.main(argv)


def test_an_internal_error_exits_1_with_its_traceback():
    code = ("import mixln_dist.config as c, mixln_dist.cli.model as m\n"
            "c.compose = lambda *a, **k: 1 / 0\n"
            "raise SystemExit(m.main([]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "ZeroDivisionError" in proc.stderr
    assert not proc.stderr.startswith("error:")
