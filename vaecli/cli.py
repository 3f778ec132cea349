"""The `vae` command line. Only this module knows Typer and rich.

Output rules: results go to stdout (a rich table, or exactly one JSON object with --json);
progress and notes go to stderr. Errors are one line on stderr; exit 2 for usage errors,
1 for runtime failures. torch is imported inside the commands, so `vae --help` stays fast.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .errors import UsageError, VaeError

app = typer.Typer(
    name="vae",
    help="Train, sample and evaluate Variational Autoencoders.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

stdout = Console(highlight=False, soft_wrap=True)  # never break a path across lines
stderr = Console(stderr=True, highlight=False)

CKPT_HELP = "Run folder or model.safetensors (default: the latest run under ./runs)."
DATA_ROOT_HELP = "Where the dataset lives (default: the checkpoint's, else $VAECLI_DATA or the cache dir)."
DATASET_REF = re.compile(r"^(train|test):(\d+)$")


def _version(value: bool) -> None:
    if value:
        print(f"vaecli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Train, sample and evaluate Variational Autoencoders."""


# ---------------------------------------------------------------------------------------------
# Helpers


def _emit(result: dict, as_json: bool, table: Table | None = None) -> None:
    """Exactly one JSON object on stdout with --json, else the human table."""
    if as_json:
        sys.stdout.write(json.dumps(_finite(result), allow_nan=False) + "\n")
        sys.stdout.flush()
    elif table is not None:
        stdout.print(table)


def _finite(value):
    """NaN/inf -> null, so --json output is strict JSON (jq and JSON.parse reject NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _se(value: float) -> str:
    return f"{value:.2f}" if math.isfinite(value) else "n/a (one image)"


def _table(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left", min_width=len(title))
    table.add_column(style="bold")
    table.add_column(justify="right")
    from rich.markup import escape

    for key, value in rows:
        table.add_row(escape(key), escape(value))  # "[z_u]" is text, not rich markup
    return table


def _positive(name: str, value: float | int | None, minimum: float = 1, strict: bool = False) -> None:
    if value is None:
        return
    if (value <= minimum) if strict else (value < minimum):
        bound = f"> {minimum}" if strict else f">= {minimum}"
        raise UsageError(f"{name} must be {bound} (got {value})")


def _load(ckpt: Optional[str], device: str):
    from .checkpoint import load_model
    from .train import pick_device

    loaded = load_model(ckpt, device=pick_device(device))
    return loaded


def _dataset(loaded, split: str, data_root: Optional[str]):
    """The checkpoint's dataset (its test split by default), optionally from another root."""
    from dataclasses import replace

    from . import data

    cfg = replace(loaded.dataset, root=data_root) if data_root else loaded.dataset
    return data.build(cfg, split, loaded.seed)


def _label(model, label: Optional[str], allow_all: bool = False) -> Optional[int | str]:
    """--label: a class index (or 'all' where allowed) for a conditional model, else None."""
    if label is None:
        return None
    if not model.conditional:
        raise UsageError("--label needs a conditional model (train with model.conditional=true)")
    if allow_all and label == "all":
        return "all"
    classes = model.spec.num_classes
    if not label.isdigit() or int(label) >= classes:
        choices = f"0..{classes - 1}" + (" or all" if allow_all else "")
        raise UsageError(f"--label must be a class index {choices} (got {label!r})")
    return int(label)


def _inputs(refs: list[str], loaded, data_root: Optional[str], splits: Optional[dict] = None,
            label: Optional[int] = None):
    """Image files (converted to the model's shape) or dataset references like test:3.

    Returns images (B, C, H, W), their names, and their labels (B,) for a conditional model
    (a dataset image's own label; `label` for files), else None. `splits` caches dataset splits.
    """
    import torch

    from .data.images import read_image

    model = loaded.model
    c, h, w = model.spec.image_shape
    images, names, labels = [], [], []
    splits = {} if splits is None else splits
    for ref in refs:
        match = DATASET_REF.match(ref)
        if match and not Path(ref).exists():
            split, index = match.group(1), int(match.group(2))
            if split not in splits:
                splits[split] = _dataset(loaded, split, data_root)
            dataset = splits[split]
            if index >= len(dataset):
                raise UsageError(f"{ref}: the {split} split has {len(dataset)} images (0..{len(dataset) - 1})")
            images.append(dataset.to_float(dataset.images[index:index + 1])[0])
            own = int(dataset.labels[index]) if dataset.labels is not None else None
            labels.append(own if label is None else label)
        else:
            x, note = read_image(ref, c, (h, w))
            if note:
                stderr.print(f"note: {ref}: {note} to match the model")
            images.append(x)
            labels.append(label)
        names.append(ref)
    y = None
    if model.conditional:
        if any(v is None for v in labels):
            raise UsageError("this conditional model needs a class for image files: pass --label N")
        y = torch.tensor(labels, device=model.device)
    return torch.stack(images).to(model.device), names, y


def _default_out(loaded, name: str) -> Path:
    return loaded.run_dir / name


# ---------------------------------------------------------------------------------------------
# train


class RichTrainProgress:
    """train.Reporter on a rich progress bar (stderr); notes still print when it is off."""

    def __init__(self, enabled: bool, quiet: bool):
        self.enabled, self.quiet = enabled, quiet
        self.progress = None

    def start(self, total_steps: int, done_steps: int, run_dir: Path) -> None:
        if not self.enabled:
            return
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("epoch {task.fields[epoch]}  loss {task.fields[loss]}  ELBO {task.fields[elbo]}  "
                       "KL {task.fields[kl]}  {task.fields[ips]} img/s"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=stderr, transient=False,
        )
        self.task = self.progress.add_task("train", total=total_steps, completed=done_steps,
                                           epoch="-", loss="-", elbo="-", kl="-", ips="-")
        self.progress.start()

    def advance(self, step: int) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=step)

    def metrics(self, step: int, epoch: int, values: dict[str, float]) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=step, epoch=epoch, loss=f"{values['loss']:.2f}",
                                 elbo=f"{values['elbo']:.2f}", kl=f"{values['kl']:.2f}",
                                 ips=f"{values.get('img_per_s', 0):,.0f}")

    def note(self, text: str) -> None:
        if not self.quiet:
            (self.progress.console if self.progress is not None else stderr).print(text)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _new_run_dir(cfg) -> Path:
    from .checkpoint import RUNS_DIR

    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = RUNS_DIR / f"{stamp}-{cfg.dataset.name}-{cfg.model.name}"
    path, i = base, 1
    while path.exists():
        path, i = Path(f"{base}-{i}"), i + 1
    return path


@app.command(context_settings={"help_option_names": ["--help", "-h"]})
def train(
    overrides: Optional[List[str]] = typer.Argument(
        None, metavar="OVERRIDES",
        help="Config overrides, e.g. dataset=shapes model=conv beta=4 trainer.epochs=20."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Run folder (default: runs/<time>-<dataset>-<model>)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this folder."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the composed config and exit."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (the summary) on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar, notes or table."),
) -> None:
    """Train a VAE. The run folder holds config.yaml, model.safetensors, metrics.jsonl, samples/."""
    from .config import load_config, resume_config

    overrides = overrides or []
    if resume is not None and run_dir is not None:
        raise UsageError("--resume DIR continues that run in place; drop --run-dir")
    composed = resume_config(resume, overrides) if resume is not None else load_config(overrides)
    if print_config:
        sys.stdout.write(composed.to_yaml())
        return
    from .train import Interrupted, broadcast, fit, init_distributed, leave_distributed

    dist = init_distributed(composed.cfg.trainer.device)  # torchrun: rank 0 alone talks and writes
    global _SILENT, _SKIP_FINALIZATION
    _SILENT = not dist.main  # the other ranks fail with the same code, without repeating the line
    finished = False
    try:
        if resume is not None:
            target = resume
        else:
            target = broadcast(run_dir or _new_run_dir(composed.cfg), dist)
            if dist.main and target.exists() and not target.is_dir():
                raise UsageError(f"--run-dir {target} exists and is not a folder")
            if dist.main and (target / "model.safetensors").exists():
                raise UsageError(f"{target} already holds a run; continue it with --resume {target} "
                                 "or choose another --run-dir")
        talk = dist.main and not quiet and not as_json
        reporter = RichTrainProgress(enabled=stderr.is_terminal and talk, quiet=not talk)
        try:
            summary = fit(composed, target, resume=resume is not None, reporter=reporter, dist=dist)
        except Interrupted:
            finished = True  # every rank stops after the same step, so they can leave together
            raise
        finally:
            reporter.stop()
        finished = True
    finally:
        leave_distributed(dist, together=finished)
        _SKIP_FINALIZATION = dist.world > 1
    if not dist.main:
        return
    if summary.get("active_units") is not None and not quiet:
        from .evaluate import COLLAPSE_KL, COLLAPSE_ADVICE

        if summary["active_units"] == 0 or summary["test_kl"] < COLLAPSE_KL:
            stderr.print("warning: " + COLLAPSE_ADVICE.format(kl=summary["test_kl"], active=summary["active_units"]),
                         markup=False, highlight=False, soft_wrap=True)
    if quiet and not as_json:
        print(summary["run_dir"])
        return
    ips = summary["img_per_s"]
    table = _table(f"vae train: {summary['dataset']} / {summary['model']} on {summary['device']}", [
        ("test ELBO", f"{summary['test_elbo']:.2f} nats"),
        ("test KL" + ("" if summary["kl_exact"] else " (Monte Carlo)"), f"{summary['test_kl']:.2f} nats"),
        ("test recon", f"{summary['test_recon']:.2f} nats"),
        *([("active units", f"{summary['active_units']} / {summary['latent_dim']}")]
          if summary.get("active_units") is not None else []),
        *([("KL per dim", _kl_dims(summary["kl_per_dim"]))] if summary.get("kl_per_dim") else []),
        ("steps", str(summary["step"])),
        *([("skipped steps", f"{summary['skipped_steps']} (non-finite loss or gradient)")]
          if summary.get("skipped_steps") else []),
        *([("processes", f"{summary['processes']} (torchrun)")] if summary.get("processes", 1) > 1 else []),
        ("train time", f"{summary['train_seconds']:.1f} s"),
        ("images/s", f"{ips:,.0f}" if ips else "-"),
        ("run", summary["run_dir"]),
    ])
    _emit(summary, as_json, table)


# ---------------------------------------------------------------------------------------------
# sample / reconstruct / interpolate


@app.command()
def sample(
    ckpt: Optional[str] = typer.Option(None, "--ckpt", help=CKPT_HELP),
    n: int = typer.Option(64, "--n", help="Number of samples."),
    temperature: float = typer.Option(1.0, "--temperature", help="Scales the prior's sigma."),
    seed: int = typer.Option(0, "--seed", help="Seed for the prior draws."),
    label: Optional[str] = typer.Option(None, "--label", help="Conditional models: a class, or 'all' for one row per class (default)."),
    out: Optional[Path] = typer.Option(None, "--out", help="PNG to write (default: RUN/sample.png)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Draw n images from the prior, decoded to the likelihood's mean, as one PNG grid.

    For a conditional model, n per class (one row each) unless --label picks one class."""
    _positive("--n", n)
    _positive("--temperature", temperature, 0, strict=True)
    import torch

    from .data.images import grid_rows, save_grid

    loaded = _load(ckpt, device)
    model = loaded.model
    which = _label(model, label, allow_all=True)
    generator = torch.Generator(device=model.device).manual_seed(seed)
    y, nrow = None, grid_rows(n)
    if model.conditional and which in (None, "all"):  # n per class, one row per class
        classes = model.spec.num_classes
        y = torch.arange(classes, device=model.device).repeat_interleave(n)
        nrow, n = n, n * classes
    elif model.conditional:
        y = torch.full((n,), which, device=model.device)
    images = model.sample(n, temperature=temperature, generator=generator, y=y)
    path = save_grid(images, out or _default_out(loaded, "sample.png"), nrow=nrow)
    result = {"out": str(path), "n": n, "temperature": temperature, "seed": seed, "ckpt": str(loaded.path),
              "label": "all" if model.conditional and which in (None, "all") else which}
    if not as_json:
        stdout.print(f"wrote {n} samples to {path}")
    _emit(result, as_json)


@app.command()
def reconstruct(
    images: Optional[List[str]] = typer.Argument(
        None, metavar="IMAGES", help="Image files, or test:N / train:N for dataset images."),
    ckpt: Optional[str] = typer.Option(None, "--ckpt", help=CKPT_HELP),
    n: int = typer.Option(16, "--n", help="Test images to use when no IMAGES are given."),
    samples: int = typer.Option(64, "--samples", help="Posterior samples per image for the -ELBO estimate."),
    label: Optional[str] = typer.Option(None, "--label", help="Conditional models: the class of the image files."),
    out: Optional[Path] = typer.Option(None, "--out", help="PNG to write (default: RUN/reconstruction.png)."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help=DATA_ROOT_HELP),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Originals above their reconstructions in one PNG, with the -ELBO of each image
    (-log p(x|z) for an autoencoder)."""
    _positive("--n", n)
    _positive("--samples", samples)
    import torch

    from . import objectives
    from .data.images import save_grid

    loaded = _load(ckpt, device)
    splits: dict = {}
    if images:
        refs = list(images)
    else:
        splits["test"] = _dataset(loaded, "test", data_root)
        refs = [f"test:{i}" for i in range(min(n, len(splits["test"])))]
    model = loaded.model
    x, names, y = _inputs(refs, loaded, data_root, splits, _label(model, label))
    torch.manual_seed(0)
    recon = model.reconstruct(x, y)
    if model.stochastic:
        neg_elbo = (-objectives.iwae_bound(model, x, samples, y=y)["elbo"]).tolist()
    else:  # an autoencoder has no ELBO: report its reconstruction loss, -log p(x|z)
        with torch.no_grad():
            neg_elbo = (-model.terms(x, y)["log_px"]).tolist()
    measure = "-ELBO" if model.stochastic else "-log p(x|z)"
    cols = min(len(x), 8)
    rows = []
    for start in range(0, len(x), cols):  # each row of originals directly above its reconstructions
        block = slice(start, start + cols)
        pad = cols - len(x[block])
        filler = torch.zeros((pad, *x.shape[1:]), device=x.device)
        rows += [torch.cat([x[block], filler]), torch.cat([recon[block], filler])]
    path = save_grid(torch.cat(rows), out or _default_out(loaded, "reconstruction.png"), nrow=cols)
    key = "neg_elbo" if model.stochastic else "neg_log_px"
    per_image = [{"image": name, key: value} for name, value in zip(names, neg_elbo)]
    result = {"out": str(path), "n": len(x), "images": per_image,
              f"mean_{key}": sum(neg_elbo) / len(neg_elbo), "ckpt": str(loaded.path)}
    if not as_json:
        title = f"reconstructions -> {path}"
        table = Table(title=title, title_justify="left", min_width=len(title))
        table.add_column("image")
        table.add_column(f"{measure} (nats)", justify="right")
        for row in per_image:
            table.add_row(row["image"], f"{row[key]:.2f}")
        table.add_row("mean", f"{result[f'mean_{key}']:.2f}", style="bold")
        stdout.print(table)
    _emit(result, as_json)


@app.command()
def interpolate(
    a: str = typer.Argument(..., help="First image file (or test:N / train:N)."),
    b: str = typer.Argument(..., help="Second image file (or test:N / train:N)."),
    ckpt: Optional[str] = typer.Option(None, "--ckpt", help=CKPT_HELP),
    steps: int = typer.Option(10, "--steps", help="Points on the path, endpoints included."),
    slerp: bool = typer.Option(False, "--slerp", help="Spherical instead of linear interpolation."),
    label: Optional[str] = typer.Option(None, "--label", help="Conditional models: the class to decode with (default: A's)."),
    out: Optional[Path] = typer.Option(None, "--out", help="PNG to write (default: RUN/interpolation.png)."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help=DATA_ROOT_HELP),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Decode a path between the posterior means of two images, saved as a strip PNG."""
    _positive("--steps", steps, 2)
    import torch

    from . import latent
    from .data.images import save_grid

    loaded = _load(ckpt, device)
    model = loaded.model
    x, _, y = _inputs([a, b], loaded, data_root, label=_label(model, label))
    with torch.no_grad():
        mu = model.latent_mean(x, y)
        path_fn = latent.slerp if slerp else latent.lerp
        path_y = None if y is None else y[0].expand(steps)  # decode the whole path as A's class
        frames = model.decode(path_fn(mu[0], mu[1], steps), path_y).mean.clamp(0, 1)
    path = save_grid(frames, out or _default_out(loaded, "interpolation.png"), nrow=steps)
    method = "slerp" if slerp else "lerp"
    if not as_json:
        stdout.print(f"wrote a {steps}-step {method} strip to {path}")
    _emit({"out": str(path), "steps": steps, "method": method, "a": a, "b": b, "ckpt": str(loaded.path)}, as_json)


# ---------------------------------------------------------------------------------------------
# eval-iwae


@app.command("eval-iwae")
def eval_iwae(
    ckpt: Optional[str] = typer.Option(None, "--ckpt", help=CKPT_HELP),
    k: str = typer.Option("5000", "--k", help="Importance samples per image, or a list (1,50,5000) to see the bound tighten."),
    n: Optional[int] = typer.Option(None, "--n", help="Use only the first N images of the split."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per batch."),
    split: str = typer.Option("test", "--split", help="test or train."),
    seed: int = typer.Option(0, "--seed", help="Seed for the importance samples."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help=DATA_ROOT_HELP),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """ELBO and the IWAE bound log (1/k) sum p(x,z_k)/q(z_k|x) (Burda et al. 2015), nats/image,
    with the latent diagnostics: KL per dimension, active units, I(x; z), KL(q(z) || p(z))."""
    ks = _k_list(k)
    _positive("--n", n)
    _positive("--batch-size", batch_size)
    if split not in ("test", "train"):
        raise UsageError(f"--split must be test or train (got {split!r})")
    import torch

    from .evaluate import iwae_dataset

    loaded = _load(ckpt, device)
    if not loaded.model.stochastic:
        raise UsageError(f"{loaded.path} is a deterministic autoencoder (model=ae): it has no ELBO or "
                         "IWAE bound; eval-iwae needs a VAE")
    data = _dataset(loaded, split, data_root).head(n)
    torch.manual_seed(seed)
    progress = None
    if stderr.is_terminal and not quiet and not as_json:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        progress = Progress(TextColumn(f"[bold]eval-iwae k={ks[-1]}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("images  ETA"), TimeRemainingColumn(), console=stderr)
        task = progress.add_task("eval", total=len(data))
        progress.start()
    try:
        result = iwae_dataset(loaded.model, data, ks, batch_size,
                              on_batch=(lambda m: progress.advance(task, m)) if progress else None)
    finally:
        if progress is not None:
            progress.stop()
    result.update({"split": split, "ckpt": str(loaded.path), "dataset": loaded.dataset.name,
                   "kl_exact": loaded.model.exact_kl})
    k = result["k"]
    rows = [("ELBO", f"{result['elbo']:.2f} ± {_se(result['elbo_se'])} nats")]
    for j, bound in result["iwae_by_k"].items():
        rows.append((f"IWAE (k={j})", f"{bound['iwae']:.2f} ± {_se(bound['iwae_se'])} nats"))
    rows += [
        ("-log p(x) <=", f"{result['nll']:.2f} nats = {result['bits_per_dim']:.4f} bits/dim"),
        ("KL" + ("" if result["kl_exact"] else f" (Monte Carlo, k={k})"), f"{result['kl']:.2f} nats"),
        ("recon", f"{result['recon']:.2f} nats"),
        ("active units", f"{result['active_units']} / {result['latent_dim']} (Cov_x E[z_u] > 0.01)"),
        ("I(x; z)", f"{result['mutual_info']:.2f} nats (at most log n = {math.log(result['n']):.2f})"),
    ]
    if result["agg_posterior_kl"] is not None:
        rows.append(("KL(q(z) || p(z))", f"{result['agg_posterior_kl']:.2f} nats (mean KL - I(x; z))"))
    if result["kl_per_dim"] is not None:
        rows.append(("KL per dim", _kl_dims(result["kl_per_dim"])))
    rows.append(("time", f"{result['seconds']:.1f} s ({result['samples_per_s']:,.0f} samples/s)"))
    table = _table(f"eval-iwae: {loaded.dataset.name} {split}, n={result['n']}, k={k}", rows)
    if result["collapsed"]:
        from .evaluate import COLLAPSE_ADVICE

        stderr.print("warning: " + COLLAPSE_ADVICE.format(kl=result["kl"], active=result["active_units"]),
                     markup=False, highlight=False, soft_wrap=True)
    _emit(result, as_json, table)


def _k_list(text: str) -> list[int]:
    """--k 5000 or --k 1,50,5000."""
    try:
        ks = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--k takes a whole number or a list like 1,50,5000 (got {text!r})") from None
    if not ks:
        raise UsageError("--k needs at least one value")
    for j in ks:
        _positive("--k", j)
    return sorted(set(ks))


def _kl_dims(values: list[float]) -> str:
    """KL per dimension, largest first, as 'd3 4.21, d0 3.90, ...' (at most 8 shown)."""
    order = sorted(range(len(values)), key=lambda d: -values[d])
    shown = ", ".join(f"z{d} {values[d]:.2f}" for d in order[:8])
    return shown + (f", … ({len(values) - 8} more)" if len(values) > 8 else "")


# ---------------------------------------------------------------------------------------------
# traverse / latent-plot / plot-metrics / eval-disentanglement


@app.command()
def traverse(
    ckpt: Optional[str] = typer.Option(None, "--ckpt", help=CKPT_HELP),
    image: Optional[str] = typer.Option(None, "--image", help="Sweep around this image's posterior mean (file or test:N); default z = 0."),
    dims: str = typer.Option("10", "--dims", help="How many dimensions (the most informative first), or 'all'."),
    span: float = typer.Option(3.0, "--range", help="Sweep each dimension over mean +- this."),
    steps: int = typer.Option(9, "--steps", help="Points per row."),
    label: Optional[str] = typer.Option(None, "--label", help="Conditional models: the class to decode with."),
    out: Optional[Path] = typer.Option(None, "--out", help="PNG to write (default: RUN/traverse.png)."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help=DATA_ROOT_HELP),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """One row per latent dimension, sweeping it around a point; rows ordered by KL (most
    informative first; by the variance of the posterior means where no per-dimension KL exists)."""
    _positive("--steps", steps, 2)
    _positive("--range", span, 0, strict=True)
    if dims != "all" and not (dims.isdigit() and int(dims) >= 1):
        raise UsageError(f"--dims takes a number >= 1 or 'all' (got {dims!r})")
    import torch

    from . import evaluate, latent
    from .data.images import save_grid

    loaded = _load(ckpt, device)
    model = loaded.model
    reference = _dataset(loaded, "test", data_root).head(1000)
    means = evaluate.latent_means(model, reference)
    if model.stochastic and model.exact_kl:
        scores = evaluate.kl_per_dim(*evaluate.posteriors(model, reference))
        ordered_by = "kl"
    else:
        scores = evaluate.active_units(means)[1]
        ordered_by = "variance of the posterior mean"
    order = sorted(range(len(scores)), key=lambda d: -scores[d])
    chosen = order if dims == "all" else order[:int(dims)]
    which = _label(model, label)
    if image is not None:
        x, _, y = _inputs([image], loaded, data_root, label=which)
        center = model.latent_mean(x, y)[0].detach()
        y = None if y is None else y[0]
    else:
        center = torch.zeros(model.latent_dim, device=model.device)
        y = torch.tensor(which if which is not None else 0, device=model.device) if model.conditional else None
    z = latent.traversal(center, chosen, span, steps)
    with torch.no_grad():
        frames = model.decode(z, None if y is None else y.expand(len(z))).mean.clamp(0, 1)
    path = save_grid(frames, out or _default_out(loaded, "traverse.png"), nrow=steps)
    result = {"out": str(path), "dims": chosen, "ordered_by": ordered_by,
              "scores": [scores[d] for d in chosen], "range": span, "steps": steps, "ckpt": str(loaded.path)}
    if not as_json:
        stdout.print(f"wrote {len(chosen)} rows (dims {', '.join(map(str, chosen))}, by {ordered_by}) to {path}")
    _emit(result, as_json)


@app.command("latent-plot")
def latent_plot(
    ckpt: Optional[str] = typer.Option(None, "--ckpt", help=CKPT_HELP),
    n: int = typer.Option(5000, "--n", help="Test images to plot."),
    method: str = typer.Option("auto", "--method", help="auto (2-D latents directly, else PCA), pca or tsne."),
    out: Optional[Path] = typer.Option(None, "--out", help="PNG to write (default: RUN/latent.png)."),
    seed: int = typer.Option(0, "--seed", help="Seed for t-SNE."),
    label: Optional[str] = typer.Option(None, "--label", help="Conditional models: the class of the manifold grid."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help=DATA_ROOT_HELP),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Posterior means of test images coloured by label: directly when latent_dim = 2 (with the
    decoded manifold grid beside it), else projected by PCA or t-SNE."""
    _positive("--n", n)
    if method not in ("auto", "pca", "tsne"):
        raise UsageError(f"--method must be auto, pca or tsne (got {method!r})")
    import torch

    from . import evaluate, plots
    from .data.images import save_grid

    loaded = _load(ckpt, device)
    model = loaded.model
    data = _dataset(loaded, "test", data_root).head(n)
    means = evaluate.latent_means(model, data).cpu()
    d = means.shape[1]
    labels = data.labels.numpy() if data.labels is not None else None
    if d == 2 and method == "auto":
        points, used, axes = means.numpy(), "direct", ("z0", "z1")
    elif method == "tsne":
        if len(means) < 5:
            raise UsageError("t-SNE needs at least 5 points; raise --n")
        from sklearn.manifold import TSNE

        tsne = TSNE(n_components=2, init="pca", random_state=seed, perplexity=min(30.0, (len(means) - 1) / 3))
        points, used, axes = tsne.fit_transform(means.numpy()), "tsne", ("t-SNE 1", "t-SNE 2")
    else:
        centred = means - means.mean(0)
        _, singular, v = torch.linalg.svd(centred, full_matrices=False)
        share = (singular.square() / singular.square().sum()).tolist()
        points = (centred @ v.T[:, :2]).numpy() if d >= 2 else torch.cat([centred, torch.zeros_like(centred)], 1).numpy()
        used = "pca"
        axes = tuple(f"PC{i + 1} ({share[i]:.0%} of variance)" if i < len(share) else f"PC{i + 1}" for i in range(2))
    path = out or _default_out(loaded, "latent.png")
    title = f"{loaded.dataset.name}: {len(means)} test images, latent_dim={d}, {used}"
    plots.scatter_figure(points, labels, path, title, *axes)
    result = {"out": str(path), "method": used, "n": len(means), "latent_dim": d, "ckpt": str(loaded.path)}
    if d == 2:  # the decoded manifold (Kingma & Welling 2013, Fig. 4): a grid of prior quantiles
        q = torch.distributions.Normal(0, 1).icdf(torch.linspace(0.05, 0.95, 20))
        grid = torch.cartesian_prod(q, q).flip(1).to(model.device)
        which = _label(model, label)
        y = torch.full((len(grid),), which or 0, device=model.device) if model.conditional else None
        with torch.no_grad():
            frames = model.decode(grid, y).mean.clamp(0, 1)
        manifold = save_grid(frames, Path(path).with_name(Path(path).stem + "_manifold.png"), nrow=20)
        result["manifold"] = str(manifold)
    if not as_json:
        stdout.print(f"wrote {path}" + (f" and {result['manifold']}" if "manifold" in result else ""))
    _emit(result, as_json)


@app.command("plot-metrics")
def plot_metrics(
    run: Path = typer.Argument(..., help="A run folder (with metrics.jsonl)."),
    out: Optional[Path] = typer.Option(None, "--out", help="PNG to write (default: RUN/metrics.png)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Loss, ELBO, KL and active-unit curves from RUN/metrics.jsonl."""
    from . import plots

    if not run.is_dir():
        raise UsageError(f"{run} is not a run folder")
    records = plots.read_metrics(run / "metrics.jsonl")
    path = plots.metrics_figure(records, out or run / "metrics.png", title=str(run))
    if not as_json:
        stdout.print(f"wrote {path} ({len(records)} records)")
    _emit({"out": str(path), "records": len(records)}, as_json)


@app.command("eval-disentanglement")
def eval_disentanglement(
    ckpt: Optional[str] = typer.Option(None, "--ckpt", help=CKPT_HELP),
    data_root: Optional[str] = typer.Option(None, "--data-root", help=DATA_ROOT_HELP),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """MIG (Chen et al. 2018) of the posterior means against the ground-truth factors of the
    shapes dataset (all of its images), with the per-factor breakdown."""
    import torch

    from . import evaluate
    from .data import ImageSet
    from .disentanglement import mig

    loaded = _load(ckpt, device)
    parts = [_dataset(loaded, split, data_root) for split in ("train", "test")]
    if parts[0].factors is None:
        raise UsageError(f"eval-disentanglement needs ground-truth factors; dataset={loaded.dataset.name} "
                         "has none (train on dataset=shapes)")
    if loaded.model.latent_dim < 2:
        raise UsageError("MIG needs a model with at least two latent dimensions")
    data = ImageSet(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]),
                    parts[0].num_classes, parts[0].binarize, torch.cat([p.factors for p in parts]),
                    parts[0].factor_names, parts[0].name)
    codes = evaluate.latent_means(loaded.model, data).cpu()
    result = mig(codes, data.factors, data.factor_names)
    result.update({"n": len(data), "latent_dim": codes.shape[1], "ckpt": str(loaded.path)})
    if not as_json:
        title = f"MIG {result['mig']:.3f} ({len(data)} images, latent_dim={codes.shape[1]})"
        table = Table(title=title, title_justify="left", min_width=len(title))
        for column in ("factor", "MIG", "H (nats)", "best dim: MI", "2nd dim: MI"):
            table.add_column(column, justify="left" if column == "factor" else "right")
        for row in result["factors"]:
            table.add_row(row["name"], "-" if row["mig"] is None else f"{row['mig']:.3f}", f"{row['entropy']:.2f}",
                          f"z{row['top_dim']}: {row['mi_top']:.2f}", f"z{row['second_dim']}: {row['mi_second']:.2f}")
        stdout.print(table)
    _emit(result, as_json)


# ---------------------------------------------------------------------------------------------
# Entry point


def _click_exceptions():
    try:  # typer >= 0.16 vendors click as typer._click
        from typer._click import exceptions
    except ImportError:
        from click import exceptions
    return exceptions


_SILENT = False  # set on torchrun ranks other than 0
_SKIP_FINALIZATION = False  # set once a torchrun rank has left its process group


def _fail(message: str, code: int) -> int:
    if _SILENT:
        return code
    # One line whatever the user typed: control characters echoed from the input are escaped.
    message = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message.strip())
    stderr.print(f"vae: error: {message}", markup=False, highlight=False, soft_wrap=True)
    return code


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app and map every failure to one line + exit code."""
    code = run(argv)
    if _SKIP_FINALIZATION:
        # A torchrun rank ends without interpreter finalization: gloo's worker threads can
        # otherwise take the GIL while Python shuts down and abort the process ("terminate called
        # without an active exception", SIGABRT; seen in CI after a finished run), and torchrun
        # then reports a failed job. Every file is already written, fsynced and renamed.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def run(argv: list[str] | None = None) -> int:
    cx = _click_exceptions()
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="vae", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except cx.NoArgsIsHelpError as e:  # bare `vae`: show the help, not an error
        print(e.ctx.get_help() if getattr(e, "ctx", None) else e.format_message())
        return 0
    except cx.UsageError as e:
        where = f"{e.ctx.command_path} --help" if getattr(e, "ctx", None) else "vae --help"
        return _fail(f"{e.format_message()} (see '{where}')", 2)
    except cx.ClickException as e:
        return _fail(e.format_message(), e.exit_code)
    except typer.Abort:
        return _fail("aborted", 130)
    except UsageError as e:
        return _fail(str(e), 2)
    except VaeError as e:
        return _fail(str(e), 1)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except BrokenPipeError:
        return 1
    except Exception as e:
        interrupted = _interrupted(e)
        if interrupted is not None:
            return interrupted
        if type(e).__name__ == "OutOfMemoryError" or isinstance(e, MemoryError):
            return _fail("out of memory; lower trainer.batch_size / --batch-size", 1)
        raise


def _interrupted(e: Exception) -> int | None:
    """train.Interrupted -> its message and 128 + signal number (130 SIGINT, 143 SIGTERM)."""
    if type(e).__name__ != "Interrupted" or not hasattr(e, "signum"):
        return None
    if getattr(e, "announce", True):
        stderr.print(str(e), markup=False, highlight=False, soft_wrap=True)
    return 128 + int(e.signum)
