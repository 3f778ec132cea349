"""Sweeps (`vae train -m beta=1,4,8 seed=0,1,2`): Hydra's basic sweeper expands the overrides
into the cartesian product of jobs, and each job is an ordinary run in its own folder under one
sweep folder:

runs/<time>-sweep/
  sweep.json                 the command's overrides and every job (index, name, overrides)
  0-beta=1,seed=0/           a run folder (runs.py), status.json saying how it went
  1-beta=1,seed=1/
  ...

Jobs run one after the other in this process (under torchrun: on every rank). A failed job is
recorded in its status.json and the next one starts; an interrupt stops the sweep after the
current job's checkpoint; `vae train --resume SWEEP_DIR` skips finished jobs, resumes the ones
with a checkpoint and starts the rest. No torch here: run_jobs calls train.fit lazily.
"""

from __future__ import annotations

import re
import signal
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from ..runtime import runs
from ..errors import Interrupted, UsageError, VaeError

MANIFEST = "sweep.json"


@dataclass(frozen=True)
class Job:
    index: int
    name: str  # the folder name: "<index>-<swept overrides>"
    overrides: list[str]  # the job's full override list
    swept: list[str]  # the overrides that vary across the sweep ("beta=4", "seed=1")


def _parser():
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from ..config import config_dir

    # the config loader lets glob(...) list the options of a config group
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(config_dir())))
    return OverridesParser.create(config_loader=loader)


def expand(arguments: list[str]) -> list[Job]:
    """The jobs of `vae train -m ARGUMENTS`, in Hydra's order (the last override varies fastest).
    Sweep syntax is Hydra's: a,b,c  range(start,stop[,step])  choice(a,b)  glob(pattern)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    for text in arguments:
        if "=" not in text:
            raise UsageError(f"override '{text}' is not KEY=VALUE (e.g. beta=1,4,8 or seed=range(3))")
    try:
        parsed = _parser().parse_overrides(arguments)
        swept_keys = {o.get_key_element() for o in parsed if o.is_sweep_override()}
        (batch,) = BasicSweeper.split_arguments(parsed, None)
    except Exception as e:  # hydra's parse errors and unsupported sweeps (interval(...))
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        reason = lines[1] if len(lines) > 1 and lines[0].startswith("Error parsing") else (lines[0] if lines else type(e).__name__)
        raise UsageError(f"cannot expand the sweep: {reason} (the basic sweeper takes a,b,c, range(), "
                         "choice() and glob())") from None
    jobs = []
    for index, overrides in enumerate(batch):
        swept = [o for o in overrides if o.split("=", 1)[0] in swept_keys]
        jobs.append(Job(index, job_name(index, swept), list(overrides), swept))
    if not jobs:
        raise UsageError("the sweep has no jobs (an empty range or glob?)")
    return jobs


def job_name(index: int, swept: list[str]) -> str:
    """"3-beta=4,seed=1": safe as a folder name (a '/' in a value becomes '_'), at most ~100 characters."""
    text = ",".join(swept)
    text = re.sub(r"[^A-Za-z0-9=,._+\-\[\]()]", "_", text)[:96]
    return f"{index}-{text}" if text else str(index)


def validate(jobs: list[Job]) -> list:
    """Compose every job's config before any run starts: a key that does not exist or a value of
    the wrong type stops the sweep here, naming the job. Returns the Composed configs."""
    from ..config import load_config

    composed = []
    for job in jobs:
        try:
            composed.append(load_config(job.overrides))
        except UsageError as e:
            where = ",".join(job.swept) or " ".join(job.overrides)
            raise UsageError(f"sweep job {job.index} ({where}): {e}") from None
    return composed


def is_sweep(path: Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def create(sweep_dir: Path, arguments: list[str], jobs: list[Job]) -> None:
    sweep_dir = Path(sweep_dir)
    if sweep_dir.exists() and (not sweep_dir.is_dir() or any(sweep_dir.iterdir())):
        raise UsageError(f"--run-dir {sweep_dir} exists and is not an empty folder; a sweep needs a new one")
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VaeError(f"cannot create sweep folder {sweep_dir}: {e.strerror or e}") from None
    runs.write_json(sweep_dir / MANIFEST, {"arguments": arguments, "created": time.time(),
                                           "jobs": [asdict(job) for job in jobs]})


def load(sweep_dir: Path) -> tuple[list[str], list[Job]]:
    """The arguments and jobs of a sweep folder; a broken manifest is a UsageError naming it."""
    manifest = runs.read_json(Path(sweep_dir) / MANIFEST)
    try:
        return list(manifest["arguments"]), [Job(**job) for job in manifest["jobs"]]
    except (TypeError, KeyError) as e:
        raise UsageError(f"{Path(sweep_dir) / MANIFEST} is not a sweep manifest ({e}); start a new sweep") from None


def job_state(job_dir: Path) -> str:
    """finished, resumable (a checkpoint exists) or new."""
    status = runs.read_json(job_dir / runs.STATUS_FILE) or {}
    if status.get("state") == "finished" and (job_dir / runs.SUMMARY_FILE).is_file():
        return "finished"
    if (job_dir / runs.MODEL_FILE).is_file() and (job_dir / runs.CONFIG_FILE).is_file():
        return "resumable"
    return "new"


@dataclass
class Outcome:
    job: Job
    run_dir: Path
    state: str  # finished, skipped (finished before), crashed
    summary: dict | None = None
    error: str | None = None


def describe(event: str, job: Job, n: int, outcome: Outcome | None, sweep_dir: Path) -> str:
    """The line a sweep prints when a job starts ("start") or ends: its folder, or how it went.
    n: the sweep's job count (0: not known ahead, as in a search)."""
    head = f"sweep [{job.index + 1}/{n}] " if n else f"sweep [{job.index + 1}] "
    head += ",".join(job.swept) or job.name
    if event == "start":
        return f"{head} -> {Path(sweep_dir) / job.name}"
    if outcome.state == "skipped":
        return f"{head}: finished before, skipped"
    if outcome.state == "crashed":
        return f"{head}: failed: {outcome.error}"
    s = outcome.summary or {}
    return f"{head}: test ELBO {s.get('test_elbo', float('nan')):.2f} nats in {s.get('train_seconds', 0.0):.1f} s"


def run_job(sweep_dir: Path, job: Job, dist, callbacks: list) -> Outcome:
    """One job of a sweep in its folder: skipped when finished, resumed from its checkpoint, else
    started. An interrupt propagates (Interrupted, saying how to finish the sweep); any other
    failure is recorded in the job's status.json and returned as a crashed Outcome (under torchrun
    it propagates: the ranks could not go on together)."""
    from ..runtime import distributed
    from ..training import trainer as training
    from ..config import load_config, resume_config

    run_dir = Path(sweep_dir) / job.name
    state = job_state(run_dir)
    if state == "finished":
        return Outcome(job, run_dir, "skipped", summary=runs.read_json(run_dir / runs.SUMMARY_FILE))
    try:
        composed = resume_config(run_dir, []) if state == "resumable" else load_config(job.overrides)
        summary = training.fit(composed, run_dir, resume=state == "resumable", dist=dist, callbacks=callbacks)
        return Outcome(job, run_dir, "finished", summary=summary.to_dict() if summary else None)
    except (Interrupted, KeyboardInterrupt) as e:  # KeyboardInterrupt: Ctrl-C between two jobs' training
        command = distributed.resume_command(Path(sweep_dir), dist.world)
        saved = " (its checkpoint is saved)" if isinstance(e, Interrupted) else ""
        raise Interrupted(f"sweep interrupted in job {job.name}{saved}; finish the sweep with: {command}",
                          getattr(e, "signum", signal.SIGINT), getattr(e, "announce", dist.main)) from None
    except Exception as e:
        if dist.world > 1:
            raise
        error = (str(e).strip() or type(e).__name__).splitlines()[0]
        if not isinstance(e, VaeError):  # a bug, not a user's mistake: keep the traceback for the report
            error = f"{type(e).__name__}: {error} (traceback in {run_dir / 'traceback.txt'})"
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "traceback.txt").write_text(traceback.format_exc())
        if (runs.read_json(run_dir / runs.STATUS_FILE) or {}).get("state") != "crashed":
            runs.mark_crashed(run_dir, job.overrides, error)  # it failed before training began
        return Outcome(job, run_dir, "crashed", error=error)


def run_jobs(sweep_dir: Path, jobs: list[Job], dist, callbacks_for: Callable[[Job], list],
             notify: Callable[[str, Job, Outcome | None], None]) -> list[Outcome]:
    """Train every job not yet finished, one after the other in this process (run_job).
    `notify("start" | "end", job, outcome)` reports progress; `callbacks_for(job)` gives the
    trainer callbacks (the progress bar). An interrupt stops the sweep."""
    outcomes = []
    for job in jobs:
        if job_state(Path(sweep_dir) / job.name) != "finished":
            notify("start", job, None)
        outcome = run_job(sweep_dir, job, dist, callbacks_for(job))
        outcomes.append(outcome)
        notify("end", job, outcome)
    return outcomes
