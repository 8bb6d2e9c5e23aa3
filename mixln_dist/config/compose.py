"""Composition: `configs/config.yaml`'s defaults plus Hydra-grammar overrides -> a validated, typed Config; and the
YAML round trip of a config saved with every run and checkpoint.

The config folders searched are the user's (`--config-dir`, `$MIXLN_CONFIG_DIR`) and then the packaged one
(mixln_dist.paths). Model flavors are registered from mixln_dist.model.FLAVORS (one source of truth); a YAML file
in a `model/` folder adds another. Unknown keys, unknown options and wrong types raise ConfigError naming the key
and the closest valid ones.
"""

from __future__ import annotations

import hashlib
import re
from contextlib import contextmanager
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Iterator, List, Optional, Sequence, Union, get_args, get_origin, get_type_hints

from omegaconf import OmegaConf

from ..errors import ConfigError
from ..files import write_atomic
from ..model.args import NormConfig, embed_norm_on
from ..model.flavors import FLAVORS
from ..paths import config_dirs, home, package_file
from .checks import did_you_mean, validate
from .schema import Config

GROUPS = ("model", "norm", "data", "optim", "zero", "train", "experiment")
PathLike = Union[str, Path]


def default_run_name(model_name: str, norm: NormConfig) -> str:
    """The model and what sets its norm placement: debug-mix0.25, llama_7b-mix-post2, debug-pre, debug-lns-scaled,
    and the switches that change the model: debug-mix0.25-gpas, debug-reordered-qk, debug-hybrid-star."""
    if norm.layer_kinds:  # an explicit placement (layer surgery): name it by a digest of the placement
        label = "custom" + hashlib.sha1(",".join(norm.layer_kinds).encode()).hexdigest()[:6]
    elif norm.scheme == "mix":
        label = f"mix-post{norm.post_layers}" if norm.post_layers is not None else f"mix{norm.alpha:g}"
    else:
        label = norm.scheme
    embed_differs = embed_norm_on(norm) != embed_norm_on(NormConfig(scheme=norm.scheme))  # from the scheme's own
    switches = [("scaled", norm.scaled_init), ("star", norm.hybrid_star), ("qk", norm.qk_norm), ("gpas", norm.gpas),
                ("embnorm" if embed_norm_on(norm) else "noembnorm", embed_differs)]
    return f"{model_name}-{label}" + "".join(f"-{name}" for name, on in switches if on)


def _register() -> None:
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="schema", node=Config)
    for name, flavor in FLAVORS.items():
        cs.store(group="model", name=name, node=flavor)
    resolvers = {
        "pkg": lambda rel="": str(package_file(rel)),  # ${pkg:corpora/sample}: shipped inside the package
        "home": lambda rel="": str(home(rel)),  # ${home:runs}: under $MIXLN_HOME or the current directory
        "default_run_name": lambda *, _root_: default_run_name(_root_.model.name, _root_.norm),
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


@contextmanager
def _search_path(dirs: Sequence[Path]) -> Iterator[None]:
    """Hydra's global state set up to search `dirs` in order (initialize_config_dir takes only one folder)."""
    from hydra import version
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    backup = get_gh_backup()
    version.setbase("1.3")
    search = create_config_search_path(search_path_dir=str(dirs[0]))
    for d in reversed(dirs[1:]):  # each goes right after the first: after the loop they are in order
        search.append(provider="mixln", path=f"file://{d}", anchor=SearchPathQuery(provider="main"))
    Hydra.create_main_hydra2(task_name="mixln", config_search_path=search)
    try:
        yield
    finally:
        restore_gh_from_backup(backup)


def compose(overrides: Sequence[str] = (), config_dir: Optional[PathLike] = None) -> Config:
    """Compose config.yaml with Hydra-grammar overrides into a validated, typed Config; `config_dir` (or
    $MIXLN_CONFIG_DIR) is searched before the packaged configs."""
    from hydra import compose as hydra_compose
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    _register()
    overrides = list(overrides)
    _check_override_keys(overrides)
    dirs = config_dirs(config_dir)
    if not dirs[0].is_dir():
        raise ConfigError(f"config folder {dirs[0]} (--config-dir or $MIXLN_CONFIG_DIR) does not exist")
    try:
        with _search_path(dirs):
            cfg = _to_config(hydra_compose("config", overrides=overrides))
    except MissingConfigException as e:
        raise ConfigError(_explain_missing_option(e, dirs)) from e
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(_explain(e)) from e
    validate(cfg)
    return cfg


def _to_config(node) -> Config:
    """DictConfig -> Config dataclass, with every interpolation resolved."""
    from omegaconf.errors import MissingMandatoryValue

    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), node))
    except MissingMandatoryValue as e:
        raise ConfigError(f"{e.full_key} has no value; set it with {e.full_key}=...") from e


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: Config, path: PathLike) -> None:
    write_atomic(Path(path), to_yaml(cfg).encode())


def load_config(path: PathLike) -> Config:
    """Read a YAML written by save_config (or by hand) back into a validated Config."""
    import yaml
    from omegaconf.errors import OmegaConfBaseException

    _register()
    try:
        node = OmegaConf.load(path)
        cfg = _to_config(node)
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} cannot be read as a config ({_yaml_problem(e)})") from e
    except OmegaConfBaseException as e:
        raise ConfigError(f"{path}: {_explain(e)}") from e
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e
    try:
        validate(cfg)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e
    return cfg


def _yaml_problem(e: Exception) -> str:
    """One line: what is wrong and where (PyYAML's own message spans several)."""
    import yaml

    if isinstance(e, yaml.MarkedYAMLError) and e.problem_mark is not None:
        return f"not valid YAML at line {e.problem_mark.line + 1}, column {e.problem_mark.column + 1}: {e.problem}"
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


def to_dict(cfg: Config) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def available_options(group: str, config_dir: Optional[PathLike] = None) -> List[str]:
    """The options of a config group: YAML files in every searched `<group>/` folder, plus the registered flavors
    for `model`."""
    names = {p.stem for d in config_dirs(config_dir) if (d / group).is_dir() for p in (d / group).glob("*.yaml")}
    return sorted(names | (set(FLAVORS) if group == "model" else set()))


# Friendly errors ----------------------------------------------------------------------------------------------


def schema_keys(cls: type = Config, prefix: str = "") -> List[str]:
    """Every dotted key of a dataclass schema, nested ones included."""
    keys = []
    for f in fields(cls):
        key = f"{prefix}{f.name}"
        keys.append(key)
        sub = _dataclass_type(get_type_hints(cls)[f.name])
        if sub is not None:
            keys += schema_keys(sub, key + ".")
    return keys


def _dataclass_type(tp: Any) -> Optional[type]:
    if get_origin(tp) is Union:
        tp = next((a for a in get_args(tp) if a is not type(None)), tp)
    return tp if is_dataclass(tp) else None


def _check_override_keys(overrides: Sequence[str]) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        raise ConfigError(f"cannot parse the overrides {list(overrides)}: {e}") from e
    valid = schema_keys(Config)
    for o in parsed:
        key = o.key_or_group
        if o.is_add() or o.is_force_add() or o.is_delete():
            raise ConfigError(
                f"'{o.input_line}': the configuration has a fixed schema, so keys cannot be added or deleted; "
                f"set an existing key with {key.lstrip('+~')}=VALUE"
            )
        if key in GROUPS or key in valid:
            continue
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        siblings = [k for k in valid if "." in k and k.rsplit(".", 1)[0] == parent]
        hint = did_you_mean(key, siblings or [k for k in valid if k.count(".") == key.count(".")])
        listing = f" Keys under '{parent}': {', '.join(s.split('.')[-1] for s in siblings)}." if siblings else ""
        raise ConfigError(f"unknown config key '{key}'{hint}.{listing}")


def _explain_missing_option(e: Exception, dirs: Sequence[Path]) -> str:
    m = re.search(r"Could not find '([^/']+)/([^']+)'", str(e))
    if not m:
        return str(e).split("\nConfig search path")[0]
    group, option = m.groups()
    options = available_options(group, dirs[0] if len(dirs) > 1 else None)
    return (
        f"unknown option '{option}' for config group '{group}'{did_you_mean(option, options)}. "
        f"Available: {', '.join(options)}"
    )


def _explain(e: Exception) -> str:
    """Turn an OmegaConf/Hydra error into one line naming the key and what was wrong."""
    cause = e.__cause__ or e
    text = str(cause)
    key = getattr(cause, "full_key", None) or (re.search(r"full_key: (\S+)", text) or [None, None])[1]
    first = text.strip().splitlines()[0] if text.strip() else type(cause).__name__
    if "not in" in first and key:
        return f"unknown config key '{key}'{did_you_mean(key, schema_keys(Config))}"
    if key:
        return f"{key}: {first}"
    return first
