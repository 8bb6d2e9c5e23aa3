"""Our weights <-> Hugging Face model folders, on in-memory state dicts (no checkpoints, no process groups).

    save_hf(model.state_dict(), cfg.model, cfg.norm, "out/hf", tokenizer="tokenizer.model")   # export
    state, model_cfg, norm_cfg = load_hf("out/hf")                                            # import
    model = import_hf_model("meta-llama-folder", norm=NormConfig(scheme="mix"))               # Pre-LN -> Mix-LN

Export writes safetensors shards (Llama's weight names), config.json, generation_config.json, the tokenizer and,
for any model that is not plain Pre-LN, the modeling code with an `auto_map`. Import needs no transformers.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import torch

from ..errors import ExportError
from ..model import ModelConfig, NormConfig, Transformer, build_model, layer_plan, scheme_extras
from . import official
from .hf_config import LLAMA, MIXLN, HFConfigError, SpecialTokens, from_hf_fields, hf_fields, model_type
from .keys import from_hf_llama, from_official, is_official_layout, to_hf_llama
from .verify import Verification, greedy, verify_export

PathLike = Union[str, Path]
HF_CODE = Path(__file__).with_name("hf_code")
CODE_FILES = ("configuration_mixln.py", "modeling_mixln.py")
AUTO_MAP = {"AutoConfig": "configuration_mixln.MixLNConfig", "AutoModelForCausalLM": "modeling_mixln.MixLNForCausalLM"}
INFO_FILE = "mixln_export.json"  # provenance: source checkpoint, step, config, verification; not read by loaders
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LOGIT_TOLERANCE = 1e-5  # fp32 computation of identical weights: only summation order may differ
MIXLN_LAYOUT = "mixln"  # Llama's weight names by role, our modeling code where the model is not plain Llama
LAYOUTS = (MIXLN_LAYOUT, official.OFFICIAL)


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ExportError("exporting needs transformers: pip install 'transformers>=5' "
                          "(or `bash setup.sh --dev`)") from None
    return transformers


# Export ---------------------------------------------------------------------------------------------------------


@dataclass
class ExportResult:
    path: Path
    seconds: float  # writing (and converting the tokenizer), verification excluded
    verification: Optional[Verification]  # None when verify=False

    def summary(self, tolerance: float = LOGIT_TOLERANCE) -> str:
        size = sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())
        line = f"wrote {self.path} ({size / 2**20:,.1f} MiB) in {self.seconds:.1f}s"
        v = self.verification
        if v is not None:
            line += (f"; {v.reader} reproduces it: max |logit difference| {v.max_abs_logit_diff:.2e} over "
                     f"{v.positions} positions (< {tolerance:g}), greedy generation of {v.new_tokens} tokens "
                     f"{'identical' if v.generation_equal else 'DIFFERENT'} (checked in {v.seconds:.1f}s)")
        return line


def save_hf(state_dict: Dict[str, torch.Tensor], model: ModelConfig, norm: NormConfig, out_dir: PathLike, *,
            tokenizer: Optional[PathLike] = None, dtype: torch.dtype = torch.float32, shard_size: str = "5GB",
            force: bool = False, verify: bool = True, info: Optional[dict] = None,
            layout: str = MIXLN_LAYOUT) -> ExportResult:
    """Write a Hugging Face folder for our weights, and (verify=True) prove it: transformers must load it and
    reproduce our logits (< LOGIT_TOLERANCE) and greedy generation, or nothing is written.

    layout="official" writes the official Mix-LN code's layout instead (export/official.py), verified by reading it
    back through our import of that layout.

    The folder is built beside `out_dir` and renamed into place only when complete and verified, so a failed or
    interrupted export never leaves a half-written folder; an existing non-empty `out_dir` needs `force`.
    """
    out_dir = Path(out_dir)
    if layout not in LAYOUTS:
        raise ExportError(f"unknown layout '{layout}'; choose one of {', '.join(LAYOUTS)}")
    if layout == official.OFFICIAL:
        official.norm_type(model, norm)  # refuses (ExportError) before anything is written
    _check_destination(out_dir, force)
    transformers = _transformers()
    start = time.perf_counter()
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        special = SpecialTokens()
        if tokenizer is not None:
            from .tokenizer import save_hf_tokenizer

            special = save_hf_tokenizer(tokenizer, tmp, model_max_length=model.max_seq_len)
        if layout == official.OFFICIAL:
            official.write(tmp, state_dict, model, norm, special, dtype, shard_size)
        else:
            hf_model = _hf_model(transformers, state_dict, model, norm, special, dtype)
            hf_model.save_pretrained(tmp, max_shard_size=shard_size)
            del hf_model
            _add_rope_theta(tmp / "config.json", model.rope_theta)
            if model_type(model, norm) == MIXLN:
                for name in CODE_FILES:
                    shutil.copy(HF_CODE / name, tmp / name)
        seconds = time.perf_counter() - start
        verification = None
        if verify:
            # The reference holds exactly the exported values (rounded to `dtype`), computing in fp32 like the
            # transformers model, so the comparison isolates the architecture from the storage precision.
            reference = build_model(model, norm, state={k: v.to(dtype).float() for k, v in state_dict.items()}).eval()
            check = _verify_official if layout == official.OFFICIAL else verify_export
            verification = check(tmp, reference)
            if not verification.passed(LOGIT_TOLERANCE):
                raise ExportError(f"verification failed, nothing written: {verification}")
        (tmp / INFO_FILE).write_text(json.dumps({
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "dtype": str(dtype).removeprefix("torch."),
            "layout": layout,
            "verification": verification.as_dict() if verification else None, **(info or {})}, indent=2) + "\n")
        _usual_permissions(tmp)
        _move_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(out_dir, seconds, verification)


def _hf_model(transformers, state_dict, model: ModelConfig, norm: NormConfig, special: SpecialTokens, dtype):
    """The transformers model holding our tensors (built on the meta device, then given our storage: no copy)."""
    fields = hf_fields(model, norm, special)
    if model_type(model, norm) == LLAMA:
        config_cls, model_cls = transformers.LlamaConfig, transformers.LlamaForCausalLM
    else:
        from .hf_code.configuration_mixln import MixLNConfig
        from .hf_code.modeling_mixln import MixLNForCausalLM

        config_cls, model_cls = MixLNConfig, MixLNForCausalLM
    config = config_cls(**fields)
    if model_type(model, norm) == MIXLN:
        config.auto_map = dict(AUTO_MAP)
    hf_state = {k: v.detach().to(dtype) for k, v in to_hf_llama(state_dict).items()}
    if model.tie_embeddings:
        hf_state.pop("lm_head.weight", None)  # transformers ties it to the embedding itself
    with torch.device("meta"):
        hf_model = model_cls(config)
    missing, unexpected = hf_model.load_state_dict(hf_state, strict=False, assign=True)
    missing = [k for k in missing if not (model.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ExportError(f"the weights do not fit a {model.name} model with norm scheme {norm.scheme}: "
                          f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    if model.tie_embeddings:
        hf_model.tie_weights()
    hf_model.config.dtype = dtype
    return hf_model


@torch.no_grad()
def _verify_official(folder: Path, reference, seq_len: int = 64, batch: int = 2, prompt_len: int = 8,
                    new_tokens: int = 16, seed: int = 0) -> Verification:
    """Read the folder back through our importer of the official layout and compare logits and greedy generation
    with `reference`. (The official code itself needs transformers 4.31; the stored fixture and the `official`
    test prove the layout against it.)"""
    start = time.perf_counter()
    state, model_cfg, norm = load_hf(folder)
    back = build_model(model_cfg, norm, state=state).eval()
    cfg = reference.cfg
    seq_len, prompt_len = min(seq_len, cfg.max_seq_len), min(prompt_len, cfg.max_seq_len // 2)
    new_tokens = min(new_tokens, cfg.max_seq_len - prompt_len)
    tokens = torch.randint(0, cfg.vocab_size, (batch, seq_len), generator=torch.Generator().manual_seed(seed))
    diff = (reference(tokens) - back(tokens)).abs().max().item()
    same = torch.equal(greedy(reference, tokens[:1, :prompt_len], new_tokens),
                       greedy(back, tokens[:1, :prompt_len], new_tokens))
    return Verification(diff, same, batch * seq_len, new_tokens, time.perf_counter() - start,
                        reader="mixln_dist's import of the official layout")


def _add_rope_theta(config_json: Path, theta: float) -> None:
    """transformers 5 keeps RoPE's base inside `rope_parameters` and also reads a top-level `rope_theta`; readers
    written for transformers 4 know only the latter, and would silently fall back to 10000 without it."""
    config = json.loads(config_json.read_text())
    config.setdefault("rope_theta", theta)
    config_json.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _check_destination(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} exists and is not a folder; choose another output path")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise ExportError(f"{out_dir} exists and is not empty; choose a new folder, or pass --force to replace it")


def _usual_permissions(folder: Path) -> None:
    """transformers writes weights through private temporary files (mode 0600); give every file the mode a plain
    write would have, so a shared export is readable by whoever may read the folder."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    old = None
    if out_dir.exists():  # allowed by _check_destination: empty, or force
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        out_dir.rename(old)
    tmp.rename(out_dir)
    if old is not None:
        shutil.rmtree(old)


# Import ---------------------------------------------------------------------------------------------------------


def read_hf_config(folder: PathLike) -> dict:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ExportError(f"{folder} has no config.json: not a Hugging Face model folder")
    return json.loads(path.read_text())


def load_hf(folder: PathLike) -> Tuple[Dict[str, torch.Tensor], ModelConfig, NormConfig]:
    """A Llama, exported Mix-LN or official Mix-LN folder -> (our fp32 state dict, ModelConfig, NormConfig).
    Needs no transformers."""
    folder = Path(folder)
    config = read_hf_config(folder)
    try:
        model, norm = from_hf_fields(config, name=folder.resolve().name)
    except HFConfigError as e:
        raise ExportError(f"{folder}/config.json: {e}") from e
    weights = _read_weights(folder)
    if is_official_layout(weights):  # config.json says plain Llama; the norms' names tell each layer's kind
        try:
            state, kinds = from_official(weights)
        except KeyError as e:
            raise ExportError(f"{folder}: {e.args[0]}") from e
        if config.get("model_type") != LLAMA or len(kinds) != model.n_layers:
            raise ExportError(f"{folder} has the official Mix-LN code's weight names but its config.json is not that "
                              f"code's (model_type {config.get('model_type')!r}, {model.n_layers} layers for "
                              f"{len(kinds)} in the weights)")
        norm = official.norm_from_kinds(kinds)
    else:
        state = from_hf_llama(weights)
    return {k: v.float() for k, v in state.items()}, model, norm


def import_hf_model(folder: PathLike, norm: Optional[NormConfig] = None,
                    device: Union[str, torch.device] = "cpu") -> Transformer:
    """Our fp32 model (eval mode) from a Hugging Face folder.

    `norm` changes the norm placement, e.g. a Pre-LN Llama into the first Mix-LN model of a continued run: the
    weights keep their names whatever the placement. Norms and gates the source's scheme lacks (Sandwich-LN's
    output norms, QK-norms, GPAS gates, the embedding norm) start at their initial 1 (gates 0)."""
    state, model_cfg, own_norm = load_hf(folder)
    norm = own_norm if norm is None else norm
    plan = layer_plan(model_cfg, norm)
    with torch.device("meta"):
        target = Transformer(model_cfg, norm)
    for name, value in scheme_extras(target).items():
        state.setdefault(name, value)
    try:
        return build_model(model_cfg, norm, device, state).eval()
    except RuntimeError as e:
        raise ExportError(f"{folder} does not fit norm placement {[s.kind for s in plan]}: {e}") from e


def _read_weights(folder: Path) -> Dict[str, torch.Tensor]:
    """Every tensor of model.safetensors, its sharded form, or pytorch_model.bin (older exports)."""
    from safetensors.torch import load_file

    for index_name, loader in (("model.safetensors.index.json", load_file),
                               ("pytorch_model.bin.index.json", _load_bin)):
        index = folder / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            state = {}
            for shard in shards:
                state.update(loader(str(folder / shard)))
            return state
    if (folder / "model.safetensors").is_file():
        return load_file(str(folder / "model.safetensors"))
    if (folder / "pytorch_model.bin").is_file():
        return _load_bin(str(folder / "pytorch_model.bin"))
    raise ExportError(f"{folder} has no model.safetensors(.index.json) or pytorch_model.bin: no weights to import")


def _load_bin(path: str) -> Dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)
