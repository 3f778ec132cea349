"""The run folder: its paths, a new run's name, finding runs (`--ckpt`, the latest run), and
metrics.jsonl. No torch here; checkpoint.py reads and writes the safetensors files.

runs/<name>/
  config.yaml                resolved config (what --resume composes from)
  model.safetensors          weights + metadata (checkpoint.py)
  trainer.safetensors        optimizer, RNG, scaler state (checkpoint.py)
  trainer.next.safetensors   only while a checkpoint is being written (the commit protocol)
  metrics.jsonl              one JSON object per logged training step and per test evaluation
  samples/epoch_NNN.png      the sample grid after an epoch
  status.json                running / finished / interrupted / crashed, pid and host, wall time, overrides
  summary.json               the TrainSummary of a finished run
  evals.jsonl                one line per eval-iwae / eval-disentanglement result (vae runs shows the last)
A VQ-VAE run also holds its second stage, the prior over its codes (`vae train-prior`), in
files of the same roles: prior.config.yaml, prior.safetensors, prior.trainer(.next).safetensors,
prior.metrics.jsonl, prior_samples/. A `Stage` names one set.
"""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_write
from ..errors import UsageError, VaeError

RUNS_DIR = Path("runs")
CONFIG_FILE = "config.yaml"
MODEL_FILE = "model.safetensors"
TRAINER_FILE = "trainer.safetensors"
TRAINER_NEXT = "trainer.next.safetensors"
METRICS_FILE = "metrics.jsonl"
SAMPLES_DIR = "samples"
STATUS_FILE = "status.json"
SUMMARY_FILE = "summary.json"
EVALS_FILE = "evals.jsonl"
STATES = ("running", "finished", "interrupted", "crashed")


@dataclass(frozen=True)
class Stage:
    """The files of one trained model in a run folder."""

    kind: str  # "model" (the VAE) or "prior" (a VQ-VAE's prior over codes)
    config: str
    model: str
    trainer: str
    trainer_next: str
    metrics: str
    samples: str


MODEL = Stage("model", CONFIG_FILE, MODEL_FILE, TRAINER_FILE, TRAINER_NEXT, METRICS_FILE, SAMPLES_DIR)
PRIOR = Stage("prior", "prior.config.yaml", "prior.safetensors", "prior.trainer.safetensors",
              "prior.trainer.next.safetensors", "prior.metrics.jsonl", "prior_samples")


def write_text(path: Path, text: str) -> None:
    atomic_write(Path(path), lambda tmp: tmp.write_text(text))


# ---------------------------------------------------------------------------------------------
# Creating and finding runs


def new_run_dir(*parts: str, root: Path = RUNS_DIR) -> Path:
    """root/<time>-<part>-<part>... (runs/<time>-<dataset>-<model>, runs/<time>-sweep), with -1,
    -2, ... when that name is taken."""
    base = root / "-".join([time.strftime('%Y%m%d-%H%M%S'), *parts])
    path, i = base, 1
    while path.exists():
        path, i = Path(f"{base}-{i}"), i + 1
    return path


def check_new_target(run_dir: Path) -> None:
    """A new run may go into a missing or existing folder, but never over another run."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--run-dir {run_dir} exists and is not a folder")
    if (run_dir / MODEL_FILE).exists():
        raise UsageError(f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                         "or choose another --run-dir")


def create(run_dir: Path, config_yaml: str, name: str = CONFIG_FILE) -> None:
    """Make the folder and (re)write its config file."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VaeError(f"cannot create run folder {run_dir}: {e.strerror or e}") from None
    write_text(run_dir / name, config_yaml)


def remove_stale_temp_files(run_dir: Path) -> None:
    """Half-written `.*.tmp` files of a killed process (atomic_write's temporaries)."""
    for stale in Path(run_dir).glob(".*.tmp"):
        stale.unlink(missing_ok=True)


def latest_run(root: Path = RUNS_DIR) -> Path | None:
    """The run folder under `root` whose model.safetensors was written most recently."""
    if not root.is_dir():
        return None
    candidates = [p for p in root.glob(f"*/{MODEL_FILE}") if p.is_file()]
    return max(candidates, key=lambda p: p.stat().st_mtime).parent if candidates else None


def resolve(path: str | Path | None) -> Path:
    """--ckpt: a run folder, a model.safetensors file, or None for the latest run under ./runs."""
    if path is None:
        run = latest_run()
        if run is None:
            raise UsageError(f"no trained run under ./{RUNS_DIR}; train one with 'vae train' or pass --ckpt PATH")
        return run / MODEL_FILE
    p = Path(path)
    if p.is_dir():
        if not (p / MODEL_FILE).is_file():
            raise UsageError(f"{p} holds no {MODEL_FILE}; pass a run folder or a .safetensors file")
        return p / MODEL_FILE
    if not p.exists():
        raise UsageError(f"no checkpoint at {p}")
    return p


# ---------------------------------------------------------------------------------------------
# metrics.jsonl


def append_metrics(run_dir: Path, record: dict, name: str = METRICS_FILE) -> None:
    try:
        with open(Path(run_dir) / name, "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as e:
        raise VaeError(f"cannot append to {Path(run_dir) / name}: {e.strerror or e}") from None


def truncate_metrics(run_dir: Path, step: int, name: str = METRICS_FILE) -> None:
    """Keep the metrics.jsonl lines up to `step` (the checkpoint a run resumes from): lines
    logged after it, and a line cut short by a crash, would otherwise appear twice or break
    readers."""
    path = Path(run_dir) / name
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line)
    write_text(path, "".join(line + "\n" for line in kept))


def read_metrics(run_dir: Path) -> list[dict]:
    """RUN/metrics.jsonl -> records; a missing file or a broken line is a UsageError naming it."""
    if not Path(run_dir).is_dir():
        raise UsageError(f"{run_dir} is not a run folder")
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise UsageError(f"no metrics file at {path}")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise UsageError(f"{path}:{number} is not a JSON line") from None
        if isinstance(record, dict):
            records.append(record)
    if not records:
        raise UsageError(f"{path} holds no metrics yet")
    return records


# ---------------------------------------------------------------------------------------------
# status.json, summary.json, evals.jsonl: what `vae runs` reads


def read_json(path: Path) -> dict | None:
    """A small JSON object file, or None when it is missing, unreadable or not an object."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_json(path: Path, value: dict) -> None:
    write_text(path, json.dumps(value, indent=1) + "\n")


@contextmanager
def session(run_dir: Path, overrides: list[str], enabled: bool = True):
    """Keep RUN/status.json true while a training session runs: "running" (with this process's
    pid and host, so a killed run reads as crashed later), then "finished", "interrupted" or
    "crashed" (with the error), the wall time summed over sessions and the overrides of every
    session. Yields a function that records the finished run's summary (summary.json)."""
    if not enabled:
        yield lambda summary: None
        return
    path = Path(run_dir) / STATUS_FILE
    before = read_json(path) or {}
    started = time.time()
    status = {"state": "running", "pid": os.getpid(), "host": socket.gethostname(), "started": started,
              "first_started": before.get("first_started", started),
              "wall_seconds": float(before.get("wall_seconds") or 0.0),
              "overrides": [*before.get("overrides", []), *overrides], "error": None}
    write_json(path, status)
    try:
        yield lambda summary: write_json(Path(run_dir) / SUMMARY_FILE, summary)
        status["state"] = "finished"
    except BaseException as e:
        interrupted = type(e).__name__ in ("Interrupted", "KeyboardInterrupt")
        status["state"] = "interrupted" if interrupted else "crashed"
        status["error"] = None if interrupted else (str(e).strip() or type(e).__name__).splitlines()[0]
        raise
    finally:
        status["wall_seconds"] += time.time() - started
        status["ended"] = time.time()
        write_json(path, status)


def mark_crashed(run_dir: Path, overrides: list[str], error: str) -> None:
    """A run that failed before its training session began (its data missing, say)."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    now = time.time()
    write_json(Path(run_dir) / STATUS_FILE, {"state": "crashed", "pid": os.getpid(), "host": socket.gethostname(),
                                             "started": now, "first_started": now, "ended": now,
                                             "wall_seconds": 0.0, "overrides": overrides, "error": error})


def process_alive(status: dict) -> bool | None:
    """Whether the process a "running" status names still runs (None: it ran on another host)."""
    if status.get("host") != socket.gethostname():
        return None
    try:
        os.kill(int(status.get("pid")), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError, OverflowError):
        return True
    return True


def append_eval(run_dir: Path, record: dict) -> bool:
    """Add one evaluation result to RUN/evals.jsonl; False when the folder is not a run folder
    (a bare .safetensors file) or cannot be written. (tracking.append_eval also hands it to the
    run's experiment tracker: the commands call that one.)"""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        return False
    try:
        with open(run_dir / EVALS_FILE, "a") as f:
            f.write(json.dumps({"time": time.time(), **record}) + "\n")
    except OSError:
        return False
    return True


def read_jsonl(path: Path) -> list[dict]:
    """The JSON objects of a .jsonl file; broken lines (a crash mid-write) and a missing file are skipped."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return []
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records
