"""Reading models for analysis: exported Hugging Face folders, and the errors that name the fix."""

import pytest
import torch

from mixln_dist.cli.analyze import main
from mixln_dist.diagnostics.sources import ShardSource, TextSource
from mixln_dist.errors import CheckpointError
from mixln_dist.model import NormConfig
from mixln_dist.pretrained import Pretrained, load_pretrained

from .helpers import build, tokens

convert = pytest.importorskip("mixln_dist.export.convert", reason="the export package is not in this checkout")


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A real export of a tiny Mix-LN model (transformers writes it; our importer reads it back)."""
    model = build(NormConfig(scheme="mix", alpha=0.5))
    folder = tmp_path_factory.mktemp("export") / "tiny-mix-hf"
    convert.save_hf(model.state_dict(), model.cfg, model.norm_cfg, folder, verify=False)
    return model, folder


def test_an_exported_folder_loads_as_the_same_model(hf_folder):
    model, folder = hf_folder
    subject = load_pretrained(folder)
    assert subject.model.layer_kinds == ["post", "post", "pre", "pre"]
    assert subject.meta["scheme"] == "mix" and subject.label == "tiny-mix-hf"
    x = tokens(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(subject.model(x), model(x))


def test_a_folder_that_is_not_a_run_needs_an_output_folder_and_a_tokenizer(hf_folder, tmp_path, capsys):
    _, folder = hf_folder
    assert main(["drop", str(folder), "--text", str(tmp_path / "a.txt")]) == 2
    assert "pass --out DIR" in capsys.readouterr().err
    assert main(["drop", str(folder), "--text", str(tmp_path / "a.txt"), "--out", str(tmp_path / "o")]) == 2
    assert "--text needs the model's tokenizer" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before writing anything


def test_a_path_that_is_nothing_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_pretrained(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        load_pretrained(tmp_path)


def test_tokens_from_another_tokenizer_are_refused(tiny_dataset, tmp_path):
    """Token ids only mean something under the tokenizer the model was trained with (checkpoints record it)."""
    subject = Pretrained(build(NormConfig(scheme="pre")), "tiny", {}, tiny_dataset / "tokenizer.model",
                      "0" * 64, None, 16)
    text = tmp_path / "a.txt"
    text.write_text("It was a truth universally acknowledged.")
    with pytest.raises(CheckpointError, match="trained with 000000000000"):
        TextSource([text], subject, 16)
    with pytest.raises(CheckpointError, match="trained with 000000000000"):
        ShardSource(tiny_dataset, subject, 16)


def test_shard_source_reads_the_trainers_samples_and_windows_across_the_split(tiny_dataset):
    from mixln_dist.data import TokenStream, eval_batches

    subject = Pretrained(build(NormConfig(scheme="pre")), "tiny", {}, None, None, None, 16)
    source = ShardSource(tiny_dataset, subject, 16)
    expected = torch.cat([t[v] for t, v in eval_batches(tiny_dataset, 16, 5, 0, 1, max_samples=7)])
    assert torch.equal(source.rows(7), expected)

    split = TokenStream(tiny_dataset, "validation")
    windows = source.windows(stride=4, limit=3)  # the first, middle and last of every 4th window
    last = (split.num_tokens - 16) // 4 * 4
    assert windows.shape == (3, 16)
    assert windows[0].tolist() == split.read(0, 16).tolist()
    assert windows[2].tolist() == split.read(last, 16).tolist()


def test_text_source_reads_each_file_after_an_eos(tiny_dataset, tmp_path):
    from mixln_dist.data import Tokenizer

    subject = Pretrained(build(NormConfig(scheme="pre")), "tiny", {}, tiny_dataset / "tokenizer.model",
                      None, None, 4)
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("Emma Woodhouse, handsome, clever, and rich.")
    b.write_text("Mr. Darcy soon drew the attention of the room.")
    tok = Tokenizer.load(tiny_dataset / "tokenizer.model")
    source = TextSource([a, b], subject, 4)
    expected = [tok.eos_id] + tok.encode(a.read_text()) + [tok.eos_id] + tok.encode(b.read_text())
    assert source.tokens.tolist() == expected
    assert source.rows(2).tolist() == [expected[0:5], expected[4:9]]  # the shards' layout: each target once
