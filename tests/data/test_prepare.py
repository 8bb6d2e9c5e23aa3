"""Preparation: shards hold exactly the tokenized documents, metadata is exact, re-runs are no-ops, and nothing a
user has is lost or overwritten."""

import gzip
import hashlib
import json
import multiprocessing
import os

import numpy as np
import pytest

from mixln_dist.data import (DataError, DatasetMeta, TokenStream, Tokenizer, check_dataset, prepare_dataset,
                              train_tokenizer)
from mixln_dist.data.prepare import ShardWriter, ensure_prepared, token_dtype
from mixln_dist.paths import package_file

from .helpers import documents, make_cfg, write_dataset

EOS = 2


def expected_stream(tok: Tokenizer, docs) -> np.ndarray:
    return np.array([i for d in docs for i in tok.encode(d) + [tok.eos_id]])


def directory_state(path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir()) if p.is_file()}


@pytest.mark.parametrize("sample_by", ["paragraph", "document"])  # document: 150 kB documents, cut to encode
def test_shards_hold_exactly_the_tokenized_documents(corpus, tmp_path, sample_by):
    cfg = make_cfg(corpus, tmp_path, sample_by=sample_by, shard_tokens=7_001)
    meta = prepare_dataset(cfg)
    tok = Tokenizer(cfg.tokenizer.path)
    for split, files in (("train", ["train/a.txt", "train/b.txt.gz"]), ("validation", ["val/c.txt"])):
        docs = [d for f in files for d in documents(corpus / f, sample_by)]
        expected = expected_stream(tok, docs)
        stream = TokenStream(tmp_path, split)
        assert np.array_equal(stream.read(0, stream.num_tokens), expected)
        info = meta.splits[split]
        assert (info.num_tokens, info.num_documents) == (len(expected), len(docs))
        assert [s.num_tokens for s in info.shards[:-1]] == [7_001] * (len(info.shards) - 1)
        assert sum(s.num_tokens for s in info.shards) == len(expected)
        for shard in info.shards:
            data = (tmp_path / shard.file).read_bytes()
            assert len(data) == 2 * shard.num_tokens and hashlib.sha256(data).hexdigest() == shard.sha256
    assert meta.dtype == "uint16" and meta.vocab_size == 512 and meta.tokenizer_sha256 == tok.sha256
    assert meta.splits["validation"].num_samples(64) == (meta.splits["validation"].num_tokens - 1) // 64
    assert DatasetMeta.load(tmp_path) == meta


def test_whole_books_are_encoded_exactly(corpus, tmp_path):
    """Milton and Botchan as one document each (0.66 and 0.26 MB): cut after newlines to encode, equal to whole."""
    books = [package_file("corpora/books/milton.txt.gz"), package_file("corpora/books/botchan.txt.gz")]
    tokenizer = train_tokenizer(make_cfg(corpus, tmp_path / "tok")).path  # ours, adopted: cutting is exact
    cfg = make_cfg(corpus, tmp_path / "out", train=[str(b) for b in books], sample_by="document",
                   tokenizer={"path": str(tokenizer), "adopt": True})
    prepare_dataset(cfg)
    stream = TokenStream(cfg.dir, "train")
    docs = [d for b in books for d in documents(b, "document")]
    assert np.array_equal(stream.read(0, stream.num_tokens), expected_stream(Tokenizer(tokenizer), docs))


def test_jsonl_parquet_and_text_sources_mix(corpus, tmp_path):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    docs = documents(corpus / "train/a.txt")[:300]
    src = tmp_path / "src"
    src.mkdir()
    with gzip.open(src / "1.jsonl.gz", "wt") as f:
        for d in docs[:100]:
            f.write(json.dumps({"id": 1, "body": d}) + "\n")
    pq.write_table(pa.table({"body": docs[100:200] + [None, "  "]}), src / "2.parquet")
    (src / "3.txt").write_text("\n\n".join(docs[200:]))
    files = [str(src / name) for name in ("1.jsonl.gz", "2.parquet", "3.txt")]
    cfg = make_cfg(corpus, tmp_path / "out", train=files, text_field="body")
    meta = prepare_dataset(cfg)
    stream = TokenStream(cfg.dir, "train")
    assert np.array_equal(stream.read(0, stream.num_tokens), expected_stream(Tokenizer(cfg.tokenizer.path), docs))
    assert (meta.splits["train"].num_documents, meta.splits["train"].skipped_documents) == (300, 2)


def test_validation_held_out_by_whole_documents(corpus, tmp_path):
    cfg = make_cfg(corpus, tmp_path / "a", validation=[], val_fraction=0.2)
    meta = prepare_dataset(cfg)
    tok = Tokenizer(cfg.tokenizer.path)
    corpus_docs = [d for f in ("train/a.txt", "train/b.txt.gz") for d in documents(corpus / f)]

    def split_docs(data_dir, split):
        stream = TokenStream(data_dir, split)
        ids = stream.read(0, stream.num_tokens)
        ends = np.flatnonzero(ids == EOS)
        return [tok.decode(d) for d in np.split(ids, ends + 1)[:-1]]

    val, train = split_docs(cfg.dir, "validation"), split_docs(cfg.dir, "train")
    assert sorted(val + train) == sorted(corpus_docs)  # every document whole, in exactly one split
    assert 0.15 < len(val) / len(corpus_docs) < 0.25
    assert "0.2 of the documents" in meta.splits["validation"].source

    again = prepare_dataset(make_cfg(corpus, tmp_path / "b", validation=[], val_fraction=0.2))
    assert again.splits["validation"].shards == meta.splits["validation"].shards  # same seed, same bytes
    other = prepare_dataset(make_cfg(corpus, tmp_path / "c", validation=[], val_fraction=0.2, split_seed=7))
    assert other.splits["validation"].shards[0].sha256 != meta.splits["validation"].shards[0].sha256


def test_preparing_again_is_a_no_op_unless_forced(corpus, tmp_path, capsys):
    cfg = make_cfg(corpus, tmp_path)
    meta = prepare_dataset(cfg)
    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert prepare_dataset(cfg) == meta
    assert "is up to date" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == stamps
    rebuilt = prepare_dataset(cfg, force=True)
    assert rebuilt.splits == meta.splits and (tmp_path / "meta.json").stat().st_mtime_ns != stamps["meta.json"]


def test_a_different_dataset_is_not_replaced_without_force(corpus, tmp_path):
    prepare_dataset(make_cfg(corpus, tmp_path))
    before = directory_state(tmp_path)
    lines = make_cfg(corpus, tmp_path, sample_by="line")
    with pytest.raises(DataError, match=rf"{tmp_path} holds a different dataset \(data.sample_by 'paragraph' -> "
                                        r"'line'\); pass --force"):
        prepare_dataset(lines)
    assert directory_state(tmp_path) == before
    meta = prepare_dataset(lines, force=True)
    assert meta.recipe["data.sample_by"] == "line"
    check_dataset(lines, model_vocab_size=512, seq_len=64)


def test_a_failure_midway_leaves_the_old_dataset_whole(corpus, tmp_path):
    cfg = make_cfg(corpus, tmp_path / "data")
    prepare_dataset(cfg)
    before = directory_state(tmp_path / "data")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "1.txt").write_text((corpus / "train/a.txt").read_text())
    (bad / "2.txt").write_bytes(b"fine so far\n\n\xff\xfe not UTF-8\n")
    broken = make_cfg(corpus, tmp_path / "data", train=[str(bad / "*.txt")],
                      tokenizer={"path": cfg.tokenizer.path, "adopt": True})
    with pytest.raises(DataError, match=r"cannot read text files .*2.txt"):
        prepare_dataset(broken, force=True)
    assert directory_state(tmp_path / "data") == before  # no staging left behind, nothing replaced
    check_dataset(cfg, model_vocab_size=512, seq_len=64)


def _prepare_in_child(cfg):
    ensure_prepared(cfg)


def test_concurrent_preparers_take_turns(corpus, tmp_path):
    cfg = make_cfg(corpus, tmp_path)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_prepare_in_child, args=(cfg,)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    meta = check_dataset(cfg, model_vocab_size=512, seq_len=64)
    files = {s.file for split in meta.splits.values() for s in split.shards}
    assert {p.name for p in tmp_path.iterdir()} == files | {"meta.json", "tokenizer.model", "tokenizer.model.json",
                                                            ".lock"}


def test_max_train_tokens_stops_after_the_document_that_reaches_it(corpus, tmp_path):
    meta = prepare_dataset(make_cfg(corpus, tmp_path, max_train_tokens=5_000))
    stream = TokenStream(tmp_path, "train")
    ids = stream.read(0, stream.num_tokens)
    ends = np.flatnonzero(ids == EOS) + 1
    assert ends[-1] == len(ids) >= 5_000 > ends[-2]
    assert meta.splits["train"].num_documents == len(ends)


def test_ids_are_uint16_when_they_fit_else_uint32(tmp_path):
    assert token_dtype(65_536) == np.dtype("<u2") and token_dtype(65_537) == np.dtype("<u4")
    big = np.arange(60_000, 130_000, dtype="<u4")
    write_dataset(tmp_path, big, big[:100], shard_tokens=30_000)
    assert np.array_equal(TokenStream(tmp_path, "train").read(29_990, 40), big[29_990:30_030])
    assert os.path.getsize(tmp_path / "train-00000.bin") == 4 * 30_000


def test_shard_writer_cuts_shards_anywhere(tmp_path):
    writer = ShardWriter(tmp_path, "train", np.dtype("<u2"), shard_tokens=10)
    for n in (3, 15, 2, 10):
        writer.write(np.arange(n, dtype="<u2"), np.array([n]))
    writer.finish()
    assert [s.num_tokens for s in writer.shards] == [10, 10, 10]
    data = np.concatenate([np.fromfile(tmp_path / s.file, "<u2") for s in writer.shards])
    assert np.array_equal(data, np.concatenate([np.arange(n) for n in (3, 15, 2, 10)]))
