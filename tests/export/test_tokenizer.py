"""The exported tokenizer encodes text exactly as our SentencePiece Tokenizer does, through every class a user
might load it with, and carries the special ids the model config records."""

import gzip
import json
import shutil

import pytest

from conftest import REPO_ROOT, SAMPLE_CORPUS
from mixln_dist.data import Tokenizer
from mixln_dist.export import save_hf
from mixln_dist.export.tokenizer import PROBES, read_sentencepiece

transformers = pytest.importorskip("transformers")

EDGE_CASES = [
    " leading space", "   three leading", "trailing  ", "\n\nnewlines first", "tabs\tand\r\ncarriage returns",
    "1234567890 12:30 3.14 1e-5", "naïve café — “quoted” … ½ 😀 中文 한국어 Ελληνικά",
    "<s> literal </s>", "",
]


@pytest.fixture(scope="module")
def folder(tiny_model, tokenizer_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "hf"
    model = tiny_model("mix")
    save_hf(model.state_dict(), model.cfg, model.norm_cfg, out, tokenizer=tokenizer_path, verify=False)
    return out


def persuasion_paragraphs(limit=400):
    """Real held-out prose: the bundled validation novel."""
    path = next((SAMPLE_CORPUS / "validation").glob("*.txt.gz"))
    text = gzip.open(path, "rt", encoding="utf-8").read()
    return [p for p in text.split("\n\n") if p.strip()][:limit]


def load(cls, folder):
    """As users load it: AutoTokenizer reads config.json first, which for Mix-LN needs the remote code trusted
    (without it transformers asks on the terminal); the Llama classes read only the tokenizer files."""
    kwargs = {"trust_remote_code": True} if cls == "AutoTokenizer" else {}
    return getattr(transformers, cls).from_pretrained(str(folder), **kwargs)


@pytest.mark.parametrize("cls", ["AutoTokenizer", "LlamaTokenizer", "LlamaTokenizerFast"])
def test_encodes_like_our_tokenizer(folder, tokenizer_path, cls):
    ours = Tokenizer.load(tokenizer_path)
    theirs = load(cls, folder)
    theirs.model_max_length = 1 << 62
    texts = EDGE_CASES + list(PROBES) + persuasion_paragraphs()
    texts.append("\n\n".join(texts))  # and one long document
    for text in texts:
        assert theirs.encode(text) == ours.encode(text), repr(text[:80])
        assert theirs.decode(ours.encode(text)) == text  # lossless both ways


def test_special_tokens_agree_with_the_model_config(folder, tokenizer_path):
    ours = Tokenizer.load(tokenizer_path)
    tok = load("AutoTokenizer", folder)
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert (ours.pad_id, ours.bos_id, ours.eos_id, ours.unk_id) == (0, 1, 2, 3)
    for name in ("config.json", "generation_config.json"):
        config = json.loads((folder / name).read_text())
        assert (config["pad_token_id"], config["bos_token_id"], config["eos_token_id"]) == (0, 1, 2), name
    # The model never saw BOS: documents were packed as text EOS text EOS.
    assert tok("Hello")["input_ids"] == ours.encode("Hello")
    assert tok.model_max_length == 128


def test_loads_without_sentencepiece_files(folder, tokenizer_path, tmp_path):
    """tokenizer.json alone suffices (serving stacks read it); tokenizer.model alone is converted identically."""
    ours = Tokenizer.load(tokenizer_path)
    for keep in ("tokenizer.json", "tokenizer.model"):
        only = tmp_path / keep
        only.mkdir()
        shutil.copy(folder / "tokenizer_config.json", only)
        shutil.copy(folder / keep, only)
        tok = transformers.AutoTokenizer.from_pretrained(str(only))
        assert all(tok.encode(t) == ours.encode(t) for t in EDGE_CASES), keep


def test_our_tokenizers_load_as_llama_tokenizers(tokenizer_path):
    info = read_sentencepiece(tokenizer_path)
    assert info.llama_compatible and info.model_type == "bpe" and not info.add_dummy_prefix


def test_an_adopted_t5_style_tokenizer_exports_as_the_generic_fast_tokenizer(tmp_path):
    """Unigram, NFKC normalization, dummy prefix, no byte fallback: not a Llama tokenizer, still encoded alike."""
    import sentencepiece as spm

    from mixln_dist.export.tokenizer import save_hf_tokenizer

    lines = [p.replace("\n", " ") for p in persuasion_paragraphs(1500)]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(tmp_path / "t5"), vocab_size=400,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
    out = tmp_path / "hf"
    out.mkdir()
    with pytest.warns(UserWarning, match="literal strings"):  # Unigram may match "</s>" inside text
        special = save_hf_tokenizer(tmp_path / "t5.model", out, model_max_length=64)
    assert (special.bos, special.eos, special.pad) == (None, 1, 0)
    assert json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "t5.model"))
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    for text in [t for t in EDGE_CASES if "<s>" not in t] + lines[:200]:
        assert tok.encode(text) == sp.encode(text), repr(text[:80])
