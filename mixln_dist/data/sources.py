"""Where text comes from: local files, globs and directories, or hub datasets, read through `datasets`.

    data.train: ["corpus/*.jsonl.gz", "extra/book.txt", "hf:allenai/c4:en"]

A local .txt file splits into documents by data.sample_by (line, paragraph = blank-line separated, or the whole
file); in .jsonl/.json/.parquet files and hub datasets every row is a document, its text in data.text_field.
"hf:NAME[:CONFIG[:SPLIT]]" names a hub dataset (SPLIT defaults to the role's: train or validation).

Everything is read with streaming=True: nothing is copied into the datasets cache (no second copy of a 100 GB
corpus, no extracted .gz files) and a hub source downloads only what is read.

A source's identity, for "is this the dataset that is already prepared?", is per file, in order: its name, size
and the sha256 of its first and last MiB (all of it when smaller than 2 MiB). That is cheap for 100 GB corpora
and does not depend on where the checkout lives; an edit that keeps the size and both ends slips through, so
prepare with --force after editing a big file in its middle.
"""

from __future__ import annotations

import glob
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

from ..errors import DataError

BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
HUB_PREFIX = "hf:"


class NoInputFiles(DataError):
    """A local source pattern that matches no file."""


@dataclass(frozen=True)
class Source:
    """One `datasets.load_dataset` call: a run of local files with the same builder, or one hub dataset."""

    builder: str  # text | json | parquet, or the hub dataset's name
    files: Tuple[str, ...] = ()  # absolute paths; empty for a hub dataset
    config: Optional[str] = None  # hub dataset config (e.g. "en")
    split: str = "train"  # hub dataset split

    @property
    def is_hub(self) -> bool:
        return not self.files

    def describe(self) -> str:
        if self.is_hub:
            return f"{HUB_PREFIX}{self.builder}{':' + self.config if self.config else ''} (split {self.split})"
        names = ", ".join(self.files[:3]) + (f" and {len(self.files) - 3} more" if len(self.files) > 3 else "")
        return f"{self.builder} files {names}"

    def fingerprint(self) -> List[dict]:
        if self.is_hub:
            return [{"hub": self.builder, "config": self.config, "split": self.split}]
        return [_file_fingerprint(f) for f in self.files]


def resolve_sources(specs: Sequence[str], key: str, default_split: str) -> List[Source]:
    """Expand a config list (data.train or data.validation) into Sources, failing early on what cannot be read."""
    files: List[str] = []
    sources: List[Source] = []
    for spec in specs:
        if spec.startswith(HUB_PREFIX):
            sources += _group(files)
            files = []
            parts = spec[len(HUB_PREFIX):].split(":")
            if not parts[0] or len(parts) > 3:
                raise DataError(f"{key}: {spec!r} is not a hub dataset name; write hf:NAME[:CONFIG[:SPLIT]]")
            name, config, split = (parts + [None, None])[:3]
            sources.append(Source(builder=name, config=config or None, split=split or default_split))
        else:
            files += _expand(spec, key)
    return sources + _group(files)


def describe(sources: Sequence[Source]) -> str:
    return "; ".join(s.describe() for s in sources)


def fingerprint(sources: Sequence[Source]) -> List[dict]:
    return [fp for s in sources for fp in s.fingerprint()]


def iter_texts(sources: Sequence[Source], text_field: str, sample_by: str,
               batch_size: int = 1024) -> Iterator[List[Optional[str]]]:
    """Batches of document texts, in source order (a json/parquet cell may be None)."""
    for source in sources:
        dataset = _load(source, sample_by)
        column = text_field if source.is_hub or source.builder != "text" else "text"  # the text builder's column
        try:
            for batch in dataset.iter(batch_size=batch_size):
                if column not in batch:
                    raise DataError(
                        f"{source.describe()} has no column {column!r} (columns: {', '.join(batch)}); "
                        "set data.text_field to the column that holds the text"
                    )
                yield batch[column]
        except DataError:
            raise
        except (OSError, ValueError) as e:  # unreadable gzip, bad UTF-8 or JSON, a lost connection
            raise DataError(f"cannot read {source.describe()}: {type(e).__name__}: {e}") from e


def iter_lines(sources: Sequence[Source], text_field: str, sample_by: str) -> Iterator[List[str]]:
    """Batches of the non-blank lines of every document (what the tokenizer trains on)."""
    for texts in iter_texts(sources, text_field, sample_by):
        yield [line for text in texts if text for line in text.split("\n") if line and not line.isspace()]


def read_documents(specs: Sequence[str], key: str, text_field: str = "text") -> Iterator[str]:
    """The non-empty documents of files named on a command line (`launch/evaluate.py --text`, `launch/analyze.py
    --text`): a .txt file, gzipped or not, is one document; each row of a .jsonl/.json/.parquet file is one. The
    same reader as the training data's, so every format the pipeline prepares can be scored too."""
    for texts in iter_texts(resolve_sources(specs, key, "validation"), text_field, sample_by="document"):
        yield from (text for text in texts if text)


def _load(source: Source, sample_by: str):
    import datasets  # heavy (about a second); imported only when text is read

    try:
        if source.is_hub:
            return datasets.load_dataset(source.builder, source.config, split=source.split, streaming=True)
        extra = {"sample_by": sample_by} if source.builder == "text" else {}
        return datasets.load_dataset(source.builder, data_files=list(source.files), split="train",
                                     streaming=True, **extra)
    except (OSError, ValueError) as e:
        hint = ("; hub datasets need a network (HF_HUB_OFFLINE and HF_DATASETS_OFFLINE unset): prepare on a "
                "machine that has one and copy data.dir, or use local files") if source.is_hub else ""
        raise DataError(f"cannot open {source.describe()}: {type(e).__name__}: {e}{hint}") from e


def _expand(spec: str, key: str) -> List[str]:
    """A file, a directory (its supported files, recursively) or a glob -> sorted absolute paths."""
    path = Path(spec).expanduser()
    if path.is_dir():
        found = sorted(str(p) for p in path.rglob("*") if p.is_file() and _builder(p.name))
    elif path.is_file():
        found = [str(path)]
    else:
        found = sorted(p for p in glob.glob(str(path), recursive=True) if os.path.isfile(p))
    if not found:
        where = "" if path.is_absolute() else f" (relative to {os.getcwd()})"
        raise NoInputFiles(f"{key}: no input files match {spec!r}{where}; check the path or glob, "
                           f"or name a hub dataset as {HUB_PREFIX}NAME[:CONFIG[:SPLIT]]")
    for f in found:
        if not _builder(f):
            raise DataError(f"{key}: {f} is not a format this pipeline reads; use .txt, .jsonl, .json or .parquet "
                            "files (text and json optionally gzipped: .txt.gz, .jsonl.gz)")
    return [os.path.abspath(f) for f in found]


def _builder(name: str) -> Optional[str]:
    suffixes = Path(name).suffixes
    if suffixes[-1:] == [".gz"]:
        suffixes = suffixes[:-1]
        if suffixes[-1:] == [".parquet"]:  # parquet compresses internally; datasets cannot read it gzipped
            return None
    return BUILDERS.get(suffixes[-1]) if suffixes else None


def _group(files: List[str]) -> List[Source]:
    """Consecutive files with the same builder share one load_dataset call; order is kept."""
    groups: List[Source] = []
    for f in files:
        builder = _builder(f)
        if groups and groups[-1].builder == builder:
            groups[-1] = Source(builder, groups[-1].files + (f,))
        else:
            groups.append(Source(builder, (f,)))
    return groups


def _file_fingerprint(path: str) -> dict:
    size = os.path.getsize(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= 2 << 20:
            h.update(f.read())
        else:
            h.update(f.read(1 << 20))
            f.seek(size - (1 << 20))
            h.update(f.read(1 << 20))
    return {"file": os.path.basename(path), "bytes": size, "sha256_ends": h.hexdigest()}
