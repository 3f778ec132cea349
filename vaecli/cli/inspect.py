"""vae traverse, latent-plot, plot-metrics and eval-disentanglement: looking into the latent
space and the training curves."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import UsageError
from . import inputs, output
from .app import (Ckpt, DataRoot, Device, Gif, Json, Steps, Threads, Zoom, app, at_least, label_option, one_of,
                  out_option, picture_out)


DecodeLabel = label_option("the class to decode with.")
TraverseOut = out_option("traverse.png")
LatentOut = out_option("latent.png")
ManifoldLabel = label_option("the class of the manifold grid.")


@app.command()
def traverse(
    ckpt: Ckpt = None,
    image: Optional[str] = typer.Option(None, "--image", help="Sweep around this image's posterior mean (file or test:N); default z = 0."),
    dims: str = typer.Option("10", "--dims", help="How many dimensions (the most informative first), or 'all'."),
    span: Annotated[float, typer.Option("--range", callback=at_least(0, strict=True),
                                        help="Sweep each dimension over mean +- this.")] = 3.0,
    steps: Steps = 9,
    label: DecodeLabel = None,
    zoom: Zoom = None,
    gif: Gif = False,
    out: TraverseOut = None,
    data_root: DataRoot = None,
    device: Device = "auto",
    threads: Threads = 0,
    as_json: Json = False,
) -> None:
    """One row per latent dimension, sweeping it around a point; rows ordered by KL (most
    informative first; by the variance of the posterior means where no per-dimension KL exists).
    An autoregressive decoder draws every frame pixel by pixel, all with the same random numbers
    (a row changes only where the swept dimension changes p(x|z))."""
    if dims != "all" and not (dims.isdigit() and int(dims) >= 1):
        raise UsageError(f"--dims takes a number >= 1 or 'all' (got {dims!r})")
    from ..evaluation import pictures
    from ..data.images import choose_zoom, grid_rows, save_gif, save_grid

    loaded = inputs.load(ckpt, device, threads)
    model = loaded.model
    target = picture_out(out, gif, loaded.run_dir, "traverse")
    reference = inputs.dataset(loaded, "test", data_root).head(1000)
    which = inputs.label(model, label)
    x = y = None
    if image is not None:
        x, _, y = inputs.images([image], loaded, data_root, given_label=which)
    with output.Drawing(model, steps * (model.latent_dim if dims == "all" else int(dims)), enabled=not as_json,
                        common=True):
        result = pictures.traversal(model, reference, None if dims == "all" else int(dims), span, steps, x, y, which)
    frames = result.pop("frames")
    if target.suffix.lower() == ".gif":  # frame t: every row's t-th image, rows laid out in a grid
        rows = frames.reshape(-1, steps, *frames.shape[1:])
        order = [*range(steps), *range(steps - 2, 0, -1)]  # there and back
        cols = grid_rows(len(rows))
        path, shown = save_gif([rows[:, t] for t in order], target, nrow=cols, zoom=zoom), choose_zoom(rows[:, 0], cols, zoom)
    else:
        path, shown = save_grid(frames, target, nrow=steps, zoom=zoom), choose_zoom(frames, steps, zoom)
    result.update({"out": str(path), "range": span, "steps": steps, "zoom": shown, "ckpt": str(loaded.path)})
    chosen = result["dims"]
    output.say(f"wrote {len(chosen)} rows (dims {', '.join(map(str, chosen))}, by {result['ordered_by']}) to {path}",
               as_json)
    output.emit({k: result[k] for k in ("out", "dims", "ordered_by", "scores", "range", "steps", "zoom", "ckpt")},
                as_json)


@app.command("latent-plot")
def latent_plot(
    ckpt: Ckpt = None,
    n: Annotated[int, typer.Option("--n", callback=at_least(1), help="Test images to plot.")] = 5000,
    method: Annotated[str, typer.Option("--method", callback=one_of("auto", "pca", "tsne"),
                                        help="auto (2-D latents directly, else PCA), pca or tsne.")] = "auto",
    out: LatentOut = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for t-SNE.")] = 0,
    label: ManifoldLabel = None,
    zoom: Zoom = None,
    data_root: DataRoot = None,
    device: Device = "auto",
    threads: Threads = 0,
    as_json: Json = False,
) -> None:
    """Posterior means of test images coloured by label: directly when latent_dim = 2 (with the
    decoded manifold grid beside it), else projected by PCA or t-SNE."""
    from ..evaluation import evaluate, pictures, plots
    from ..data.images import choose_zoom, save_grid

    loaded = inputs.load(ckpt, device, threads)
    model = loaded.model
    data = inputs.dataset(loaded, "test", data_root).head(n)
    means = evaluate.latent_means(model, data)
    points, used, axes = pictures.project_2d(means, method, seed)
    path = inputs.out_path(out, loaded, "latent.png")
    d = means.shape[1]
    title = f"{loaded.dataset.name}: {len(means)} test images, latent_dim={d}, {used}"
    labels = data.labels.numpy() if data.labels is not None else None
    plots.scatter_figure(points, labels, path, title, *axes)
    result = {"out": str(path), "method": used, "n": len(means), "latent_dim": d, "ckpt": str(loaded.path)}
    if d == 2:
        frames = pictures.manifold(model, 20, inputs.label(model, label))
        result["zoom"] = choose_zoom(frames, 20, zoom)
        result["manifold"] = str(save_grid(frames, Path(path).with_name(Path(path).stem + "_manifold.png"), nrow=20,
                                           zoom=result["zoom"]))
    output.say(f"wrote {path}" + (f" and {result['manifold']}" if "manifold" in result else ""), as_json)
    output.emit(result, as_json)


@app.command("plot-metrics")
def plot_metrics(
    run: Path = typer.Argument(..., help="A run folder (with metrics.jsonl)."),
    out: Optional[Path] = typer.Option(None, "--out", help="PNG to write (default: RUN/metrics.png)."),
    as_json: Json = False,
) -> None:
    """Loss, ELBO, KL and active-unit curves from RUN/metrics.jsonl."""
    from ..evaluation import plots
    from ..runtime import runs

    records = runs.read_metrics(run)
    path = plots.metrics_figure(records, out or run / "metrics.png", title=str(run))
    output.say(f"wrote {path} ({len(records)} records)", as_json)
    output.emit({"out": str(path), "records": len(records)}, as_json)


# disentanglement.METRICS, repeated so that `vae --help` does not import torch (a test keeps them equal)
METRICS = ("mig", "dci", "sap", "factor_vae", "beta_vae")


@app.command("eval-disentanglement")
def eval_disentanglement(
    ckpt: Ckpt = None,
    metrics: str = typer.Option(
        ",".join(METRICS), "--metrics",
        help="Which metrics, comma-separated: mig, dci, sap, factor_vae, beta_vae (default: all)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the factor draws behind dci, sap, factor_vae and beta_vae."),
    points: int = typer.Option(
        10_000, "--points", min=10,
        help="Observations behind MIG, and training points of dci, sap, factor_vae and beta_vae (half as "
             "many test points), as in disentanglement_lib; fewer are faster and noisier."),
    data_root: DataRoot = None,
    device: Device = "auto",
    threads: Threads = 0,
    as_json: Json = False,
) -> None:
    """Disentanglement of the posterior means against the ground-truth factors of the run's
    dataset (shapes, dsprites or shapes3d; all of its images): MIG (Chen et al. 2018) with the per-factor breakdown, DCI
    (Eastwood & Williams 2018, gradient boosted trees), SAP (Kumar et al. 2018), the FactorVAE
    score (Kim & Mnih 2018) and the BetaVAE score (Higgins et al. 2017), with disentanglement_lib's
    definitions and sample counts (--points: MIG on 10,000 observations of uniformly drawn factors; the others
    trained on 10,000 points and tested on 5,000; batches of 64; ~1 minute on 2 CPU cores, mostly DCI's
    boosted trees). Factors that never vary are left out, as disentanglement_lib does."""
    from ..evaluation import evaluate
    from ..training import tracking
    from ..data import ImageSet
    from ..evaluation.disentanglement import evaluate as disentanglement

    chosen = [m.strip() for m in metrics.split(",") if m.strip()]
    unknown = sorted(set(chosen) - set(METRICS))
    if unknown or not chosen:
        raise UsageError(f"--metrics takes a comma-separated list of {', '.join(METRICS)} (got {metrics!r})")
    loaded = inputs.load(ckpt, device, threads)
    # Every image of the dataset (dataset.limit aside: the metrics are of the factor grid, which
    # shapes renders whole and dsprites/shapes3d store whole).
    parts = [inputs.dataset(loaded, split, data_root, whole=True) for split in ("train", "test")]
    if parts[0].factors is None:
        raise UsageError(f"eval-disentanglement needs ground-truth factors; dataset={loaded.dataset.name} "
                         "has none (train on dataset=shapes, dsprites or shapes3d)")
    if loaded.model.latent_dim < 2:
        raise UsageError("the disentanglement metrics need a model with at least two latent dimensions")
    data = ImageSet.concat(parts)
    codes = evaluate.latent_means(loaded.model, data).cpu()
    result: dict = {"n": len(data), "latent_dim": codes.shape[1], "metrics": chosen, "seed": seed, "points": points}
    try:
        result.update(disentanglement(codes, data.factors, data.factor_names, tuple(chosen), seed, points))
    except ValueError as e:
        raise UsageError(f"{e}: dci, sap, factor_vae and beta_vae draw observations for any factors "
                         "(choose --metrics mig here)") from None
    result["ckpt"] = str(loaded.path)
    if "mig" in chosen:
        tracking.append_eval(loaded.run_dir, {"kind": "mig", "mig": result["mig"], "n": result["n"], "step": loaded.step})
    headline = _headline(result)
    if any(key != "mig" for key in headline):
        tracking.append_eval(loaded.run_dir, {"kind": "factor_metrics", **headline, "seed": seed, "step": loaded.step})
    if not as_json:
        _print_disentanglement(result, seed)
    output.emit(result, as_json)


def _print_disentanglement(result: dict, seed: int) -> None:
    if "mig" in result:
        rows = [[row["name"], "-" if row["mig"] is None else f"{row['mig']:.3f}", f"{row['entropy']:.2f}",
                 f"z{row['top_dim']}: {row['mi_top']:.2f}", f"z{row['second_dim']}: {row['mi_second']:.2f}"]
                for row in result["factors"]]
        title = (f"MIG {result['mig']:.3f} ({result['mig_points']} observations of {result['n']} images, "
                 f"latent_dim={result['latent_dim']})")
        output.stdout.print(output.columns(title, ["factor", "MIG", "H (nats)", "best dim: MI", "2nd dim: MI"], rows))
    lines = _metric_rows(result)
    if lines:
        output.stdout.print(output.columns(f"disentanglement_lib's metrics (seed {seed})", ["metric", "value"], lines))


def _headline(result: dict) -> dict:
    """One number per metric (what vae runs shows)."""
    picks = {"mig": ("mig",), "dci": ("dci", "disentanglement"), "sap": ("sap", "sap"),
             "factor_vae": ("factor_vae", "eval_accuracy"), "beta_vae": ("beta_vae", "eval_accuracy")}
    out = {}
    for name, path in picks.items():
        value = result.get(path[0])
        for key in path[1:]:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, (int, float)):
            out[name] = value
    return out


def _metric_rows(result: dict) -> list[list[str]]:
    rows = []
    if "dci" in result:
        d = result["dci"]
        rows += [["DCI disentanglement", f"{d['disentanglement']:.3f}"], ["DCI completeness", f"{d['completeness']:.3f}"],
                 ["DCI informativeness (train / test accuracy)",
                  f"{d['informativeness_train']:.3f} / {d['informativeness_test']:.3f}"]]
    if "sap" in result:
        rows.append(["SAP (discrete factors: linear SVM per code)", f"{result['sap']['sap']:.3f}"])
    for key, name in (("factor_vae", "FactorVAE score"), ("beta_vae", "BetaVAE score")):
        if key in result:
            r = result[key]
            extra = f", {r['num_active_dims']} active dims" if "num_active_dims" in r else ""
            rows.append([f"{name} (eval / train accuracy{extra})", f"{r['eval_accuracy']:.3f} / {r['train_accuracy']:.3f}"])
    return rows
