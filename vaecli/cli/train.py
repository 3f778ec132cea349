"""vae train."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..errors import UsageError
from . import output
from .app import Ckpt, app, complete_overrides, complete_runs


@app.command(context_settings={"help_option_names": ["--help", "-h"]})
def train(
    overrides: Optional[List[str]] = typer.Argument(
        None, metavar="OVERRIDES", autocompletion=complete_overrides,
        help="Config overrides, e.g. dataset=shapes model=conv beta=4 trainer.epochs=20."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Run folder (default: runs/<time>-<dataset>-<model>)."),
    resume: Optional[Path] = typer.Option(None, "--resume", autocompletion=complete_runs,
                                          help="Continue the run (or finish the sweep) in this folder."),
    multirun: bool = typer.Option(False, "--multirun", "-m",
                                  help="Sweep: one run per combination, e.g. -m beta=1,4,8 seed=range(3) "
                                       "(Hydra's basic sweeper: a,b,c  range()  choice()  glob())."),
    optimize: str = typer.Option("test_elbo", "--optimize", metavar="KEY",
                                 help="-m with hydra/sweeper=optuna (or any plugin sweep): the figure each job reports, "
                                      "a number of the summary (test_elbo, test_kl, ...) or iwae@K, the test IWAE bound "
                                      "with K samples after training."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the composed config and exit."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (the summary) on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar, notes or table."),
) -> None:
    """Train a VAE. The run folder holds config.yaml, model.safetensors, metrics.jsonl, samples/."""
    import sys

    from ..config import load_config, resume_config

    if resume is not None and run_dir is not None:
        raise UsageError("--resume DIR continues that run in place; drop --run-dir")
    from ..experiments import sweep

    if multirun or (resume is not None and sweep.is_sweep(resume)):
        if print_config:
            raise UsageError("--print-config shows one config; drop -m (or print a job's: vae train OVERRIDES --print-config)")
        return _sweep(overrides or [], run_dir, resume, as_json, quiet, optimize)
    composed = resume_config(resume, overrides or []) if resume is not None else load_config(overrides or [])
    if print_config:
        sys.stdout.write(composed.to_yaml())
        return
    from ..runtime import distributed, runs
    from ..training import trainer as training

    cfg = composed.cfg
    with distributed.session(cfg.trainer.device) as dist:  # torchrun: rank 0 alone talks and writes
        target = resume
        if resume is None:
            target = dist.broadcast(run_dir or runs.new_run_dir(cfg.dataset.name, cfg.model.name))
            if dist.main:
                runs.check_new_target(target)
        talk = dist.main and not quiet and not as_json
        progress = output.TrainProgress(enabled=output.stderr.is_terminal and talk, quiet=not talk)
        try:
            summary = training.fit(composed, target, resume=resume is not None, dist=dist, callbacks=[progress])
        finally:
            progress.on_train_end()
    if summary is not None:
        _report(summary, quiet, as_json)


def _sweep(arguments: list[str], run_dir: Optional[Path], resume: Optional[Path], as_json: bool, quiet: bool,
           optimize: str = "test_elbo") -> None:
    """vae train -m ARGUMENTS, or --resume SWEEP_DIR: every job, then the table. With hydra/launcher=
    or hydra/sweeper= (Hydra's plugins) the jobs go through them (launch.py); else one after the
    other in this process."""
    from ..runtime import distributed, runs
    from ..experiments import launch, sweep

    if resume is not None:
        if arguments:
            raise UsageError("--resume SWEEP_DIR finishes the sweep as it was started; it takes no overrides")
        arguments, jobs = sweep.load(resume)
        optimize = (runs.read_json(resume / sweep.MANIFEST) or {}).get("optimize", optimize)
    job_args, hydra_args = launch.split(arguments)
    if hydra_args:
        return _plugin_sweep(arguments, run_dir, resume, as_json, quiet, optimize)
    if resume is None:
        jobs = sweep.expand(arguments)
    device = sweep.validate(jobs)[0].cfg.trainer.device  # every job composes before any starts
    with distributed.session(device) as dist:
        sweep_dir = resume if resume is not None else dist.broadcast(run_dir or runs.new_run_dir("sweep"))
        if resume is None and dist.main:
            sweep.create(sweep_dir, arguments, jobs)
        talk, n = dist.main and not quiet, len(jobs)

        def callbacks_for(job):
            bar = talk and not as_json and output.stderr.is_terminal
            return [output.TrainProgress(enabled=bar, quiet=not talk or as_json, label=f"[{job.index + 1}/{n}]")]

        def notify(event, job, outcome):
            if talk:
                output.stderr.print(sweep.describe(event, job, n, outcome, sweep_dir), markup=False, highlight=False,
                                    soft_wrap=True)

        outcomes = sweep.run_jobs(sweep_dir, jobs, dist, callbacks_for, notify)
    if dist.main:
        _sweep_report(sweep_dir, arguments, outcomes, distributed.resume_command(sweep_dir, dist.world), as_json, quiet)


def _plugin_sweep(arguments: list[str], run_dir: Optional[Path], resume: Optional[Path], as_json: bool, quiet: bool,
                  optimize: str) -> None:
    """A sweep through Hydra's launcher and sweeper plugins (launch.run); the same folders, table
    and --resume as the basic sweep, plus the best trial of a search."""
    import os

    from ..experiments import launch, sweep
    from ..runtime import runs
    from ..errors import Interrupted

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError("hydra/launcher= and hydra/sweeper= start their own processes: run vae train -m without torchrun")
    job_args, hydra_args = launch.split(arguments)
    chosen = launch.plugins(hydra_args)
    launch.optimize_key(optimize)
    launch.check_hydra(arguments)
    jobs: list = []
    if chosen["sweeper"] == "basic":
        jobs = sweep.expand(job_args)
        sweep.validate(jobs)
    else:
        launch.check_search_space(job_args)
    sweep_dir = resume if resume is not None else (run_dir or runs.new_run_dir("sweep"))
    if resume is None:
        sweep.create(sweep_dir, arguments, jobs)
        manifest = runs.read_json(sweep_dir / sweep.MANIFEST)
        runs.write_json(sweep_dir / sweep.MANIFEST, {**manifest, "optimize": optimize, "plugins": chosen})
    if not quiet and not as_json:
        output.stderr.print(f"sweep {sweep_dir}: {chosen['sweeper']} sweeper, {chosen['launcher']} launcher",
                            markup=False, highlight=False)
    command = f"vae train --resume {sweep_dir}"
    try:
        launched = launch.run(sweep_dir, arguments, optimize, resuming=resume is not None,
                              total=len(jobs), talk=not quiet and not as_json)
    except KeyboardInterrupt:
        raise Interrupted(f"sweep interrupted; finish it with: {command}", 2) from None
    outcomes = [sweep.Outcome(job, sweep_dir / job.name,
                              "finished" if sweep.job_state(sweep_dir / job.name) == "finished" else "crashed")
                for job in launched]
    best = launch.best_trial(sweep_dir) if chosen["sweeper"] == "optuna" else None
    _sweep_report(sweep_dir, arguments, outcomes, command, as_json, quiet, best=best, optimize=optimize)


def _sweep_report(sweep_dir: Path, arguments: list[str], outcomes, resume_command: str, as_json: bool,
                  quiet: bool, best: dict | None = None, optimize: str | None = None) -> None:
    """The sweep's table (or JSON object) on stdout, with a search's best trial; failed jobs make
    the exit status 1."""
    from ..experiments import catalog
    from ..errors import VaeError
    from .catalog import table

    rows, n = catalog.scan(sweep_dir), len(outcomes)
    failed = [o for o in outcomes if o.state == "crashed"]
    result = {"sweep_dir": str(sweep_dir), "arguments": arguments, "jobs": n, "failed": len(failed),
              "runs": [r.to_dict() for r in rows]}
    if best is not None:
        result["best"] = {**best, "optimize": optimize}
    if quiet and not as_json:
        print(sweep_dir)
    else:
        title = f"sweep {sweep_dir}: {n} runs, {len(failed)} failed"
        if best is not None:
            params = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["params"].items())
            title += f"; best {optimize} {best['value']:.4g}: trial {best['trial']} ({best['run']}: {params})"
        output.emit(result, as_json, table(title, rows), schema="train -m")
    if failed:
        raise VaeError(f"{len(failed)} of {n} runs failed (state column); retry them with: {resume_command}")


def _report(summary, quiet: bool, as_json: bool) -> None:
    from ..evaluation.evaluate import COLLAPSE_ADVICE, collapsed

    s = summary
    if s.active_units is not None and not quiet and collapsed(s.test_kl, s.active_units):
        output.warn(COLLAPSE_ADVICE.format(kl=s.test_kl, active=s.active_units))
    if quiet and not as_json:
        print(s.run_dir)
        return
    rows = [
        ("test ELBO", f"{s.test_elbo:.2f} nats" + (f" (-log p(x) <= {s.test_bits_per_dim:.4f} bits/dim)"
                                                   if s.test_bits_per_dim is not None else "")),
        ("what it is", s.measure),
        ("test KL" + ("" if s.kl_exact else " (Monte Carlo)"), f"{s.test_kl:.2f} nats"),
        ("test recon", f"{s.test_recon:.2f} nats"),
    ]
    if s.active_units is not None:
        rows.append(("active units", f"{s.active_units} / {s.latent_dim}"))
    if s.kl_per_dim:
        rows.append(("KL per dim", output.kl_dims(s.kl_per_dim)))
    if s.kl_per_group:
        rows.append(("KL per group", output.groups(s.kl_per_group, s.active_per_group)))
    if s.codebook:
        c = s.codebook
        rows.append(("codebook", f"perplexity {c['perplexity']:.1f} of {c['size']} codes, {c['dead_codes']:.0f} unused "
                                 f"(test batches), {c['revived']} revived"))
    if s.objective_terms:
        rows.append(("objective terms", ", ".join(f"{k} {v:.3g}" for k, v in s.objective_terms.items())
                     + " (train, last log line)"))
    rows.append(("steps", str(s.step)))
    if s.skipped_steps:
        rows.append(("skipped steps", f"{s.skipped_steps} (non-finite loss or gradient)"))
    if s.processes > 1:
        rows.append(("processes", f"{s.processes} (torchrun)"))
    if s.precision_check:
        rows.append(("precision", f"{s.precision} ({s.precision_check['reason']})"))
    rows += [("train time", f"{s.train_seconds:.1f} s"),
             ("images/s", f"{s.img_per_s:,.0f}" if s.img_per_s else "-"),
             ("run", s.run_dir)]
    output.emit(s.to_dict(), as_json, output.table(f"vae train: {s.dataset} / {s.model} on {s.device}", rows))


@app.command("train-prior", context_settings={"help_option_names": ["--help", "-h"]})
def train_prior(
    overrides: Optional[List[str]] = typer.Argument(
        None, metavar="OVERRIDES", autocompletion=complete_overrides,
        help="trainer.* and code_prior.* overrides, e.g. trainer.epochs=20 code_prior.layers=6."),
    ckpt: Ckpt = None,
    resume: bool = typer.Option(False, "--resume", help="Continue the prior already in the run folder."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (the summary) on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar, notes or table."),
) -> None:
    """Train the prior over a VQ-VAE's codes (stage two): a causal transformer over the code grids
    of the training images, into RUN/prior.safetensors. Then `vae sample` draws from it."""
    from ..runtime import distributed, runs
    from ..training import prior
    from ..config import FROZEN_FOR_PRIOR, resume_config

    run_dir = runs.resolve(ckpt).parent
    if resume and not (run_dir / runs.PRIOR.config).is_file():
        raise UsageError(f"{run_dir} has no prior to resume (no {runs.PRIOR.config}); start one with: "
                         f"vae train-prior --ckpt {run_dir}")
    if resume:
        composed = resume_config(run_dir, overrides or [], name=runs.PRIOR.config)
    else:
        composed = resume_config(run_dir, overrides or [], frozen=FROZEN_FOR_PRIOR)
    if composed.cfg.model.name != "vqvae":
        raise UsageError(f"{run_dir} holds a model={composed.cfg.model.name} run; vae train-prior is for "
                         "VQ-VAE runs (model=vqvae)")
    with distributed.session(composed.cfg.trainer.device) as dist:
        talk = dist.main and not quiet and not as_json
        progress = output.TrainProgress(enabled=output.stderr.is_terminal and talk, quiet=not talk)
        try:
            summary = prior.fit(composed, run_dir, resume=resume, dist=dist, callbacks=[progress])
        finally:
            progress.on_train_end()
    if summary is None:
        return
    if quiet and not as_json:
        print(summary.prior)
        return
    s = summary
    rows = [("test NLL of the codes", f"{s.test_nll:.2f} nats ({s.bits_per_code:.3f} bits/code)"),
            ("bound on log p(x)" if s.bound else "ELBO (not a bound)",
             f"{s.test_bound:.2f} nats" + (f" = {s.bits_per_dim:.4f} bits/dim" if s.bound else "")),
            ("what it is", s.measure),
            ("  with a uniform prior", f"{s.uniform_bound:.2f} nats"),
            ("  recon -log p(x|z_q)", f"{s.test_recon:.2f} nats"),
            ("steps", str(s.step)), ("train time", f"{s.train_seconds:.1f} s"),
            ("images/s", f"{s.img_per_s:,.0f}" if s.img_per_s else "-"), ("prior", s.prior)]
    output.emit(s.to_dict(), as_json, output.table(f"vae train-prior: {run_dir} on {s.device}", rows))
