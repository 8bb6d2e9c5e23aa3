"""Our SentencePiece model -> the tokenizer files of a Hugging Face folder, proven to encode like SentencePiece.

The folder gets `tokenizer.model` (the original), `tokenizer_config.json` and `tokenizer.json` (transformers' own
conversion of the .model, saved so loading needs neither sentencepiece nor a conversion). Our own tokenizers (BPE,
byte fallback, identity normalization, no dummy prefix) load as `LlamaTokenizer` with `add_prefix_space: false`;
any other SentencePiece model (an adopted T5 unigram model, say) as the generic fast tokenizer built from the
model's own normalizer settings. Either way the export re-loads the folder and checks that it encodes a set of
probe strings exactly as SentencePiece does, or it fails.

`add_bos_token` is false: `tokenizer.encode(text)` equals our `Tokenizer.encode(text)`, which adds nothing.
`split_special_tokens` is true: a literal "<s>" in text is text, as it is for SentencePiece.
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

from ..errors import ExportError
from .hf_config import SpecialTokens

PathLike = Union[str, Path]

# Where converted tokenizers have gone wrong elsewhere: leading and repeated spaces (dummy prefix), digits
# (split_digits), newlines and tabs, characters outside the vocabulary (byte fallback), literal special tokens.
PROBES = (
    "Hello world",
    " leading space",
    "  two leading spaces and  two inside",
    "trailing space ",
    "digits 1234567890, 3.14159 and 2nd",
    "line one\nline two\n\n\tindented\r\nwindows",
    "unicode: café naïve Øresund 中文 日本語 🙂 ∑ x²",
    "\"It is a truth universally acknowledged,\" said Mr. Darcy's £10,000-a-year friend.",
    "",
)
# transformers' Unigram model (adopted T5-style tokenizers) can match control pieces such as "<s>" inside text,
# which SentencePiece never does; a difference here is reported, not fatal: ordinary text is unaffected.
SPECIAL_STRINGS = "<s> </s> <unk> <pad>"
LITERAL_SPECIALS = f"{SPECIAL_STRINGS} are literal text here"


@dataclass(frozen=True)
class SentencePieceInfo:
    vocab_size: int
    model_type: str  # "bpe" | "unigram" | ...
    byte_fallback: bool
    add_dummy_prefix: bool
    plain_normalization: bool  # no character map and no whitespace squeezing: text is only escaped
    bos: Optional[int]
    eos: Optional[int]
    pad: Optional[int]
    unk: Optional[int]
    pieces: Tuple[str, ...]

    def piece(self, token_id: Optional[int]) -> Optional[str]:
        return None if token_id is None else self.pieces[token_id]

    @property
    def llama_compatible(self) -> bool:
        """Encodes exactly like transformers' LlamaTokenizer (BPE over bytes, spaces escaped, nothing added)."""
        return (self.model_type == "bpe" and self.byte_fallback and self.plain_normalization
                and not self.add_dummy_prefix)


def read_sentencepiece(path: PathLike) -> SentencePieceInfo:
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(Path(path).read_bytes())
    t, n = proto.trainer_spec, proto.normalizer_spec
    ids = lambda i: i if i >= 0 else None  # noqa: E731  (SentencePiece marks an absent token with -1)
    return SentencePieceInfo(
        vocab_size=len(proto.pieces),
        model_type=t.ModelType.Name(t.model_type).lower(),
        byte_fallback=t.byte_fallback,
        add_dummy_prefix=n.add_dummy_prefix,
        plain_normalization=not n.precompiled_charsmap and not n.remove_extra_whitespaces,
        bos=ids(t.bos_id), eos=ids(t.eos_id), pad=ids(t.pad_id), unk=ids(t.unk_id),
        pieces=tuple(p.piece for p in proto.pieces),
    )


def tokenizer_config(info: SentencePieceInfo, model_max_length: int) -> dict:
    config = {
        "tokenizer_class": "LlamaTokenizer" if info.llama_compatible else "PreTrainedTokenizerFast",
        "add_bos_token": False,
        "add_eos_token": False,
        "bos_token": info.piece(info.bos),
        "eos_token": info.piece(info.eos),
        "unk_token": info.piece(info.unk),
        "pad_token": info.piece(info.pad),
        "add_prefix_space": info.add_dummy_prefix,
        # legacy=False is Llama's "no prefix after special tokens" mode; the generic converter needs legacy=True to
        # reproduce SentencePiece's dummy prefix on text that already starts with a space.
        "legacy": not info.llama_compatible,
        "split_special_tokens": True,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
    }
    return {k: v for k, v in config.items() if v is not None}


def save_hf_tokenizer(sp_model: PathLike, out_dir: PathLike, model_max_length: int) -> SpecialTokens:
    """Write the tokenizer files into `out_dir`, check them against SentencePiece, return the special token ids."""
    from transformers import AutoTokenizer

    sp_model, out_dir = Path(sp_model), Path(out_dir)
    if not sp_model.is_file():
        raise ExportError(f"tokenizer {sp_model} does not exist; pass --tokenizer PATH to the SentencePiece .model "
                          "the model was trained with")
    info = read_sentencepiece(sp_model)
    shutil.copy(sp_model, out_dir / "tokenizer.model")
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(info, model_max_length), indent=2))
    converted = AutoTokenizer.from_pretrained(str(out_dir))  # transformers' sentencepiece -> tokenizers conversion
    converted.backend_tokenizer.save(str(out_dir / "tokenizer.json"))
    bad = encoding_mismatches(out_dir, sp_model, PROBES + (LITERAL_SPECIALS,))
    if bad and bad[0][0] != LITERAL_SPECIALS:
        text, ours, theirs = bad[0]
        raise ExportError(f"the converted tokenizer encodes {text!r} as {theirs[:12]}..., SentencePiece as "
                          f"{ours[:12]}... ({len(bad)} probe strings differ); this SentencePiece model "
                          f"({info.model_type}, dummy prefix {info.add_dummy_prefix}) cannot be exported as is")
    if bad:
        warnings.warn(f"the exported tokenizer encodes the literal strings {SPECIAL_STRINGS} in text "
                      "as special tokens, unlike SentencePiece (transformers' Unigram model matches control pieces); "
                      "ordinary text encodes identically", stacklevel=2)
    return SpecialTokens(bos=info.bos, eos=info.eos, pad=info.pad)


def encoding_mismatches(folder: PathLike, sp_model: PathLike,
                        texts: Sequence[str]) -> List[Tuple[str, List[int], List[int]]]:
    """(text, SentencePiece ids, transformers ids) for each text the folder's tokenizer encodes differently."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    tok = AutoTokenizer.from_pretrained(str(folder))
    tok.model_max_length = 1 << 62  # whole documents are fine here: no "longer than the maximum" warning
    bad = []
    for text in texts:
        ours, theirs = sp.encode(text), tok.encode(text)
        if ours != theirs:
            bad.append((text, ours, theirs))
    return bad
