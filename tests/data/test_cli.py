"""The two documented commands prepare the bundled sample from a clean clone, with no network and no user data."""

import os
import subprocess
import sys

from conftest import REPO_ROOT
from mixln_dist.data import DatasetMeta


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, f"launch/{script}", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_the_documented_commands_prepare_the_bundled_sample(tmp_path):
    out = f"data.dir={tmp_path}"
    tokenizer = run("train_tokenizer.py", out)
    assert tokenizer.returncode == 0, tokenizer.stderr
    assert "8192 pieces, pad 0, bos 1, eos 2, unk 3" in tokenizer.stdout
    prepared = run("prepare_data.py", out)
    assert prepared.returncode == 0, prepared.stderr
    meta = DatasetMeta.load(tmp_path)
    assert "1817_persuasion" in meta.splits["validation"].source
    assert meta.splits["train"].num_documents > 5_000 and meta.vocab_size == 8192

    again = run("prepare_data.py", out, "--verify")
    assert again.returncode == 0 and "is up to date" in again.stdout and "every shard matches" in again.stdout
    changed = run("prepare_data.py", out, "data.tokenizer.vocab_size=4096")
    assert changed.returncode == 2 and "vocab_size 8192 -> 4096" in changed.stderr and "--force" in changed.stderr
    typo = run("prepare_data.py", out, "--froce")
    assert typo.returncode == 2 and "unknown option --froce; options: --force, --verify" in typo.stderr
