"""`mixln-norm-study` (`launch/norm_study.py`): the CPU-scale norm-placement study, in one command.

    python launch/norm_study.py --jobs 2                       # every run, two at a time -> runs/cpu_norm_study
    python launch/norm_study.py --out /data/study --report docs/results/cpu_norm_study.md
    python launch/norm_study.py --smoke --out /tmp/smoke       # 2 schemes, a tiny model, 20 steps: seconds
    python launch/norm_study.py --report-only                  # the report from whatever runs are complete

Trains the same 12-layer LLaMA (configs/experiment/cpu_norm_study.yaml) once per norm placement, for three
alphas of Mix-LN more and with two more seeds of Pre-LN and Mix-LN (mixln_dist/study/plan.py lists the runs),
then analyses every run (`launch/analyze.py all`: angular distance, layer-removal drop, gradient profile),
scores it on the held-out work (`launch/evaluate.py`: Moby Dick, whole), and writes a markdown report with its
figures next to it (docs/results/cpu_norm_study.md). Each step is skipped when its outputs exist: an interrupted
study (Ctrl-C, SIGTERM: the running trainers checkpoint) resumes where it stopped, a complete one is not redone.
Each run is a process of its own with one thread (OMP_NUM_THREADS=1); --jobs N runs N at once.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Optional, Sequence

from ..errors import StudyError
from ..files import write_atomic
from ..paths import home
from ..study import runs as study_runs
from ..study.plan import EXPERIMENT, FULL, SMOKE, Settings, StudyRun, full_plan, smoke_plan
from .common import run


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="launch/norm_study.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="the study folder: runs, prepared data, logs (default: "
                                            "$MIXLN_HOME/runs/cpu_norm_study, or ..._smoke with --smoke)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained and analysed at once, one thread each "
                                                      "(default: 1; one per free core)")
    p.add_argument("--smoke", action="store_true", help="2 schemes, a tiny model, a few steps (the test suite's)")
    p.add_argument("--report", type=Path, metavar="FILE",
                   help="the markdown report; its figures go to a folder of the same name beside it "
                        "(default: <out>/cpu_norm_study.md)")
    p.add_argument("--report-only", action="store_true", help="train nothing: the report from the complete runs")
    p.add_argument("--only", nargs="+", metavar="RUN", help="these runs of the plan only (names as in the report)")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f"--jobs must be at least 1, got {args.jobs}")
    return args


class Study:
    """The plan, where it lives, and the record of what the driver did (study_log.jsonl)."""

    def __init__(self, out: Path, smoke: bool):
        from ..config import compose

        self.out, self.smoke = out.resolve(), smoke
        self.settings: Settings = SMOKE if smoke else FULL
        self.plan: List[StudyRun] = smoke_plan() if smoke else full_plan()
        self.data_dir = self.out / "data" / self.settings.data
        self.base = [f"experiment={EXPERIMENT}", *self.settings.overrides, f"data.dir={self.data_dir}"]
        self.cfg = compose(self.base)  # a typo in the recipe fails here, before anything is trained
        self.steps = self.cfg.train.steps
        self._log_lock = threading.Lock()
        self._children: set = set()
        self.stopping = False

    def run_dir(self, r: StudyRun) -> Path:
        return self.out / r.name

    def log(self, record: dict) -> None:
        with self._log_lock:
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.out / study_runs.LOG, "a") as f:
                f.write(json.dumps({"time": time.time(), **record}) + "\n")

    # One run: train, analyse, score ---------------------------------------------------------------------------

    def pipeline(self, r: StudyRun) -> None:
        run_dir = self.run_dir(r)
        if not study_runs.is_trained(run_dir, self.steps):
            self._step(r, "train", [
                "-m", "mixln_dist.cli.pretrain", *self.base, *r.overrides, "data.auto_prepare=false",
                f"train.out_dir={self.out}", f"train.run_name={r.name}", "train.progress_bar=false"])
            if not study_runs.is_trained(run_dir, self.steps):
                if self.stopping:
                    return
                raise StudyError(f"{r.name} stopped at step {study_runs.final_step(run_dir)} of {self.steps}; "
                                 f"see {self._log_path(r, 'train')}")
        s = self.settings
        options = {"angular": ["--windows", str(s.angular_windows)], "drop": ["--samples", str(s.drop_samples)],
                   "grad_norms": ["--grad-batches", str(s.grad_batches)]}
        missing = study_runs.missing_analyses(run_dir, self.steps)
        # One `all` when nothing is there (one model load); otherwise only what is missing. A result without its
        # JSON is one a killed analysis left half written: --overwrite replaces it.
        jobs = [("all", sum(options.values(), []))] if len(missing) == 3 else [
            ({"grad_norms": "grads"}.get(k, k), options[k]) for k in missing]
        for command, extra in jobs:
            if not self.stopping:
                self._step(r, "analyze", ["-m", "mixln_dist.cli.analyze", command, str(run_dir), "--device", "cpu",
                                          "--overwrite", *extra])
        if study_runs.validation(run_dir, self.steps) is None and not self.stopping:
            target = study_runs.analysis_dir(run_dir, self.steps) / study_runs.VALIDATION
            self._step(r, "validation", ["-m", "mixln_dist.cli.evaluate", str(run_dir), "--shards", "--device", "cpu",
                                         "--samples", str(s.eval_samples), "--json", str(target)])

    def _log_path(self, r: StudyRun, step: str) -> Path:
        return self.out / "logs" / f"{r.name}.{step}.log"

    def _step(self, r: StudyRun, step: str, args: List[str]) -> None:
        if self.stopping:
            return
        log_path = self._log_path(r, step)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # One thread per run: the models are small, and --jobs runs share the cores.
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", DS_ACCELERATOR="cpu",
                   HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
        for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(key, None)  # each run is a world of its own
        start = time.time()
        print(f"[{time.strftime('%H:%M:%S')}] {r.name}: {step} ...", flush=True)
        with open(log_path, "a") as log:
            proc = subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT, env=env)
            self._children.add(proc)
            try:
                rc = proc.wait()
            finally:
                self._children.discard(proc)
        seconds = time.time() - start
        self.log({"kind": "step", "run": r.name, "step": step, "seconds": seconds, "rc": rc})
        print(f"[{time.strftime('%H:%M:%S')}] {r.name}: {step} done in {seconds:.0f} s (exit {rc})", flush=True)
        if rc and not self.stopping:
            raise StudyError(f"{r.name}: {step} failed (exit {rc}); see {log_path}")

    def stop(self, signum, frame) -> None:
        """First signal: the trainers checkpoint and stop, nothing new starts. The study resumes when rerun."""
        if not self.stopping:
            print(f"signal {signum}: stopping the running steps (trainers checkpoint first)", flush=True)
        self.stopping = True
        for proc in list(self._children):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)


def prepare(study: Study) -> None:
    from ..data import prepare_dataset

    start = time.time()
    prepare_dataset(study.cfg.data)  # a no-op when the study folder holds it already
    study.log({"kind": "step", "run": "", "step": "prepare_data", "seconds": time.time() - start, "rc": 0})


def train_all(study: Study, jobs: int, only: Optional[Sequence[str]]) -> List[str]:
    """Every run's pipeline, `jobs` at a time; the names of the runs that failed."""
    chosen = [r for r in study.plan if not only or r.name in only]
    failed = []

    def one(r: StudyRun) -> None:
        try:
            study.pipeline(r)
        except StudyError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            failed.append(r.name)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(one, chosen))
    return failed


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    return run(lambda: study_main(args))


def study_main(args: argparse.Namespace) -> int:
    from ..study.report import write_report

    out = args.out or home("runs/cpu_norm_study" + ("_smoke" if args.smoke else ""))
    report = args.report or out / "cpu_norm_study.md"
    study = Study(out, args.smoke)
    # The command that reproduces the study: with --report-only, the --jobs the runs were made with.
    made = study_runs.read_jsonl(study.out / study_runs.LOG, "invocation")
    jobs = made[-1]["jobs"] if args.report_only and made else args.jobs
    command = " ".join(["python launch/norm_study.py", *(["--smoke"] if args.smoke else []), f"--jobs {jobs}",
                        f"--out {args.out or out}", *([f"--report {args.report}"] if args.report else [])])
    names = [r.name for r in study.plan]
    unknown = sorted(set(args.only or []) - set(names))
    if unknown:  # before anything is prepared or trained
        raise StudyError(f"--only {' '.join(unknown)}: not in the plan; its runs are {', '.join(names)}")
    failed: List[str] = []
    if not args.report_only:
        start = time.time()
        previous = {sig: signal.signal(sig, study.stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        state = "interrupted"
        try:
            prepare(study)
            failed = train_all(study, args.jobs, args.only)
            state = "stopped" if study.stopping else "failed" if failed else "complete"
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            study.log({"kind": "invocation", "command": command, "jobs": args.jobs, "start": start,
                       "seconds": time.time() - start, "state": state, "failed": failed,
                       "only": list(args.only or [])})
    text = write_report(study.out, study.plan, study.cfg, report, command)
    report.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(report, text)
    print(f"wrote {report}")
    if failed:
        raise StudyError(f"runs that failed: {', '.join(failed)} (their logs are in {study.out / 'logs'}); the "
                         "report shows the others")
    return 1 if study.stopping else 0


if __name__ == "__main__":
    raise SystemExit(main())
