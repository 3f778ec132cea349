"""vae eval-iwae and vae score."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from ..errors import UsageError
from . import inputs, output
from .app import Ckpt, DataRoot, Device, EvalPrecision, Json, Quiet, Threads, app, at_least, one_of


def _k_list(text: str) -> list[int]:
    """--k 5000 or --k 1,50,5000."""
    try:
        ks = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--k takes a whole number or a list like 1,50,5000 (got {text!r})") from None
    if not ks:
        raise UsageError("--k needs at least one value")
    for j in ks:
        if j < 1:
            raise UsageError(f"--k must be >= 1 (got {j})")
    return sorted(set(ks))


BatchSize = Annotated[int, typer.Option("--batch-size", callback=at_least(1), help="Images per batch.")]
SampleSeed = Annotated[int, typer.Option("--seed", help="Seed for the importance samples.")]


@app.command("eval-iwae")
def eval_iwae(
    ckpt: Ckpt = None,
    k: str = typer.Option("5000", "--k", help="Importance samples per image, or a list (1,50,5000) to see the bound tighten."),
    n: Annotated[int | None, typer.Option("--n", callback=at_least(1), help="Use only the first N images of the split.")] = None,
    batch_size: BatchSize = 64,
    split: Annotated[str, typer.Option("--split", callback=one_of("test", "train"), help="test or train.")] = "test",
    seed: SampleSeed = 0,
    precision: EvalPrecision = "auto",
    data_root: DataRoot = None,
    device: Device = "auto",
    threads: Threads = 0,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """ELBO and the IWAE bound log (1/k) sum p(x,z_k)/q(z_k|x) (Burda et al. 2015), nats/image,
    with the latent diagnostics: KL per dimension, active units, I(x; z), KL(q(z) || p(z))."""
    ks = _k_list(k)
    import torch

    from ..evaluation import evaluate
    from ..training import tracking

    loaded = inputs.load(ckpt, device, threads)
    evaluate.require_bound(loaded.model, str(loaded.path))
    data = inputs.dataset(loaded, split, data_root).head(n)
    torch.manual_seed(seed)
    with output.Counter(f"eval-iwae k={ks[-1]}", len(data), enabled=not quiet and not as_json) as advance:
        result = evaluate.iwae_dataset(loaded.model, data, ks, batch_size, on_batch=advance, precision=precision)
    result.update({"split": split, "ckpt": str(loaded.path), "dataset": loaded.dataset.name,
                   "kl_exact": loaded.model.exact_kl})
    if loaded.model.posterior == "point":
        result["code_prior"] = "learned" if loaded.model.code_prior is not None else "uniform"
        output.stderr.print("note: the posterior is a point mass on the codes, so the bound is the same for every k; "
                            + ("it uses the learned prior over codes (vae train-prior)"
                               if result["code_prior"] == "learned" else
                               "it uses a uniform prior over codes (KL = h*w*log K); train a prior with vae "
                               "train-prior for a tighter bound"), markup=False, highlight=False, soft_wrap=True)
    tracking.append_eval(loaded.run_dir, {"kind": "iwae", "bound": result["iwae"], "se": result["iwae_se"],
                                      "k": result["k"], "n": result["n"], "split": split, "elbo": result["elbo"],
                                      "of_data": result["bound"], "step": loaded.step, "seed": seed})  # for `vae runs`
    if result["collapsed"]:
        output.warn(evaluate.COLLAPSE_ADVICE.format(kl=result["kl"], active=result["active_units"]))
    output.emit(result, as_json, _iwae_table(result, loaded.dataset.name, split))


def _iwae_table(result: dict, dataset: str, split: str):
    k = result["k"]
    rows = [("ELBO", f"{result['elbo']:.2f} ± {output.se(result['elbo_se'])} nats")]
    for j, bound in result["iwae_by_k"].items():
        rows.append((f"IWAE (k={j})", f"{bound['iwae']:.2f} ± {output.se(bound['iwae_se'])} nats"))
    if result["bound"]:
        rows.append(("-log p(x) <=", f"{result['nll']:.2f} nats = {result['bits_per_dim']:.4f} bits/dim"))
    rows += [
        ("what it is", result["measure"]),
        ("KL" + ("" if result["kl_exact"] else f" (Monte Carlo, k={k})")
         + (f" ({result['code_prior']} prior over codes)" if "code_prior" in result else ""),
         f"{result['kl']:.2f} nats"),
        ("recon", f"{result['recon']:.2f} nats"),
    ]
    if result["active_units"] is not None:
        rows.append(("active units", f"{result['active_units']} / {result['latent_dim']} (Cov_x E[z_u] > 0.01)"))
    if result["mutual_info"] is not None:
        ceiling = f"at most log n = {result['mutual_info_max']:.2f}"
        rows.append(("I(x; z)", f"{result['mutual_info']:.2f} nats ("
                     + (f"saturated: {ceiling}, the true value may be larger)" if result["mutual_info_saturated"]
                        else f"{ceiling})")))
    if "perplexity" in result:
        rows.append(("codebook", f"perplexity {result['perplexity']:.1f}, {result['dead_codes']:.0f} codes unused per "
                                 f"batch, {result['revived']:.0f} revived in training"))
    if result["agg_posterior_kl"] is not None:
        rows.append(("KL(q(z) || p(z))", f"{result['agg_posterior_kl']:.2f} nats (mean KL - I(x; z)"
                     + ("; an upper estimate, as I(x; z) is saturated)" if result["agg_posterior_kl_upper"] else ")")))
    if result["kl_per_dim"] is not None:
        rows.append(("KL per dim", output.kl_dims(result["kl_per_dim"])))
    if result.get("kl_per_group"):
        rows.append(("KL per group", output.groups(result["kl_per_group"], result["active_per_group"])))
        rows.append(("active groups", f"{result['active_groups']} / {len(result['kl_per_group'])} (KL >= 0.1 nats)"))
    rows.append(("time", f"{result['seconds']:.1f} s ({result['samples_per_s']:,.0f} samples/s)"))
    rows.append(("precision", f"{result['precision']} ({result['precision_check']['reason']})"))
    return output.table(f"eval-iwae: {dataset} {split}, n={result['n']}, k={k}", rows)


@app.command("score")
def score(
    images: Optional[List[str]] = typer.Argument(None, metavar="[IMAGES...]",
                                                 help="Image files or folders to score (default: the checkpoint's --split)."),
    ckpt: Ckpt = None,
    split: Annotated[str, typer.Option("--split", callback=one_of("test", "train"),
                                       help="The checkpoint's own split to score when no IMAGES or --data.")] = "test",
    other_data: Optional[str] = typer.Option(None, "--data", help="Score another dataset's test split instead: "
                                             "'dataset=NAME [dataset.KEY=VALUE ...]'."),
    against: Optional[str] = typer.Option(None, "--against", help="A second set to tell apart by the score (AUROC, AUPR): "
                                          "test, train, 'dataset=NAME ...', or image files / a folder."),
    k: Annotated[int, typer.Option("--k", callback=at_least(1), help="Importance samples per image.")] = 1000,
    n: Annotated[Optional[int], typer.Option("--n", callback=at_least(1), help="The first N images of each set.")] = None,
    batch_size: BatchSize = 64,
    out: Annotated[Optional[Path], typer.Option("--out", help="CSV, one row per image (default: RUN/scores.csv).")] = None,
    hist: Annotated[Optional[Path], typer.Option("--hist", help="Histogram PNG of the scores (default with --against: "
                                                 "RUN/scores.png).")] = None,
    seed: SampleSeed = 0,
    precision: EvalPrecision = "auto",
    data_root: DataRoot = None,
    device: Device = "auto",
    threads: Threads = 0,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Per-image -IWAE (a bound on -log p(x), with bits/dim, where the likelihood makes it one), ELBO,
    recon and KL into a CSV, with a summary; --against a second set reports how well the score
    tells the two apart (out-of-distribution detection: AUROC, AUPR) and draws both histograms."""
    _check_score_arguments(images, other_data, out, hist)
    import torch

    from ..evaluation import evaluate, plots, scoring

    loaded = inputs.load(ckpt, device, threads)
    evaluate_model = loaded.model
    sets = _score_sets([images or other_data or split] + ([against] if against else []), loaded, data_root, n, quiet)
    torch.manual_seed(seed)
    total = sum(len(f) for f, _, _ in sets) * (evaluate_model.num_classes if evaluate_model.conditional else 1)
    check = evaluate.choose_precision(evaluate_model, sets[0][0], k, batch_size, precision,
                                      label=0 if evaluate_model.conditional else None)
    with output.Counter(f"score k={k}", total, enabled=not quiet and not as_json) as advance:
        scored = [scoring.score(evaluate_model, f, names, label, k, batch_size, advance, check)
                  for f, names, label in sets]
    csv_path = scoring.write_csv(inputs.out_path(out, loaded, "scores.csv"), scored)
    measure = evaluate_model.measure
    result = {"ckpt": str(loaded.path), "k": k, "bound": measure.bound, "measure": measure.what,
              "precision": check.precision, "precision_check": check.to_dict(),
              "sets": [s.summary() for s in scored], "csv": str(csv_path),
              "separation": scoring.separation(*scored) if against else None, "histogram": None}
    if against or hist:
        where = inputs.out_path(hist, loaded, "scores.png")
        title = (f"-log p(x) per image (IWAE bound, k={k})" if measure.bound
                 else f"-IWAE per image (k={k}; not a bound on -log p(x))")
        plots.score_histogram([(s.label, s.neg_iwae.tolist()) for s in scored], where, title, "nats")
        result["histogram"] = str(where)
    if not quiet:
        _warn_if_foreign_scores_better(result["separation"], measure.bound, against, scored[0].label)
    output.emit(result, as_json, _score_table(result))


def _check_score_arguments(images, other_data, out: Path | None, hist: Path | None) -> None:
    if images and other_data:
        raise UsageError("score IMAGES or --data DATASET, not both")
    for path, suffix in ((out, ".csv"), (hist, ".png")):
        if path is not None and path.suffix.lower() != suffix:
            raise UsageError(f"{path} must end in {suffix}")


def _warn_if_foreign_scores_better(sep: dict | None, bound: bool, against: str, label: str) -> None:
    if sep and (sep["foreign_more_likely"] or sep["auroc"] < 0.5):
        how = "on average" if sep["foreign_more_likely"] else f"for most pairs of images (AUROC {sep['auroc']:.2f})"
        what = "a higher likelihood" if bound else "a better score (-IWAE; not a likelihood here)"
        output.warn(f"the model gives '{against}' {what} {how} than '{label}': the failure "
                    "Nalisnick et al. (2019) describe, where likelihood alone does not flag foreign images")


def _score_sets(specs: list, loaded, data_root: Optional[str], n: Optional[int], quiet: bool) -> list[tuple]:
    """(images, names, label) for each set spec, with a note for converted image files."""
    from ..evaluation import scoring

    sets = []
    for spec in specs:
        found, names, note = scoring.image_set(spec, loaded, data_root, n)
        label = spec if isinstance(spec, str) else " ".join(spec)
        if note and not quiet:
            output.stderr.print(f"note: {label}: {note}", markup=False, highlight=False, soft_wrap=True)
        sets.append((found, names, label))
    return sets


def _score_table(result: dict):
    rows = []
    for s in result["sets"]:
        score = (f"-log p(x) {s['nll']:.2f} ± {output.se(s['nll_se'])} nats = {s['bits_per_dim']:.4f} bits/dim"
                 if result["bound"] else f"-IWAE {s['neg_iwae']:.2f} ± {output.se(s['neg_iwae_se'])} nats")
        rows.append((f"{s['set']} (n={s['n']})",
                     f"{score}; ELBO {s['elbo']:.2f}, recon {s['recon']:.2f}, KL {s['kl']:.2f}"))
    rows.append(("what it is", result["measure"]))
    rows.append(("precision", f"{result['precision']} ({result['precision_check']['reason']})"))
    sep = result["separation"]
    if sep:
        rows.append(("AUROC", f"{sep['auroc']:.4f} (0.5: chance; < 0.5: the second set scores better)"))
        rows.append(("AUPR", f"{sep['aupr']:.4f} (chance {sep['aupr_chance']:.3f})"))
    rows.append(("per image", result["csv"]))
    if result["histogram"]:
        rows.append(("histogram", result["histogram"]))
    return output.table(f"vae score: k={result['k']}", rows)
