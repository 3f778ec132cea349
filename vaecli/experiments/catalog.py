"""What `vae runs` shows: one row per run folder, read defensively. A half-written or broken
run (a config cut short, a metrics line cut by a crash, a status from a killed process) becomes a
row that says so, never an error. No torch here, so listing runs is instant.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..runtime import runs
from . import sweep
from ..errors import UsageError

SORT_KEYS = ("started", "name", "elbo", "iwae", "mig", "wall", "steps", "state")
_RUN_MARKERS = (runs.CONFIG_FILE, runs.MODEL_FILE, runs.STATUS_FILE, runs.METRICS_FILE)


@dataclass
class Row:
    name: str  # the folder, relative to the listed one
    path: str  # the run folder
    state: str  # finished | interrupted | running | crashed | broken | pending (a sweep job not started)
    dataset: str | None = None  # dataset= of the run
    model: str | None = None  # model= of the run
    overrides: list[str] = field(default_factory=list)  # as typed (dataset= and model= have their columns)
    step: int | None = None  # optimizer steps done
    epoch: int | None = None  # epochs done (the last test evaluation)
    epochs: int | None = None  # trainer.epochs
    test_elbo: float | None = None  # the last test ELBO, nats
    test_kl: float | None = None  # the last test KL, nats
    bound: bool | None = None  # the ELBO and IWAE figures bound -log P(x) of the data as stored (bounds.py)
    active_units: int | None = None  # of the finished run's summary
    latent_dim: int | None = None  # dimensions of z
    iwae: dict | None = None  # the last eval-iwae: {"bound", "se", "k", "n", "split"}
    mig: float | None = None  # the last eval-disentanglement
    factor_metrics: dict | None = None  # its other metrics: dci, sap, factor_vae, beta_vae (headline figures)
    fid: dict | None = None  # the last eval-samples: fid, features, sampler, of, n
    recon: dict | None = None  # the last eval-recon: psnr, ssim, lpips, rfid, sharpness, features, n
    wall_seconds: float | None = None  # wall-clock time of all training sessions
    train_seconds: float | None = None  # training time, evaluation excluded
    started: float | None = None  # Unix time of the first session
    note: str | None = None  # why it is broken or crashed

    def to_dict(self) -> dict:
        return asdict(self)


def scan(root: Path, sort: str | None = None) -> list[Row]:
    """The runs under `root` (a runs folder, a sweep folder or one run folder), sweeps' jobs
    included, ordered by `sort` (default: a sweep's own order, else when they started)."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"no runs folder at {root}; train one with 'vae train' or pass the folder: vae runs DIR")
    if sweep.is_sweep(root):
        rows = _sweep_rows(root, root)
    elif _is_run(root):
        rows = [read_row(root, root.name)]
    else:
        rows = []
        for child in sorted(p for p in root.iterdir() if p.is_dir()):
            if sweep.is_sweep(child):
                rows += _sweep_rows(child, root)
            elif _is_run(child):
                rows.append(read_row(child, child.name))
        sort = sort or "started"
    return sort_rows(rows, sort) if sort else rows


def _is_run(path: Path) -> bool:
    return any((path / marker).exists() for marker in _RUN_MARKERS)


def _sweep_rows(sweep_dir: Path, root: Path) -> list[Row]:
    try:
        _, jobs = sweep.load(sweep_dir)
    except UsageError as e:
        return [Row(name=_relative(sweep_dir, root), path=str(sweep_dir), state="broken", note=str(e))]
    rows = []
    for job in jobs:
        folder = sweep_dir / job.name
        name = _relative(folder, root)
        if _is_run(folder):
            rows.append(read_row(folder, name))
        else:
            rows.append(Row(name=name, path=str(folder), state="pending", overrides=_shown(job.overrides)))
    return rows


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root)) if path != root else path.name
    except ValueError:
        return str(path)


def _shown(overrides: list[str]) -> list[str]:
    return [o for o in overrides if o.split("=", 1)[0] not in ("dataset", "model")]


def read_row(run_dir: Path, name: str) -> Row:
    """One run folder as a row; whatever cannot be read is named in `note`."""
    row = Row(name=name, path=str(run_dir), state="broken")
    problems = []
    config = _read_config(run_dir, problems)
    if config:
        row.dataset = _get(config, "dataset", "name")
        row.model = _get(config, "model", "name")
        row.epochs = _get(config, "trainer", "epochs")
        row.bound = _bound(config)
    metrics = runs.read_jsonl(run_dir / runs.METRICS_FILE)
    _fill_from_metrics(row, metrics)
    summary = runs.read_json(run_dir / runs.SUMMARY_FILE)
    if summary:
        _fill_from_summary(row, summary)
    _fill_from_evals(row, runs.read_jsonl(run_dir / runs.EVALS_FILE))
    status = runs.read_json(run_dir / runs.STATUS_FILE)
    if (run_dir / runs.STATUS_FILE).exists() and status is None:
        problems.append(f"{runs.STATUS_FILE} unreadable")
    row.state, why = _state(run_dir, status, row, config is not None)
    if why:
        problems.append(why)
    if status:
        row.overrides = _shown(list(status.get("overrides") or []))
        row.started = _number(status.get("first_started"))
        row.wall_seconds = _wall(status)
    elif config:  # a run from before status.json: what its config changes from the defaults
        row.overrides = _shown(differences_from_defaults(config))
    if row.started is None:
        row.started = _mtime(run_dir)
    row.note = "; ".join(problems) or None
    return row


def _bound(config: dict) -> bool | None:
    """Whether the run's figures are bounds on -log P(x), from its likelihood and data; a config
    saved before dataset.dequantize existed was trained without it."""
    from .. import bounds

    likelihood = _get(config, "likelihood", "name")
    if _get(config, "objective", "name") == "perceptual":  # trained on a loss that is not a likelihood
        return False
    if likelihood not in bounds.LIKELIHOODS:
        return None
    dataset = config.get("dataset") if isinstance(config.get("dataset"), dict) else {}
    return bounds.measure(likelihood, bounds.levels(dataset.get("binarize")), bool(dataset.get("dequantize"))).bound


def differences_from_defaults(config: dict) -> list[str]:
    """KEY=VALUE for each setting of a saved config that differs from the defaults of its group
    options (and GROUP=NAME for options other than the default); [] if today's conf/ cannot
    compose it."""
    import json

    from ..config import GROUPS

    chosen = [f"{g}={config[g]['name']}" for g in GROUPS if isinstance(config.get(g), dict) and config[g].get("name")]
    base, defaults = _defaults(()), _defaults(tuple(chosen))
    if base is None or defaults is None:
        return []
    found = [c for c in chosen if c.split("=", 1)[1] != base.get(c.split("=", 1)[0], {}).get("name")]

    def walk(saved: dict, reference: dict, prefix: str) -> None:
        for key, value in saved.items():
            if isinstance(value, dict):
                walk(value, reference.get(key) or {}, f"{prefix}{key}.")
            elif key != "name" and value != reference.get(key):
                text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
                found.append(f"{prefix}{key}={text}")

    walk(config, defaults, "")
    return found


_composed: dict[tuple, dict | None] = {}


def _defaults(selections: tuple) -> dict | None:
    if selections not in _composed:
        from ..config import load_config

        try:
            _composed[selections] = load_config(list(selections)).tree
        except UsageError:
            _composed[selections] = None
    return _composed[selections]


def _read_config(run_dir: Path, problems: list[str]) -> dict | None:
    import yaml

    path = run_dir / runs.CONFIG_FILE
    if not path.is_file():
        problems.append(f"no {runs.CONFIG_FILE}")
        return None
    try:
        config = yaml.safe_load(path.read_text(errors="replace"))
    except (OSError, yaml.YAMLError):
        config = None
    if not isinstance(config, dict):
        problems.append(f"{runs.CONFIG_FILE} unreadable (half-written?)")
        return None
    return config


def _state(run_dir: Path, status: dict | None, row: Row, has_config: bool) -> tuple[str, str | None]:
    """The run's state and, where it is not plain, why."""
    has_model = (run_dir / runs.MODEL_FILE).is_file()
    if status and status.get("state") in runs.STATES:
        state = status["state"]
        if state == "running" and runs.process_alive(status) is False:
            return "crashed", f"its process {status.get('pid')} is gone (killed?)"
        if state == "crashed":
            return state, status.get("error") or None
        if state == "finished" and not has_model:
            return "broken", f"{runs.MODEL_FILE} is missing"
        return state, None
    # runs from before status.json: judge by the files
    if not has_config:
        return "broken", None
    if not has_model:
        return "crashed", "no checkpoint was written"
    if row.epoch is not None and row.epochs is not None and row.epoch >= row.epochs:
        return "finished", None
    return "interrupted", None


def _fill_from_metrics(row: Row, metrics: list[dict]) -> None:
    for record in reversed(metrics):
        if row.step is None and isinstance(record.get("step"), int):
            row.step = record["step"]
        if record.get("split") == "test":
            row.epoch = record.get("epoch") if isinstance(record.get("epoch"), int) else None
            row.test_elbo, row.test_kl = _number(record.get("elbo")), _number(record.get("kl"))
            row.active_units = record.get("active_units") if isinstance(record.get("active_units"), int) else None
            row.latent_dim = record.get("latent_dim") if isinstance(record.get("latent_dim"), int) else None
            break


def _fill_from_summary(row: Row, summary: dict) -> None:
    row.step = summary.get("step", row.step)
    row.epoch = summary.get("epochs", row.epoch)
    row.test_elbo = _number(summary.get("test_elbo"))
    row.test_kl = _number(summary.get("test_kl"))
    row.active_units = summary.get("active_units")
    row.latent_dim = summary.get("latent_dim")
    row.train_seconds = _number(summary.get("train_seconds"))


def _fill_from_evals(row: Row, evals: list[dict]) -> None:
    for record in evals:
        if record.get("kind") == "iwae" and _number(record.get("bound")) is not None:
            row.iwae = {key: record.get(key) for key in ("bound", "se", "k", "n", "split")}
        elif record.get("kind") == "mig":
            row.mig = _number(record.get("mig"))
        elif record.get("kind") == "factor_metrics":
            row.factor_metrics = {key: _number(record.get(key)) for key in ("dci", "sap", "factor_vae", "beta_vae")
                                  if _number(record.get(key)) is not None}
        elif record.get("kind") == "recon" and _number(record.get("psnr")) is not None:
            row.recon = {key: record.get(key) for key in ("psnr", "ssim", "lpips", "rfid", "sharpness", "features", "n")}
        elif record.get("kind") == "samples" and _number(record.get("fid")) is not None:
            row.fid = {key: record.get(key) for key in ("fid", "features", "sampler", "of", "n", "precision", "recall")}


def _wall(status: dict) -> float | None:
    wall = _number(status.get("wall_seconds"))
    if wall is not None and status.get("state") == "running" and _number(status.get("started")) is not None:
        import time

        wall += max(0.0, time.time() - status["started"])
    return wall


def _get(tree: dict, section: str, key: str):
    value = tree.get(section)
    return value.get(key) if isinstance(value, dict) else None


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def sort_rows(rows: list[Row], key: str) -> list[Row]:
    """Best first for the figures (a higher ELBO, IWAE bound or MIG); missing values last."""
    if key not in SORT_KEYS:
        raise UsageError(f"--sort must be one of {', '.join(SORT_KEYS)} (got {key!r})")
    value = {
        "started": lambda r: r.started, "name": lambda r: r.name, "state": lambda r: r.state,
        "elbo": lambda r: None if r.test_elbo is None else -r.test_elbo,
        "iwae": lambda r: None if not r.iwae else -r.iwae["bound"],
        "mig": lambda r: None if r.mig is None else -r.mig,
        "wall": lambda r: r.wall_seconds, "steps": lambda r: None if r.step is None else -r.step,
    }[key]
    return sorted(rows, key=lambda r: (value(r) is None, value(r) if value(r) is not None else 0))
