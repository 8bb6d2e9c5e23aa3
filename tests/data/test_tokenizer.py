"""Tokenizer training and adoption: deterministic, lossless, fixed special ids, no silent reuse of a stale model."""

import io
import random

import numpy as np
import pytest
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from mixln_dist.data import DataError, Tokenizer, prepare_dataset, train_tokenizer
from mixln_dist.data.tokenizer import sample_lines

from .helpers import make_cfg, novel

TRICKY = "Tabs\there,  two  spaces,\r\n 2024-11-28 3.14159\n\n\nünïcödé 日本語 🚀 ¶ — “quotes”   \n"


def test_training_is_deterministic_and_lossless(corpus, tmp_path):
    first = train_tokenizer(make_cfg(corpus, tmp_path / "a"))
    second = train_tokenizer(make_cfg(corpus, tmp_path / "b"))
    assert first.path.read_bytes() == second.path.read_bytes()
    assert first.sha256 == second.sha256
    text = (corpus / "train/a.txt").read_text()
    for sample in (text, TRICKY):
        assert first.decode(first.encode(sample)) == sample


def test_the_seed_chooses_the_sampled_lines(corpus, tmp_path):
    one = train_tokenizer(make_cfg(corpus, tmp_path / "a", tokenizer={"max_sentences": 300, "seed": 1}))
    two = train_tokenizer(make_cfg(corpus, tmp_path / "b", tokenizer={"max_sentences": 300, "seed": 2}))
    assert one.sha256 != two.sha256


def test_special_ids_are_fixed_and_digits_split(corpus, tmp_path):
    tok = train_tokenizer(make_cfg(corpus, tmp_path))
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    assert tok.vocab_size == 512
    assert len(tok.encode("12345")) == 5
    assert tok.encode_batch(["a day", "12"]) == [tok.encode("a day"), tok.encode("12")]


def test_training_again_is_a_no_op_until_the_settings_change(corpus, tmp_path, capsys):
    cfg = make_cfg(corpus, tmp_path)
    tok = train_tokenizer(cfg)
    stamp = tok.path.stat().st_mtime_ns
    assert train_tokenizer(cfg).sha256 == tok.sha256
    assert tok.path.stat().st_mtime_ns == stamp and "is up to date" in capsys.readouterr().out

    bigger = make_cfg(corpus, tmp_path, tokenizer={"vocab_size": 600})
    with pytest.raises(DataError, match=r"trained differently \(data.tokenizer.vocab_size 512 -> 600\).*--force"):
        train_tokenizer(bigger)
    assert tok.path.stat().st_mtime_ns == stamp
    assert train_tokenizer(bigger, force=True).vocab_size == 600


def test_a_model_this_code_did_not_train_is_not_replaced(corpus, tmp_path, t5_like_model):
    (tmp_path / "tokenizer.model").write_bytes(t5_like_model)
    with pytest.raises(DataError, match="was not trained by mixln_dist.*adopt=true.*--force"):
        train_tokenizer(make_cfg(corpus, tmp_path))
    assert (tmp_path / "tokenizer.model").read_bytes() == t5_like_model


def test_unigram_is_an_option(corpus, tmp_path):
    tok = train_tokenizer(make_cfg(corpus, tmp_path, tokenizer={"model_type": "unigram"}))
    proto = sentencepiece_model_pb2.ModelProto.FromString(tok.path.read_bytes())
    assert proto.trainer_spec.model_type == proto.trainer_spec.UNIGRAM
    assert tok.decode(tok.encode(TRICKY)) == TRICKY and tok.vocab_size == 512


def test_an_adopted_tokenizer_keeps_its_own_ids(corpus, tmp_path, t5_like_model):
    """A T5-like model (pad 0, eos 1, unk 2, no bos): the wrapper reports -1 for bos, and documents end in 1."""
    t5 = tmp_path / "spiece.model"
    t5.write_bytes(t5_like_model)
    cfg = make_cfg(corpus, tmp_path / "data", tokenizer={"path": str(t5), "adopt": True})
    tok = train_tokenizer(cfg)
    assert (tok.pad_id, tok.eos_id, tok.unk_id, tok.bos_id) == (0, 1, 2, -1)
    assert not tok.independent_lines  # NFKC and a dummy prefix: long documents are encoded whole
    meta = prepare_dataset(cfg)
    assert meta.eos_id == 1 and meta.tokenizer_sha256 == tok.sha256
    assert t5.read_bytes() == t5_like_model  # adopted, never rewritten

    wrong = make_cfg(corpus, tmp_path / "data", tokenizer={"path": str(t5), "adopt": True, "vocab_size": 32000})
    with pytest.raises(DataError, match="has 512 pieces but data.tokenizer.vocab_size=32000"):
        train_tokenizer(wrong)


def test_cutting_after_newlines_is_exact_for_trained_tokenizers(corpus, tmp_path):
    tok = train_tokenizer(make_cfg(corpus, tmp_path))
    assert tok.independent_lines
    text = novel("emma", 30_000) + TRICKY
    newlines = [i + 1 for i, c in enumerate(text) if c == "\n"]
    rng = random.Random(0)
    for _ in range(20):
        cuts = sorted(rng.sample(newlines, 12))
        pieces = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
        assert sum(tok.encode_batch(pieces), []) == tok.encode(text)


def test_sample_lines_is_a_uniform_seeded_sample():
    lines = [f"line {i}" for i in range(100)]
    batches = [lines[i:i + 7] for i in range(0, 100, 7)]
    assert sample_lines(batches, 500, seed=0) == lines  # everything, in order, when it fits
    sample = sample_lines(batches, 10, seed=3)
    assert len(sample) == 10 and len(set(sample)) == 10 and set(sample) <= set(lines)
    assert sample_lines(batches, 10, seed=3) == sample != sample_lines(batches, 10, seed=4)
    counts = np.zeros(100)
    for seed in range(2000):
        for line in sample_lines(batches, 10, seed):
            counts[int(line.split()[1])] += 1
    # every line is kept with probability 10/100: 200 +- 13.4 times in 2000 draws
    assert np.abs(counts - 200).max() < 5 * 13.4
    assert sample_lines(batches, 10, seed=0, stop_when_full=True) == lines[:10]


@pytest.fixture(scope="module")
def t5_like_model(corpus) -> bytes:
    """A SentencePiece model with T5's conventions (NFKC, dummy prefix, pad 0 / eos 1 / unk 2, no bos)."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter((corpus / "train/a.txt").read_text().splitlines()), model_writer=model,
        vocab_size=512, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, num_threads=1, minloglevel=2,
    )
    return model.getvalue()
