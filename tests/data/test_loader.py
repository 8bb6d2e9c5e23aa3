"""The loaders: the sample definition, a global order independent of world size, exact resume, even evaluation.

The synthetic stream holds token t at position t, so every sample names where it came from.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mixln_dist.data import DataError, TokenStream, TrainLoader, eval_batches

from .helpers import write_dataset

L, G = 16, 8  # seq_len, global batch size


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """1,000 train tokens (62 samples: 7 global batches per epoch, 6 samples left out) in shards of 333."""
    return write_dataset(tmp_path_factory.mktemp("stream"), np.arange(1_000, dtype="<u4"),
                         np.arange(500, dtype="<u4"), shard_tokens=333)


def global_batches(data_dir, world: int, steps: int, state=None):
    """The global batches of `steps` steps: every rank's batch, concatenated in rank order."""
    loaders = [TrainLoader(data_dir, L, G, rank, world, seed=5) for rank in range(world)]
    if state:
        for loader in loaders:
            loader.load_state_dict(state)
    batches = [torch.cat([loader.next_batch() for loader in loaders]) for _ in range(steps)]
    return batches, loaders[0].state_dict()


def test_sample_i_is_a_slice_of_the_stream_even_across_shards(data_dir):
    stream = TokenStream(data_dir, "train")
    assert stream.num_samples(L) == (1_000 - 1) // L == 62
    rows = stream.samples(range(62), L)
    assert np.array_equal(rows, np.arange(62)[:, None] * L + np.arange(L + 1))  # sample 20 spans shards 0 and 1
    assert rows.dtype == np.int64


def test_global_batches_do_not_depend_on_the_world_size(data_dir):
    reference, _ = global_batches(data_dir, 1, 18)  # two and a half epochs
    for world in (2, 4):
        batches, _ = global_batches(data_dir, world, 18)
        assert all(torch.equal(a, b) for a, b in zip(reference, batches)), world
    assert reference[0].shape == (G, L + 1) and reference[0].dtype == torch.int64


def test_each_epoch_is_a_fresh_permutation_and_rolls_over(data_dir):
    loader = TrainLoader(data_dir, L, G, 0, 1, seed=5)
    assert loader.samples_per_epoch == 56
    epochs = []
    for _ in range(3):
        starts = torch.cat([loader.next_batch()[:, 0] for _ in range(7)]) // L
        epochs.append(starts.tolist())
        assert len(set(epochs[-1])) == 56 and set(epochs[-1]) <= set(range(62))
    assert loader.epoch == 2 and epochs[0] != epochs[1] != epochs[2]
    other_seed = TrainLoader(data_dir, L, G, 0, 1, seed=6)
    assert (torch.cat([other_seed.next_batch()[:, 0] for _ in range(7)]) // L).tolist() != epochs[0]


@pytest.mark.parametrize("stop", [3, 7, 10])  # mid-epoch, at the epoch's end, in the second epoch
def test_resume_continues_exactly(data_dir, stop):
    reference, _ = global_batches(data_dir, 1, 16)
    _, state = global_batches(data_dir, 1, stop)
    resumed, _ = global_batches(data_dir, 1, 16 - stop, state=json.loads(json.dumps(state)))
    assert all(torch.equal(a, b) for a, b in zip(reference[stop:], resumed))


@pytest.mark.parametrize("saved_on, resumed_on", [(2, 4), (4, 1), (1, 2)])
def test_resume_on_another_world_size_continues_the_global_order(data_dir, saved_on, resumed_on):
    reference, _ = global_batches(data_dir, 1, 12)
    _, state = global_batches(data_dir, saved_on, 5)
    resumed, _ = global_batches(data_dir, resumed_on, 7, state=state)
    assert all(torch.equal(a, b) for a, b in zip(reference[5:], resumed))


def test_state_dict_is_tiny(data_dir):
    loader = TrainLoader(data_dir, L, G, 0, 1, seed=5)
    loader.next_batch()
    state = loader.state_dict()
    assert state == {"epoch": 0, "consumed": 8, "seed": 5, "num_samples": 62, "seq_len": L}
    assert len(json.dumps(state)) < 100


def test_loader_errors_name_the_fix(data_dir):
    with pytest.raises(DataError, match="does not split evenly over 3 data-parallel ranks"):
        TrainLoader(data_dir, L, G, 0, 3, seed=5)
    with pytest.raises(DataError, match="has 62 samples .* fewer than one global batch of 64"):
        TrainLoader(data_dir, L, 64, 0, 1, seed=5)
    loader = TrainLoader(data_dir, L, G, 0, 1, seed=5)
    with pytest.raises(DataError, match="seed=4 but this loader has 5; set data.seed=4"):
        loader.load_state_dict({"epoch": 0, "consumed": 8, "seed": 4, "num_samples": 62, "seq_len": L})
    with pytest.raises(DataError, match="num_samples=70 .* the data changed"):
        loader.load_state_dict({"epoch": 0, "consumed": 8, "seed": 5, "num_samples": 70, "seq_len": L})


@pytest.mark.parametrize("max_samples", [0, 7])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_eval_batches_cover_each_sample_once_on_any_world_size(data_dir, world, max_samples):
    total = max_samples or (500 - 1) // L
    per_rank = [list(eval_batches(data_dir, L, 4, rank, world, max_samples)) for rank in range(world)]
    assert len({len(batches) for batches in per_rank}) == 1  # collectives line up
    rows = torch.cat([tokens[valid] for batches in per_rank for tokens, valid in batches])
    assert torch.equal(rows, torch.arange(total)[:, None] * L + torch.arange(L + 1))
    for batches in per_rank:
        for tokens, valid in batches:
            assert tokens.shape == (4, L + 1) and valid.dtype == torch.bool


def test_ram_does_not_grow_with_the_corpus(tmp_path):
    """A 1 GB dataset (a sparse file): the loader maps it; only the pages of the samples read come in."""
    meta_dir = write_dataset(tmp_path, np.arange(10, dtype="<u2"), np.arange(10, dtype="<u2"))
    meta = json.loads((meta_dir / "meta.json").read_text())
    tokens = 500_000_000
    with open(tmp_path / "train-00000.bin", "r+b") as f:
        f.truncate(2 * tokens)
    meta["splits"]["train"]["num_tokens"] = meta["splits"]["train"]["shards"][0]["num_tokens"] = tokens
    (meta_dir / "meta.json").write_text(json.dumps(meta))

    before = _rss_kib()
    loader = TrainLoader(meta_dir, 256, 64, 0, 1, seed=0)
    for _ in range(50):
        loader.next_batch()
    after = _rss_kib()
    assert loader.num_samples == 1_953_124
    assert after["RssAnon"] - before["RssAnon"] < 32 << 10  # the permutation (7.8 MB) and batches
    assert after["RssFile"] - before["RssFile"] < 64 << 10  # 3,200 samples touch about 2 pages each


def _rss_kib() -> dict:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {k: int(status[k].split()[0]) for k in ("RssAnon", "RssFile")}
