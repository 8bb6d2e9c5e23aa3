"""Test-wide environment: offline, CPU DeepSpeed, bounded waits. Set before anything imports deepspeed."""

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The tests' models are tiny: one thread is faster than two (on shared cores a second thread makes every op
# wait for a time slice: 0.6 ms against 420 ms per forward measured under load), and the environment variable
# keeps the trainer's own thread setting (mixln_dist.train.distributed) from raising it again.
os.environ["OMP_NUM_THREADS"] = "1"
import torch  # noqa: E402

torch.set_num_threads(1)

from mixln_dist.paths import package_file  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_CORPUS = package_file("corpora/sample")  # the bundled sample, inside the package
sys.path.insert(0, str(Path(__file__).resolve().parent))


TINY_VOCAB = 512


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """The bundled sample corpus prepared with a 512-piece tokenizer: small and quick to train on."""
    from mixln_dist.config import compose
    from mixln_dist.data import prepare_dataset

    data_dir = tmp_path_factory.mktemp("tiny_dataset")
    cfg = compose([f"data.dir={data_dir}", f"data.tokenizer.vocab_size={TINY_VOCAB}"])
    prepare_dataset(cfg.data)
    return data_dir


def tiny_overrides(data_dir: Path, out_dir: Path, *extra: str) -> list:
    """A debug model small enough for many short distributed runs on 2 CPU cores."""
    return [
        f"data.dir={data_dir}", f"data.tokenizer.vocab_size={TINY_VOCAB}", "data.auto_prepare=false", "data.seq_len=64",
        f"model.vocab_size={TINY_VOCAB}", "model.dim=64", "model.n_heads=4", "model.ffn_dim=176",
        "train.micro_batch_size=4", "train.log_interval=1", "train.eval_samples=32", "train.progress_bar=false",
        f"train.out_dir={out_dir}", "optim.warmup_steps=2", *extra,
    ]
