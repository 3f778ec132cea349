"""Experiment trackers as trainer callbacks: `trainer.logger=mlflow` (the MLflow tracking API) and
`trainer.logger=wandb` (Weights & Biases), beside `tensorboard` (callbacks.py); several at once with
`trainer.logger=[tensorboard,mlflow]`. Each gets what TensorBoard gets (train/* at every log line,
test/* after every epoch, the KL per dimension), the run's config as parameters, the model file
and the last sample grid as artifacts, and later evaluations of the run (eval-iwae, eval-samples,
eval-disentanglement: `log_eval`, called by append_eval) as eval/<kind>/<figure>.

metrics.jsonl stays the record; a tracker is a view of it. Which tracked run belongs to a run
folder is kept in RUN/tracking.json, so --resume continues the same tracked run; the figures a
killed session logged after its checkpoint are identical when the resumed run reaches them again
(resume is bit-exact), so a resumed tracker skips the steps it already holds: no step is logged
twice and none is missing.

MLflow: MLFLOW_TRACKING_URI, else a SQLite store `mlflow.db` beside the run folders (the runs
folder, or the sweep folder) with artifacts in `mlartifacts/` there; experiment
MLFLOW_EXPERIMENT_NAME or "vaecli"; the run is named after the run folder. An unreachable store
stops `vae train` before the run folder is made.
W&B: project WANDB_PROJECT or "vaecli"; WANDB_MODE=offline works with no account (files in
RUN/wandb/, `wandb sync` uploads them later); without a login vaecli logs offline and says so.
"""

from __future__ import annotations

import math
import os
import secrets
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from ..runtime import runs
from .callbacks import Callback
from ..errors import UsageError, VaeError

TRACKING_FILE = "tracking.json"
TRACKERS = ("mlflow", "wandb")


def _numbers(values: dict, prefix: str) -> dict[str, float]:
    out = {}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        out[f"{prefix}/{key}"] = float(value)
    return out


def _test_figures(test: dict) -> dict[str, float]:
    figures = _numbers(test, "test")
    figures.update({f"test/kl_dim/z{d}": float(v) for d, v in enumerate(test.get("kl_per_dim") or [])})
    figures.update({f"test/kl_group/{g + 1}": float(v) for g, v in enumerate(test.get("kl_per_group") or [])})
    return figures


def flat_config(run_dir: Path) -> dict[str, str]:
    """config.yaml as dotted keys -> values (MLflow params, W&B config)."""
    import yaml

    try:
        tree = yaml.safe_load((Path(run_dir) / runs.CONFIG_FILE).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    flat: dict[str, str] = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = node

    walk(tree, "")
    return flat


def _saved(run_dir: Path) -> dict:
    return runs.read_json(Path(run_dir) / TRACKING_FILE) or {}


def _save(run_dir: Path, name: str, value: dict) -> None:
    runs.write_json(Path(run_dir) / TRACKING_FILE, {**_saved(run_dir), name: value})


class Tracker(Callback):
    """What both trackers share: when to log, and the steps a resumed run already holds."""

    def __init__(self):
        self.active = False
        self.train_done = -1  # the last train / test step the tracked run holds (a resumed run)
        self.test_done = -1

    def open(self, trainer) -> None: ...
    def send(self, figures: dict[str, float], step: int) -> None: ...
    def attach(self, trainer, finished: bool) -> None: ...

    def on_train_start(self, trainer) -> None:
        if trainer.dist.main and trainer.stage.kind == "model":
            self.open(trainer)
            self.active = True
            if trainer.state.step > 0:
                self.replay(trainer)

    def replay(self, trainer) -> None:
        """A resumed run: send what metrics.jsonl holds (truncated to the checkpoint) and the
        tracker does not (a killed session's last lines may never have reached it), in step order."""
        lines = runs.read_jsonl(Path(trainer.run_dir) / trainer.stage.metrics)
        for line in sorted(lines, key=lambda r: (r.get("step", 0), r.get("split") == "test")):
            step, split = int(line.get("step", 0)), line.get("split")
            values = {k: v for k, v in line.items() if k not in ("step", "epoch", "split")}
            if split == "train" and step > self.train_done:
                self.send(_numbers(values, "train"), step)
                self.train_done = step
            elif split == "test" and step > self.test_done:
                self.send({**_test_figures(values), "test/epoch": float(line.get("epoch", 0))}, step)
                self.test_done = step

    def on_log(self, trainer, epoch: int, values: dict[str, float]) -> None:
        step = trainer.state.step
        if self.active and step > self.train_done:
            self.send(_numbers(values, "train"), step)

    def on_eval(self, trainer, epoch: int, test: dict) -> None:
        step = trainer.state.step
        if self.active and step > self.test_done:
            self.send({**_test_figures(test), "test/epoch": float(epoch)}, step)

    def on_train_end(self, trainer) -> None:
        if self.active:
            self.active = False
            self.attach(trainer, trainer.state.step >= trainer.total_steps)


# ---------------------------------------------------------------------------------------------
# MLflow


def mlflow_uri(runs_root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(runs_root).resolve() / 'mlflow.db'}"


def _mlflow_client(uri: str):
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise UsageError("trainer.logger=mlflow needs the mlflow package: pip install 'vaecli[mlflow]'") from None
    import logging

    for name in ("mlflow", "alembic"):  # their INFO lines (creating the SQLite tables) are not the user's business
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # an unreachable server fails at once
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:
        with _beside_store(uri):
            client = MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)  # opens (and caches) the store
    except Exception as e:
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise VaeError(f"cannot reach the MLflow tracking store at {uri} ({detail}): start the server, fix "
                       "MLFLOW_TRACKING_URI, or drop trainer.logger=mlflow") from None
    return client


@contextmanager
def _beside_store(uri: str):
    """MLflow's SQLite store makes its default artifact folder `./mlruns` where it is opened: open
    it from the store's own folder, so nothing lands in the user's working directory."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    here = os.getcwd()
    os.chdir(Path(uri[len("sqlite:///"):]).parent)
    try:
        yield
    finally:
        os.chdir(here)


class MLflow(Tracker):
    def __init__(self, run_dir: Path):
        super().__init__()
        root = Path(run_dir).resolve().parent
        self.uri = _saved(run_dir).get("mlflow", {}).get("uri") or mlflow_uri(root)
        if self.uri.startswith("sqlite:///"):
            root.mkdir(parents=True, exist_ok=True)  # the runs folder the store sits in (not the run folder)
        self.client = _mlflow_client(self.uri)  # checked before the run folder exists
        self.artifacts = root / "mlartifacts"
        self.run_id: str | None = None

    def open(self, trainer) -> None:
        run_dir = Path(trainer.run_dir)
        saved = _saved(run_dir).get("mlflow")
        client = self.client
        if saved and trainer.state.step > 0:
            self.run_id = saved["run_id"]
            client.update_run(self.run_id, status="RUNNING")
            history = [m.step for m in client.get_metric_history(self.run_id, "train/loss")]
            self.train_done = max(history, default=-1)
            self.test_done = max((m.step for m in client.get_metric_history(self.run_id, "test/elbo")), default=-1)
            return
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "vaecli")
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            location = None if os.environ.get("MLFLOW_TRACKING_URI") else self.artifacts.as_uri()
            experiment_id = client.create_experiment(name, artifact_location=location)
        else:
            experiment_id = experiment.experiment_id
        run = client.create_run(experiment_id, run_name=run_dir.name, tags={"vaecli.run_dir": str(run_dir.resolve())})
        self.run_id = run.info.run_id
        from mlflow.entities import Param

        params = [Param(k, str(v)[:6000]) for k, v in flat_config(run_dir).items()]
        for start in range(0, len(params), 100):
            client.log_batch(self.run_id, params=params[start:start + 100])
        _save(run_dir, "mlflow", {"run_id": self.run_id, "uri": self.uri})

    def send(self, figures: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in figures.items()]
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000])

    def attach(self, trainer, finished: bool) -> None:
        run_dir = Path(trainer.run_dir)
        for name in (runs.MODEL_FILE, runs.CONFIG_FILE):
            if (run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(run_dir / name))
        grids = sorted((run_dir / runs.SAMPLES_DIR).glob("*.png"))
        if grids:
            self.client.log_artifact(self.run_id, str(grids[-1]), artifact_path="samples")
        self.client.set_terminated(self.run_id, "FINISHED" if finished else "KILLED")


# ---------------------------------------------------------------------------------------------
# Weights & Biases


def _wandb_module():
    try:
        import wandb
    except ImportError:
        raise UsageError("trainer.logger=wandb needs the wandb package: pip install 'vaecli[wandb]'") from None
    return wandb


class WandB(Tracker):
    def __init__(self, run_dir: Path):
        super().__init__()
        self.wandb = _wandb_module()
        self.run = None
        self.run_dir = Path(run_dir)

    def _mode(self) -> str:
        mode = os.environ.get("WANDB_MODE")
        if mode:
            return mode
        has_login = bool(os.environ.get("WANDB_API_KEY")) or (Path.home() / ".netrc").is_file()
        if not has_login:
            sys.stderr.write("warning: W&B: no login found (wandb login / WANDB_API_KEY), so logging offline to "
                             f"{self.run_dir}/wandb/; upload later with: wandb sync {self.run_dir}/wandb/offline-run-*\n")
        return "online" if has_login else "offline"

    def open(self, trainer) -> None:
        run_dir = Path(trainer.run_dir)
        saved = _saved(run_dir).get("wandb") or {}
        resumed = bool(saved) and trainer.state.step > 0
        run_id = saved.get("id") if resumed else secrets.token_hex(4)
        if resumed:  # what the earlier sessions' transaction logs hold (a killed one's last lines may be lost)
            held = wandb_history(run_dir)
            self.train_done = max((step for step, key in held if key == "train/loss"), default=-1)
            self.test_done = max((step for step, key in held if key == "test/elbo"), default=-1)
        settings = self.wandb.Settings(silent=True, console="off", x_disable_stats=True)
        self.run = self.wandb.init(project=os.environ.get("WANDB_PROJECT", "vaecli"), name=run_dir.name, id=run_id,
                                   resume="allow", dir=str(run_dir), mode=self._mode(), settings=settings,
                                   config=flat_config(run_dir) if not resumed else None)
        _save(run_dir, "wandb", {"id": run_id})

    def send(self, figures: dict[str, float], step: int) -> None:
        self.run.log(figures, step=step)

    def attach(self, trainer, finished: bool) -> None:
        run_dir = Path(trainer.run_dir)
        grids = sorted((run_dir / runs.SAMPLES_DIR).glob("*.png"))
        if grids:
            self.run.log({"samples": self.wandb.Image(str(grids[-1]))}, step=trainer.state.step, commit=True)
        if (run_dir / runs.MODEL_FILE).is_file():
            artifact = self.wandb.Artifact(f"model-{self.run.id}", type="model")
            artifact.add_file(str(run_dir / runs.MODEL_FILE))
            self.run.log_artifact(artifact)
        self.run.finish(exit_code=0 if finished else 1)
        self.run = None


def _records(run_dir: Path):
    """wandb's protobuf Records in the run's transaction logs (RUN/wandb/*run-*/run-ID.wandb): a
    7-byte header, then LevelDB-style 32 KiB blocks of records (crc, length, type: full / first /
    middle / last). A record cut short by a kill ends that file."""
    from wandb.proto import wandb_internal_pb2 as pb

    for path in sorted(Path(run_dir).glob("wandb/*run-*/run-*.wandb")):
        blob, pos, pending = path.read_bytes(), 7, b""
        while pos + 7 <= len(blob):
            room = 32768 - pos % 32768
            if room < 7:  # a block's tail too short for a record header is padding
                pos += room
                continue
            length, kind = int.from_bytes(blob[pos + 4:pos + 6], "little"), blob[pos + 6]
            if pos + 7 + length > len(blob) or kind not in (1, 2, 3, 4):
                break
            chunk, pos = blob[pos + 7:pos + 7 + length], pos + 7 + length
            if kind in (2, 3):
                pending += chunk
                continue
            record = pb.Record()
            try:
                record.ParseFromString(pending + chunk)
            except Exception:  # a torn record
                break
            pending = b""
            yield record


def wandb_history(run_dir: Path) -> list[tuple[int, str]]:
    """(step, key) of every train/loss and test/elbo entry W&B holds for the run (its transaction
    logs, written in online and offline mode)."""
    found = []
    for record in _records(run_dir):
        if record.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): i.value_json for i in record.history.item}
            if "_step" in items:
                found += [(int(items["_step"]), key) for key in ("train/loss", "test/elbo") if key in items]
    return found


def wandb_summaries(run_dir: Path) -> dict[str, float]:
    """The summary values W&B holds for the run (its transaction logs), the last of each key."""
    import json

    values = {}
    for record in _records(run_dir):
        if record.WhichOneof("record_type") == "summary":
            for item in record.summary.update:
                key = item.key or "/".join(item.nested_key)
                try:
                    values[key] = json.loads(item.value_json)
                except ValueError:
                    continue
    return values


def build(names: list[str], run_dir: Path) -> list[Callback]:
    """The trackers `names` asks for (tensorboard is callbacks.py's)."""
    found: list[Callback] = []
    if "mlflow" in names:
        found.append(MLflow(run_dir))
    if "wandb" in names:
        found.append(WandB(run_dir))
    return found


def append_eval(run_dir: Path, record: dict) -> bool:
    """runs.append_eval (RUN/evals.jsonl), then the run's experiment tracker, if one follows it
    (RUN/tracking.json): what every evaluating command calls."""
    if not runs.append_eval(run_dir, record):
        return False
    if (Path(run_dir) / TRACKING_FILE).is_file():
        try:
            log_eval(run_dir, record)
        except Exception as e:  # the evaluation stands; the tracker missing it is a warning
            sys.stderr.write(f"warning: the evaluation is in {Path(run_dir) / runs.EVALS_FILE} but not in the "
                             f"tracker: {(str(e).splitlines() or [type(e).__name__])[0]}\n")
    return True


def log_eval(run_dir: Path, record: dict) -> None:
    """An evaluation of a tracked run (append_eval) in its tracked runs as eval/<kind>/<figure>:
    MLflow metrics at the model's step; in W&B the run's summary (the run is reopened: W&B's
    history only grows, and training has logged past this step)."""
    saved = _saved(run_dir)
    kind = record.get("kind", "eval")
    figures = {k: v for k, v in _numbers(record, f"eval/{kind}").items()
               if not k.endswith(("/step", "/time", "/seed", "/n"))}
    if not figures:
        return
    if saved.get("mlflow"):
        _mlflow_eval(saved["mlflow"], figures, int(record.get("step") or 0))
    if saved.get("wandb"):
        _wandb_eval(Path(run_dir), saved["wandb"]["id"], figures)


def _mlflow_eval(saved: dict, figures: dict[str, float], step: int) -> None:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    now = int(time.time() * 1000)
    with _beside_store(saved["uri"]):
        client = MlflowClient(tracking_uri=saved["uri"])
        client.search_experiments(max_results=1)
    client.log_batch(saved["run_id"], metrics=[Metric(k, v, now, step) for k, v in figures.items()])


def _wandb_eval(run_dir: Path, run_id: str, figures: dict[str, float]) -> None:
    tracker = WandB(run_dir)
    settings = tracker.wandb.Settings(silent=True, console="off", x_disable_stats=True)
    run = tracker.wandb.init(project=os.environ.get("WANDB_PROJECT", "vaecli"), id=run_id, resume="allow",
                             dir=str(run_dir), mode=tracker._mode(), settings=settings)
    run.summary.update(figures)
    run.finish()
