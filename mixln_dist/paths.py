"""Where mixln_dist finds its own files and where it writes a user's, wherever it is installed.

Two roots, both usable in configs through resolvers:

- `${pkg:corpora/sample/train}`: a file shipped inside the installed package (the bundled corpora). A checkout
  and an installed wheel (a Docker image, a cluster module) hold the same files, so the default job runs anywhere.
- `${home:runs}`: a file of the user's, under `$MIXLN_HOME` (default: the current directory). Runs and prepared
  data go there. Relative paths given on the command line keep their usual meaning (the current directory).

Configs: the packaged groups (`mixln_dist/configs/`, which the checkout's top-level `configs/` links to), plus
a user's own folder given with `--config-dir DIR` or `$MIXLN_CONFIG_DIR`. The user's folder is searched first:
a file there adds an option to a group (`DIR/model/my_100m.yaml` makes `model=my_100m`) or replaces the packaged
one of the same name, and `DIR/config.yaml`, if present, replaces the default composition.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Union

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGED_CONFIGS = PACKAGE_DIR / "configs"
HOME_ENV, CONFIG_DIR_ENV = "MIXLN_HOME", "MIXLN_CONFIG_DIR"


def package_file(relative: str = "") -> Path:
    return PACKAGE_DIR / relative


def home(relative: str = "") -> Path:
    """`relative` under $MIXLN_HOME (the current directory when unset), as an absolute path."""
    return Path(os.environ.get(HOME_ENV) or os.getcwd()).expanduser().resolve() / relative


def config_dirs(user_dir: Union[str, Path, None] = None) -> List[Path]:
    """The config folders to search, first match wins: the user's (argument, else $MIXLN_CONFIG_DIR), then the
    packaged one."""
    chosen: Optional[str] = str(user_dir) if user_dir else os.environ.get(CONFIG_DIR_ENV)
    dirs = [Path(chosen).expanduser().resolve()] if chosen else []
    return dirs + [PACKAGED_CONFIGS]
