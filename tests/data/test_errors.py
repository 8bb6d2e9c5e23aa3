"""Bad input: each problem raises DataError naming it and the fix, before anything is lost or overwritten."""

import json

import pytest

from mixln_dist.data import DataError, check_dataset, prepare_dataset, train_tokenizer, verify_checksums

from .helpers import make_cfg


@pytest.fixture
def prepared(corpus, tmp_path):
    """A prepared dataset: (config, directory)."""
    cfg = make_cfg(corpus, tmp_path / "data")
    prepare_dataset(cfg)
    return cfg, tmp_path / "data"


def test_no_input_files(corpus, tmp_path):
    cfg = make_cfg(corpus, tmp_path, train=[str(tmp_path / "nowhere/*.txt")])
    with pytest.raises(DataError, match=r"data.train: no input files match '.*nowhere/\*.txt'; check the path"):
        prepare_dataset(cfg)
    assert not (tmp_path / "meta.json").exists()


def test_unsupported_format(corpus, tmp_path):
    (tmp_path / "notes.docx").write_bytes(b"PK")
    with pytest.raises(DataError, match=r"notes.docx is not a format this pipeline reads; use .txt, .jsonl"):
        prepare_dataset(make_cfg(corpus, tmp_path / "out", train=[str(tmp_path / "notes.docx")]))


def test_only_empty_documents(corpus, tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n   \n\n\t\n\n")
    cfg = make_cfg(corpus, tmp_path / "out", train=[str(tmp_path / "empty.txt")])
    with pytest.raises(DataError, match="data.train has no text: every document in text files .*empty.txt is empty"):
        train_tokenizer(cfg)
    adopted = make_cfg(corpus, tmp_path / "out2", train=[str(tmp_path / "empty.txt")],
                       tokenizer={"path": str(_tokenizer(corpus, tmp_path)), "adopt": True})
    with pytest.raises(DataError, match=r"data.train has no text: the 2 documents read from .* are all empty"):
        prepare_dataset(adopted)


def test_missing_text_column(corpus, tmp_path):
    (tmp_path / "rows.jsonl").write_text(json.dumps({"content": "hello"}) + "\n")
    cfg = make_cfg(corpus, tmp_path / "out", train=[str(tmp_path / "rows.jsonl")],
                   tokenizer={"path": str(_tokenizer(corpus, tmp_path)), "adopt": True})
    with pytest.raises(DataError, match=r"has no column 'text' \(columns: content\); set data.text_field"):
        prepare_dataset(cfg)


def test_validation_given_twice_or_not_at_all(corpus, tmp_path):
    for changes in ({"val_fraction": 0.1}, {"validation": []}):
        with pytest.raises(DataError, match="give the validation split exactly one way"):
            prepare_dataset(make_cfg(corpus, tmp_path, **changes))


def test_hub_dataset_without_a_network(corpus, tmp_path):
    cfg = make_cfg(corpus, tmp_path, train=["hf:allenai/c4:en"],
                   tokenizer={"path": str(_tokenizer(corpus, tmp_path)), "adopt": True})
    with pytest.raises(DataError, match=r"cannot open hf:allenai/c4:en \(split train\).*need a network"):
        prepare_dataset(cfg)


def test_adopting_a_missing_tokenizer(corpus, tmp_path):
    cfg = make_cfg(corpus, tmp_path, tokenizer={"path": str(tmp_path / "spiece.model"), "adopt": True})
    with pytest.raises(DataError, match=r"adopt=true but .*spiece.model does not exist; download"):
        prepare_dataset(cfg)


def test_tokenizer_larger_than_the_model_vocabulary(prepared):
    cfg, data_dir = prepared
    expected = (f"tokenizer {data_dir}/tokenizer.model has 512 pieces but model.vocab_size=500; "
                "set model.vocab_size>=512 or use a smaller tokenizer")
    with pytest.raises(DataError, match=f"^{expected}$"):
        check_dataset(cfg, model_vocab_size=500, seq_len=64)
    check_dataset(cfg, model_vocab_size=512, seq_len=64)


def test_shards_that_disagree_with_the_tokenizer(prepared, corpus):
    cfg, data_dir = prepared
    train_tokenizer(make_cfg(corpus, data_dir, tokenizer={"vocab_size": 600}), force=True)  # shards not rebuilt
    with pytest.raises(DataError, match=r"was prepared with tokenizer sha256 \w{12} \(512 pieces\) but .* is sha256"):
        check_dataset(cfg, model_vocab_size=1000, seq_len=64)


def test_missing_dataset(corpus, tmp_path):
    with pytest.raises(DataError, match=r"no prepared dataset in .*meta.json is missing.*launch/prepare_data.py"):
        check_dataset(make_cfg(corpus, tmp_path), model_vocab_size=512, seq_len=64)


def test_truncated_shard(prepared):
    cfg, data_dir = prepared
    shard = data_dir / "train-00000.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(DataError, match=r"train-00000.bin is truncated: [\d,]+ bytes, meta.json records .*--force"):
        check_dataset(cfg, model_vocab_size=512, seq_len=64)


def test_corrupted_shard(prepared):
    cfg, data_dir = prepared
    shard = data_dir / "train-00000.bin"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # anywhere: the full check reads every byte
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match="train-00000.bin does not match its sha256 in meta.json"):
        verify_checksums(data_dir)
    data[0] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match="train-00000.bin does not match its spot sha256 in meta.json"):
        check_dataset(cfg, model_vocab_size=512, seq_len=64)


def test_seq_len_longer_than_the_validation_split(prepared):
    cfg, _ = prepared
    with pytest.raises(DataError, match=r"the validation split of .* has [\d,]+ tokens, fewer than data.seq_len \+ 1 "
                                        r"= 100001, so not one sample; lower data.seq_len"):
        check_dataset(cfg, model_vocab_size=512, seq_len=100_000)


def test_files_of_unknown_origin_are_not_overwritten(corpus, tmp_path):
    tmp_path.joinpath("train-00000.bin").write_bytes(b"someone's data")
    with pytest.raises(DataError, match=r"already holds train-00000.bin, which no meta.json of this code describes; "
                                        "pass --force"):
        prepare_dataset(make_cfg(corpus, tmp_path))
    assert tmp_path.joinpath("train-00000.bin").read_bytes() == b"someone's data"


def _tokenizer(corpus, tmp_path):
    """A trained tokenizer outside the output directories, to adopt."""
    return train_tokenizer(make_cfg(corpus, tmp_path / "tok")).path
