"""What a study run has produced so far, read from its run directory: the steps of its pipeline are done when
their outputs exist, which is how an interrupted study resumes and a complete one is not redone.

    <study>/<run>/checkpoints/step_NNNNNNN    trained (the final step's checkpoint)
    <study>/<run>/analysis/step_NNNNNNN/      angular / drop / grad_norms .csv .png .json (launch/analyze.py)
        validation.json                       the final perplexity on the held-out work (launch/evaluate.py)
    <study>/<run>/metrics.jsonl               the trainer's train and eval records (loss curves)
    <study>/<run>/diagnostics/grad_norms.jsonl  per-layer gradient norms during training
    <study>/study_log.jsonl                   the driver's record: each step's wall time, each invocation's
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional

from ..checkpoint import complete_checkpoints, tag_for
from ..diagnostics.report import KINDS

VALIDATION = "validation.json"
LOG = "study_log.jsonl"


def read_jsonl(path: Path, kind: Optional[str] = None) -> List[dict]:
    """The records of a JSONL file (of one `kind`), skipping a line cut short by a killed writer."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if kind is None or record.get("kind") == kind:
            records.append(record)
    return records


def metrics(run_dir: Path, kind: str) -> List[dict]:
    """The trainer's metrics.jsonl records of one kind (train, eval), one per step: a resumed run logs the steps
    after its checkpoint again, and the later record wins."""
    by_step = {m["step"]: m for m in read_jsonl(Path(run_dir) / "metrics.jsonl", kind)}
    return [by_step[s] for s in sorted(by_step)]


def training_grad_norms(run_dir: Path) -> List[dict]:
    by_step = {m["step"]: m for m in read_jsonl(Path(run_dir) / "diagnostics" / "grad_norms.jsonl")}
    return [by_step[s] for s in sorted(by_step)]


def final_step(run_dir: Path) -> int:
    found = complete_checkpoints(Path(run_dir) / "checkpoints")
    return found[-1].step if found else 0


def is_trained(run_dir: Path, steps: int) -> bool:
    return final_step(run_dir) >= steps


def analysis_dir(run_dir: Path, steps: int) -> Path:
    return Path(run_dir) / "analysis" / tag_for(steps)


def missing_analyses(run_dir: Path, steps: int) -> List[str]:
    folder = analysis_dir(run_dir, steps)
    return [kind for kind in KINDS if not (folder / f"{kind}.json").is_file()]


def validation(run_dir: Path, steps: int) -> Optional[dict]:
    path = analysis_dir(run_dir, steps) / VALIDATION
    return json.loads(path.read_text()) if path.is_file() else None


def analyses(run_dir: Path, steps: int) -> Dict[str, dict]:
    folder = analysis_dir(run_dir, steps)
    return {kind: json.loads((folder / f"{kind}.json").read_text())
            for kind in KINDS if (folder / f"{kind}.json").is_file()}
