"""Evaluation definitions (mixln_dist.evaluation) and the evaluate entry point on prepared shards and on text."""

import gzip
import json
import math

import pytest
import torch

from conftest import SAMPLE_CORPUS
from mixln_dist.cli import evaluate as evaluate_cli
from mixln_dist.data import DatasetMeta, Tokenizer, eval_batches
from mixln_dist.errors import EXIT_USER_ERROR
from mixln_dist.evaluation import loss_sums, piece_byte_lengths, sample_losses, sliding_window_sums, windows
from mixln_dist.model import ModelConfig, NormConfig, Transformer


def tiny(seed=0, max_seq_len=128):
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(name="tiny", dim=32, n_layers=2, n_heads=2, ffn_dim=64, vocab_size=512,
                                    max_seq_len=max_seq_len), NormConfig(scheme="mix", post_layers=1)).eval()
    model.init_weights()
    return model


def persuasion(chars=20_000):
    path = next((SAMPLE_CORPUS / "validation").glob("*.txt.gz"))
    return gzip.open(path, "rt", encoding="utf-8").read()[:chars]


# Sliding windows ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, window, stride", [(1, 8, 4), (7, 8, 4), (8, 8, 8), (50, 8, 3), (50, 8, 8), (50, 8, 1)])
def test_windows_score_every_target_once_with_enough_context(n, window, stride):
    scored = []
    for start, end, k in windows(n, window, stride):
        assert end - start == min(window, n)  # all windows batch together
        first = end - k + 1  # targets first..end are scored here
        scored += range(first, end + 1)
        assert first - 1 - start >= min(window - stride, first - 1)  # context before the first scored target
    assert scored == list(range(1, n + 1))


def test_windows_reject_a_stride_that_would_skip_tokens():
    with pytest.raises(ValueError, match="stride=9"):
        windows(20, 8, 9)


def test_one_window_is_the_plain_sequence_loss():
    model, ids = tiny(), torch.randint(0, 512, (40,))
    loss, n = sliding_window_sums(model, ids.tolist(), window=64, stride=32, batch_size=4, device="cpu")
    assert n == 39 and loss == pytest.approx(sample_losses(model, ids[None]).item(), rel=1e-6)


def test_stride_equal_to_the_window_scores_the_stream_like_the_trainers_samples():
    """Sample i of a split is tokens[i*L : i*L + L + 1]; with stride L the windows are exactly those samples."""
    model, L = tiny(), 16
    ids = torch.randint(0, 512, (5 * L + 1,))
    loss, n = sliding_window_sums(model, ids.tolist(), window=L, stride=L, batch_size=2, device="cpu")
    samples = ids.unfold(0, L + 1, L)  # (5, L + 1)
    expected = loss_sums(model, [(samples, torch.ones(5, dtype=torch.bool))], torch.device("cpu"))
    assert n == expected[1].item() and loss == pytest.approx(expected[0].item(), rel=1e-6)


def test_each_token_is_scored_with_the_context_its_window_gives():
    model, window, stride = tiny(), 12, 5
    ids = torch.randint(0, 512, (40,))
    loss, _ = sliding_window_sums(model, ids.tolist(), window, stride, batch_size=3, device="cpu")
    brute = 0.0
    for start, end, k in windows(len(ids) - 1, window, stride):
        for t in range(end - k + 1, end + 1):  # target t read after ids[start:t], one forward pass each
            logits = model(ids[None, start:t])[0, -1]
            brute += torch.nn.functional.cross_entropy(logits, ids[t]).item()
    assert loss == pytest.approx(brute, rel=1e-5)


# Bits per byte ------------------------------------------------------------------------------------------------


def test_piece_bytes_add_up_to_the_utf8_length(tiny_dataset):
    tok = Tokenizer.load(tiny_dataset / "tokenizer.model")
    lengths = piece_byte_lengths(tiny_dataset / "tokenizer.model")
    assert lengths[[tok.pad_id, tok.bos_id, tok.eos_id]].tolist() == [0, 0, 0]
    for text in [persuasion(), " leading\tspace", "naïve café 😀 中文\n", "1234567890"]:
        assert int(lengths[tok.encode(text)].sum()) == len(text.encode("utf-8"))


# The entry point -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_folder(tiny_dataset, tmp_path_factory):
    from mixln_dist.export import save_hf

    model = tiny()
    out = tmp_path_factory.mktemp("eval") / "hf"
    save_hf(model.state_dict(), model.cfg, model.norm_cfg, out, tokenizer=tiny_dataset / "tokenizer.model",
            verify=False)
    return out


def run(capsys, *argv):
    code = evaluate_cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_shards_reproduce_the_trainers_loss_and_count_the_bytes_of_the_targets(hf_folder, tiny_dataset, tmp_path,
                                                                                capsys):
    code, out, err = run(capsys, hf_folder, "--shards", tiny_dataset, "--seq-len", 64, "--samples", 24,
                         "--batch-size", 5, "--json", tmp_path / "r.json")
    assert code == 0, err
    result = json.loads((tmp_path / "r.json").read_text())
    # The trainer's definition, computed here from the same model and batches:
    sums = loss_sums(tiny(), eval_batches(tiny_dataset, 64, 5, 0, 1, 24), torch.device("cpu"))
    assert result["tokens"] == 24 * 64 and result["loss"] == pytest.approx((sums[0] / sums[1]).item(), rel=1e-6)
    # Bytes, independently: the 24 samples' targets are one contiguous stretch of the stream; decode it.
    stream = next(iter(eval_batches(tiny_dataset, 64 * 24, 1, 0, 1, 1)))[0][0]
    text = Tokenizer.load(tiny_dataset / "tokenizer.model").decode(stream[1:])
    assert result["bytes"] == len(text.encode("utf-8"))
    assert result["bits_per_byte"] == pytest.approx(sums[0].item() / (math.log(2) * result["bytes"]), rel=1e-6)
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
    assert "bits/byte" in out


def test_text_files_are_scored_whole_after_an_eos(hf_folder, tiny_dataset, tmp_path, capsys):
    """Any format the data pipeline reads: a gzipped text file is one document, each JSONL row another."""
    texts = [persuasion(6000), "A short second document.\n", "A third, from a JSON line."]
    files = [tmp_path / "doc0.txt.gz", tmp_path / "doc1.txt", tmp_path / "rows.jsonl"]
    with gzip.open(files[0], "wt", encoding="utf-8") as f:
        f.write(texts[0])
    files[1].write_text(texts[1], encoding="utf-8")
    files[2].write_text(json.dumps({"text": texts[2]}) + "\n", encoding="utf-8")
    code, _, err = run(capsys, hf_folder, "--text", *files, "--seq-len", 64, "--stride", 24, "--json",
                       tmp_path / "r.json")
    assert code == 0, err
    result = json.loads((tmp_path / "r.json").read_text())
    tok, model = Tokenizer.load(tiny_dataset / "tokenizer.model"), tiny()
    loss = sum(sliding_window_sums(model, [tok.eos_id] + tok.encode(t), 64, 24, 8, "cpu")[0] for t in texts)
    assert result["tokens"] == sum(len(tok.encode(t)) for t in texts)
    assert result["bytes"] == sum(len(t.encode("utf-8")) for t in texts)
    assert result["loss"] * result["tokens"] == pytest.approx(loss, rel=1e-6)


def test_data_from_another_tokenizer_is_refused(hf_folder, tiny_dataset, tmp_path, capsys):
    meta = json.loads((tiny_dataset / "meta.json").read_text())
    other = tmp_path / "other"
    other.mkdir()
    (other / "meta.json").write_text(json.dumps({**meta, "tokenizer_sha256": "0" * 64}))
    assert DatasetMeta.load(other).tokenizer_sha256 == "0" * 64
    code, _, err = run(capsys, hf_folder, "--shards", other, "--seq-len", 64)
    assert code == EXIT_USER_ERROR and "other uses tokenizer sha256 000000000000" in err


def test_a_folder_without_a_tokenizer_asks_for_one(tmp_path, capsys):
    from mixln_dist.export import save_hf

    model = tiny()
    save_hf(model.state_dict(), model.cfg, model.norm_cfg, tmp_path / "hf", verify=False)
    code, _, err = run(capsys, tmp_path / "hf", "--text", tmp_path / "hf" / "config.json")
    assert code == EXIT_USER_ERROR and "pass --tokenizer" in err
