"""Sweeps through Hydra's own plugins: `vae train -m ... hydra/launcher=joblib` (parallel jobs on
one machine), `hydra/launcher=submitit_local` / `submitit_slurm` (subprocesses / a Slurm
cluster), `hydra/sweeper=optuna` (a search instead of a grid), and their `hydra.launcher.*` /
`hydra.sweeper.*` settings, so a user's Hydra habits and cluster configs work unchanged.

Hydra composes the sweep (conf/config.yaml plus its `hydra` node, where the plugins' options
live), its sweeper turns the arguments into jobs and its launcher runs them, each calling
`JobTask` — which composes the job with vaecli's own `load_config` and trains it with
`sweep.run_job` in the job's ordinary run folder, so folders, status files, `sweep.json`, the
end-of-sweep table, `vae runs` and `--resume SWEEP_DIR` are those of the basic sweep:

SWEEP/
  sweep.json            arguments (the plugins' included) and every job launched
  0-beta=1,seed=0/      a run folder
  optuna.db             hydra/sweeper=optuna: the study (SQLite), so --resume continues it
  .hydra/               Hydra's files: multirun.yaml, the launcher's job folders (submitit's logs
                        and pickles in .hydra/.submitit/), optuna's optimization_results.yaml

Every job reports one number to the sweeper, `--optimize` (default test_elbo): a key of the
training summary, or `iwae` / `iwae@K`, the test set's importance-weighted bound with K samples
(default 100) measured after training. No torch at import.
"""

from __future__ import annotations

import math
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..runtime import runs
from . import sweep
from ..errors import UsageError, VaeError

# what each plugin needs installed: the extra that brings it
PLUGINS = {("launcher", "joblib"): ("hydra_plugins.hydra_joblib_launcher", "launchers"),
           ("launcher", "submitit_local"): ("hydra_plugins.hydra_submitit_launcher", "launchers"),
           ("launcher", "submitit_slurm"): ("hydra_plugins.hydra_submitit_launcher", "launchers"),
           ("launcher", "ray"): ("hydra_plugins.hydra_ray_launcher", None),
           ("sweeper", "optuna"): ("hydra_plugins.hydra_optuna_sweeper", "optuna")}
BUILT_IN = {"launcher": ("basic",), "sweeper": ("basic",)}
STUDY_FILE = "optuna.db"
HYDRA_DIR = ".hydra"
STUDY_NAME = "vae"
MAXIMIZED = ("test_elbo", "iwae", "elbo")  # --optimize keys whose larger value is better


def is_hydra(argument: str) -> bool:
    return argument.startswith(("hydra/", "hydra.", "+hydra."))


def split(arguments: list[str]) -> tuple[list[str], list[str]]:
    """(the jobs' overrides, the hydra/... and hydra.* ones)."""
    return [a for a in arguments if not is_hydra(a)], [a for a in arguments if is_hydra(a)]


def _installed(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # not even the hydra_plugins namespace
        return False


def plugins(hydra_args: list[str]) -> dict[str, str]:
    """{"launcher": name, "sweeper": name} as chosen by hydra/launcher=... and hydra/sweeper=...;
    an unknown group or option, or a plugin that is not installed, is a one-line UsageError."""
    chosen = {"launcher": "basic", "sweeper": "basic"}
    for argument in hydra_args:
        key, _, value = argument.partition("=")
        if not argument.startswith("hydra/"):
            continue
        group = key[len("hydra/"):]
        if group not in chosen:
            raise UsageError(f"vae train -m takes hydra/launcher=... and hydra/sweeper=... (got {argument!r})")
        known = BUILT_IN[group] + tuple(name for g, name in PLUGINS if g == group)
        if value not in known:
            raise UsageError(f"unknown {key}: {value!r}; choose one of {', '.join(known)}")
        chosen[group] = value
    for group, name in chosen.items():
        module, extra = PLUGINS.get((group, name), (None, None))
        if module is not None and not _installed(module):
            install = (f"pip install 'vaecli[{extra}]'" if extra else
                       "pip install hydra-ray-launcher (not supported by vaecli: it pins cloudpickle 2.2.1, which "
                       "the joblib launcher cannot use)")
            raise UsageError(f"hydra/{group}={name} needs the {module.split('.')[-1].replace('_', '-')} plugin: {install}")
    return chosen


def optimize_key(optimize: str) -> tuple[str, int | None]:
    """--optimize: a summary key, or iwae / iwae@K (K importance samples, default 100)."""
    match = re.fullmatch(r"iwae(?:@(\d+))?", optimize)
    if match:
        k = int(match.group(1) or 100)
        if k < 1:
            raise UsageError(f"--optimize iwae@K needs K >= 1 (got {optimize!r})")
        return "iwae", k
    from ..training.trainer import TrainSummary

    numeric = [name for name, kind in TrainSummary.__annotations__.items()
               if kind in ("float", "int", "float | None", "int | None")]
    if optimize not in numeric:
        raise UsageError(f"--optimize takes iwae, iwae@K or a number of the training summary: "
                         f"{', '.join(numeric)} (got {optimize!r})")
    return optimize, None


@dataclass
class JobTask:
    """What a launcher runs for each job (pickled to joblib's and submitit's workers): compose the
    job with vaecli's config, train it in SWEEP/<index>-<swept overrides> (or skip / resume it,
    as the basic sweep does), and return the --optimize figure (NaN for a failed job, which the
    basic sweeper records and optuna counts as a failed trial)."""

    sweep_dir: str
    swept_keys: tuple[str, ...]
    optimize: str = "test_elbo"
    offset: int = 0  # job numbers already used (a resumed optuna study)
    gpus: int = 0  # CUDA devices on the launching machine: job n trains on device n mod gpus
    total: int = 0  # the sweep's job count (0 for a search) and whether to say when each starts and ends
    talk: bool = False

    def __call__(self, cfg) -> float:
        from hydra.core.hydra_config import HydraConfig

        from ..runtime.distributed import Dist

        hydra = HydraConfig.get()
        overrides = [o for o in hydra.overrides.task if not is_hydra(o)]
        index = int(hydra.job.num) + self.offset
        swept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in self.swept_keys]
        if self.gpus > 1 and not any(o.startswith("trainer.device=") for o in overrides):
            overrides.append(f"trainer.device=cuda:{index % self.gpus}")  # one GPU per job
        job = sweep.Job(index, sweep.job_name(index, swept), overrides, swept)
        sweep_dir = Path(self.sweep_dir)
        if self.talk and sweep.job_state(sweep_dir / job.name) != "finished":
            self.say(sweep.describe("start", job, self.total, None, sweep_dir))
        with _vaecli_hydra():
            outcome = sweep.run_job(sweep_dir, job, Dist(), [])
            if self.talk:
                self.say(sweep.describe("end", job, self.total, outcome, sweep_dir))
            if outcome.summary is None:
                return math.nan
            return self.figure(outcome)

    @staticmethod
    def say(line: str) -> None:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def figure(self, outcome) -> float:
        key, k = optimize_key(self.optimize)
        if k is None:
            value = outcome.summary.get(key)
            return math.nan if value is None else float(value)
        saved = runs.read_json(outcome.run_dir / f"optimize_iwae{k}.json")
        if saved is None:  # measured once per job, so a resumed sweep reports the same figure
            saved = {"iwae": iwae_of(outcome.run_dir, k)}
            runs.write_json(outcome.run_dir / f"optimize_iwae{k}.json", saved)
        return float(saved["iwae"])


def iwae_of(run_dir: Path, k: int) -> float:
    """The test set's mean IWAE bound with k samples (eval-iwae's measurement: seed 0, fp32)."""
    import torch

    from ..runtime import checkpoint
    from .. import data
    from ..evaluation import evaluate

    loaded = checkpoint.load_model(run_dir)
    test = data.build(loaded.dataset, "test", loaded.seed)
    torch.manual_seed(0)
    return float(evaluate.iwae_dataset(loaded.model, test, k, precision="fp32")["iwae"])


@contextmanager
def _vaecli_hydra():
    """vaecli's own Compose calls inside a Hydra job: GlobalHydra set aside, then restored."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    backup = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        yield
    finally:
        restore_gh_from_backup(backup)


def swept_keys(job_args: list[str]) -> tuple[str, ...]:
    """The keys whose values vary: Hydra's sweep syntax (a,b  range()  interval()  choice()  glob())."""
    parsed = sweep._parser().parse_overrides(job_args)
    return tuple(o.get_key_element().lstrip("+~") for o in parsed if o.is_sweep_override())


def check_search_space(job_args: list[str]) -> None:
    """Compose one job with each swept key at a value from its range, so a key that does not exist
    (or a value of the wrong type) stops the search before any trial starts."""
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    from ..config import load_config

    parsed = sweep._parser().parse_overrides(job_args)
    sample = []
    for override, text in zip(parsed, job_args):
        if not override.is_sweep_override():
            sample.append(text)
            continue
        value = override.value()
        if isinstance(value, IntervalSweep):
            first = value.start
        elif isinstance(value, RangeSweep):
            first = value.start
        elif isinstance(value, ChoiceSweep):
            first = value.list[0]
        else:
            first = next(iter(override.sweep_iterator()))
        if hasattr(first, "value"):  # a tagged value
            first = first.value
        sample.append(f"{override.get_key_element()}={first}")
    try:
        load_config(sample)
    except UsageError as e:
        raise UsageError(f"the search space does not compose: {e}") from None


def study_trials(sweep_dir: Path) -> int:
    """Trials the stored optuna study has started (0 when there is no study yet)."""
    path = Path(sweep_dir) / STUDY_FILE
    if not path.is_file():
        return 0
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return len(optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{path}").trials)
    except KeyError:
        return 0


def best_trial(sweep_dir: Path) -> dict | None:
    """The stored study's best trial: its number, value, parameters and job folder."""
    path = Path(sweep_dir) / STUDY_FILE
    if not path.is_file():
        return None
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{path}")
    try:
        best = study.best_trial
    except ValueError:  # no trial finished
        return None
    folder = next((p.name for p in Path(sweep_dir).iterdir() if p.is_dir() and p.name.split("-", 1)[0] == str(best.number)),
                  None)
    return {"trial": best.number, "value": best.value, "params": dict(best.params), "run": folder,
            "trials": len(study.trials),
            "complete": sum(t.state.name == "COMPLETE" for t in study.trials)}


def launched_jobs(sweep_dir: Path) -> list[sweep.Job]:
    """The jobs a plugin sweep has launched so far, from their folders (index order)."""
    jobs = []
    for child in Path(sweep_dir).iterdir():
        head = child.name.split("-", 1)[0]
        if not (child.is_dir() and head.isdigit()):
            continue
        status = runs.read_json(child / runs.STATUS_FILE) or {}
        overrides = list(status.get("overrides") or [])
        swept = child.name.split("-", 1)[1].split(",") if "-" in child.name else []
        jobs.append(sweep.Job(int(head), child.name, overrides, swept))
    return sorted(jobs, key=lambda j: j.index)


def check_hydra(arguments: list[str]) -> None:
    """Compose the sweep's Hydra config (its hydra/... and hydra.* overrides) before anything is
    written: a key the launcher or sweeper does not have is a one-line UsageError."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from ..config import config_dir

    GlobalHydra.instance().clear()
    try:
        hydra = Hydra.create_main_hydra2("vae", create_config_search_path(str(config_dir())))
        hydra.compose_config("config", overrides=list(arguments), run_mode=RunMode.MULTIRUN,
                             with_log_configuration=False)
    except Exception as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise UsageError(f"the sweep's hydra settings do not compose: {lines[0] if lines else type(e).__name__}") from None
    finally:
        GlobalHydra.instance().clear()


def run(sweep_dir: Path, arguments: list[str], optimize: str, resuming: bool, total: int = 0,
        talk: bool = False) -> list[sweep.Job]:
    """Run the sweep `arguments` (jobs' overrides and hydra ones) in sweep_dir through Hydra's
    sweeper and launcher; returns the jobs launched (also written to sweep.json)."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra

    from ..config import config_dir

    job_args, hydra_args = split(arguments)
    chosen = plugins(hydra_args)
    key, _ = optimize_key(optimize)
    keys = swept_keys(job_args)
    # Hydra's own files (multirun.yaml, a launcher's job folders and logs) go under SWEEP/.hydra/;
    # the jobs' run folders are JobTask's
    settings = [f"hydra.sweep.dir={Path(sweep_dir).resolve() / HYDRA_DIR}", "hydra.sweep.subdir=${hydra.job.num}",
                "hydra.output_subdir=null", "hydra/job_logging=none", "hydra/hydra_logging=none"]
    offset, trials_left = 0, None
    if chosen["sweeper"] == "optuna":
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # the table says what it found
        check_search_space(job_args)
        settings += [f"hydra.sweeper.storage=sqlite:///{Path(sweep_dir).resolve() / STUDY_FILE}",
                     f"hydra.sweeper.study_name={STUDY_NAME}"]
        if not any(a.startswith("hydra.sweeper.direction=") for a in hydra_args):
            settings.append(f"hydra.sweeper.direction={'maximize' if key in MAXIMIZED else 'minimize'}")
        if resuming:
            offset = study_trials(sweep_dir)
            wanted = next((int(a.split("=", 1)[1]) for a in hydra_args if a.startswith("hydra.sweeper.n_trials=")), 20)
            trials_left = max(wanted - offset, 0)
            settings.append(f"hydra.sweeper.n_trials={trials_left}")
    task = JobTask(str(Path(sweep_dir).resolve()), keys, optimize, offset, _gpus(chosen["launcher"]), total, talk)
    GlobalHydra.instance().clear()
    hydra = Hydra.create_main_hydra2("vae", create_config_search_path(str(config_dir())))
    try:
        if trials_left != 0:  # a resumed search with every trial done has nothing to launch
            hydra.multirun("config", task, [*job_args, *hydra_args, *settings], with_log_configuration=False)
    except (UsageError, VaeError, KeyboardInterrupt):
        raise
    except Exception as e:  # the plugins' own errors (a bad hydra.launcher.* key, a Slurm submission failure)
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise UsageError(f"the {chosen['launcher']} launcher / {chosen['sweeper']} sweeper stopped: "
                         f"{lines[0] if lines else type(e).__name__}") from None
    finally:
        GlobalHydra.instance().clear()
        jobs = launched_jobs(sweep_dir)
        manifest = runs.read_json(Path(sweep_dir) / sweep.MANIFEST) or {}
        runs.write_json(Path(sweep_dir) / sweep.MANIFEST,
                        {**manifest, "jobs": [{"index": j.index, "name": j.name, "overrides": j.overrides,
                                               "swept": j.swept} for j in jobs]})
    return jobs


def _gpus(launcher: str) -> int:
    """CUDA devices to spread parallel jobs over (0 for the serial basic launcher)."""
    if launcher == "basic":
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
