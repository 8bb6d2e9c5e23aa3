"""Bad input, generated: every invalid override, batch arithmetic and dataset description raises one error of the
project's family naming what is wrong, at composition or at the data check, before any expensive work; every
valid one is accepted as given. The table of messages in docs/reliability.md is checked against the real ones."""

import json
import math
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import REPO_ROOT, TINY_VOCAB
from mixln_dist.config import ConfigError, compose
from mixln_dist.config.checks import NON_NEGATIVE, POSITIVE, UNIT_INTERVAL, get
from mixln_dist.errors import MixLNError

MODEL_SIZES = ("model.dim", "model.n_layers", "model.n_heads", "model.ffn_dim", "model.vocab_size",
               "model.max_seq_len")
NUMERIC = tuple(sorted({*POSITIVE, *NON_NEGATIVE, *UNIT_INTERVAL, *MODEL_SIZES, "norm.alpha",
                        "data.val_fraction", "optim.min_lr_ratio"}))
values = st.one_of(
    st.integers(-10**12, 10**12),
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.sampled_from(["abc", "''", "[]", "[1,2]", "null", "true", "1e400", "-0.0", "0x10"]),
)


def in_range(key: str, value) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        return False
    if key in UNIT_INTERVAL or key in ("norm.alpha", "optim.min_lr_ratio"):
        return 0 <= value <= 1
    if key == "data.val_fraction":
        return 0 <= value < 1
    return value >= 0 if key in NON_NEGATIVE else value > 0


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(NUMERIC), value=values)
def test_any_value_of_a_number_is_accepted_or_refused_naming_the_key(key, value):
    text = repr(value) if isinstance(value, float) else str(value)
    try:
        cfg = compose([f"{key}={text}"])
    except ConfigError as e:
        assert key in str(e) or key.split(".")[-1] in str(e), (key, text, str(e))
        return
    got = get(cfg, key)
    # Accepted: the value was a number in its range (or one the cross-field checks allow with the defaults).
    assert in_range(key, got), (key, text, got)


identifiers = st.from_regex(r"[a-z_][a-z0-9_]{0,12}", fullmatch=True)


@settings(max_examples=60, deadline=None)
@given(group=st.sampled_from(["model", "norm", "data", "optim", "zero", "train", "train.guard", "data.tokenizer"]),
       name=identifiers)
def test_an_unknown_key_is_refused_with_the_valid_ones(group, name):
    from mixln_dist.config import schema_keys

    key = f"{group}.{name}"
    if key in schema_keys():
        return
    with pytest.raises(ConfigError, match=rf"unknown config key '{re.escape(key)}'"):
        compose([f"{key}=1"])


@settings(max_examples=300, deadline=None)
@given(micro=st.integers(1, 64), accum=st.one_of(st.none(), st.integers(1, 32)),
       global_batch=st.one_of(st.none(), st.integers(1, 8192)), world=st.integers(1, 128))
def test_batch_arithmetic_is_consistent_or_refused_naming_the_keys(micro, accum, global_batch, world):
    from mixln_dist.train.ds_config import plan_batches

    try:
        plan = plan_batches(micro, accum, global_batch, world)
    except ConfigError as e:
        assert "train.global_batch_size" in str(e) and "train.micro_batch_size" in str(e)
        assert global_batch is not None  # only an explicit global batch can be impossible
        return
    assert plan.global_batch_size == plan.micro_batch_size * plan.grad_accum_steps * world
    assert global_batch in (None, plan.global_batch_size) and accum in (None, plan.grad_accum_steps)


def _paths(node, prefix=()):
    """Every path into a JSON value (dict keys, list indices)."""
    yield prefix
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        yield from _paths(v, prefix + (k,))


json_values = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**12), st.floats(allow_nan=False), st.text(max_size=6),
                        st.lists(st.integers(0, 3), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_damaged_dataset_description_is_a_data_error(tiny_dataset, data):
    from mixln_dist.data import check_dataset

    meta = json.loads((tiny_dataset / "meta.json").read_text())
    paths = [p for p in _paths(meta) if p]
    path = data.draw(st.sampled_from(paths))
    parent = meta
    for k in path[:-1]:
        parent = parent[k]
    if data.draw(st.booleans()) and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(json_values)
    with tempfile.TemporaryDirectory() as tmp:
        for item in tiny_dataset.iterdir():
            if item.name != "meta.json":
                (Path(tmp) / item.name).symlink_to(item)
        (Path(tmp) / "meta.json").write_text(json.dumps(meta))
        cfg = compose([f"data.dir={tmp}", f"data.tokenizer.vocab_size={TINY_VOCAB}"])
        try:
            check_dataset(cfg.data, model_vocab_size=TINY_VOCAB, seq_len=64)
        except MixLNError:
            pass  # named: the only acceptable failure


def test_garbage_dataset_descriptions_are_data_errors(tiny_dataset, tmp_path):
    from mixln_dist.data import DataError, check_dataset

    for garbage in (b"", b"{", b"\xff\xfe", b"[]", b"null", b'{"splits": 3}'):
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        shutil.copytree(tiny_dataset, folder)
        (folder / "meta.json").write_bytes(garbage)
        cfg = compose([f"data.dir={folder}", f"data.tokenizer.vocab_size={TINY_VOCAB}"])
        with pytest.raises(DataError, match="is not a dataset description written by mixln_dist"):
            check_dataset(cfg.data, model_vocab_size=TINY_VOCAB, seq_len=64)


def documented_cases():
    """The rows of docs/reliability.md's table whose input is a command-line override: (override, message)."""
    text = (REPO_ROOT / "docs" / "reliability.md").read_text()
    rows = re.findall(r"^\| `([a-z_.]+=[^`]*)` \| (?:[^|]*)\| `([^`]+)` \|$", text, flags=re.M)
    assert len(rows) >= 10, "the table of bad input in docs/reliability.md is missing or shorter than expected"
    return rows


@pytest.mark.parametrize("override, message", documented_cases())
def test_the_documented_messages_are_the_real_ones(override, message):
    with pytest.raises(ConfigError) as e:
        compose([override])
    assert message in str(e.value), str(e.value)
