"""vae eval-iwae."""

from __future__ import annotations

import math
from typing import Annotated

import typer

from ..errors import UsageError
from . import inputs, output
from .app import Ckpt, DataRoot, Device, Json, Quiet, app, at_least, one_of


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


@app.command("eval-iwae")
def eval_iwae(
    ckpt: Ckpt = None,
    k: str = typer.Option("5000", "--k", help="Importance samples per image, or a list (1,50,5000) to see the bound tighten."),
    n: Annotated[int | None, typer.Option("--n", callback=at_least(1), help="Use only the first N images of the split.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", callback=at_least(1), help="Images per batch.")] = 64,
    split: Annotated[str, typer.Option("--split", callback=one_of("test", "train"), help="test or train.")] = "test",
    seed: Annotated[int, typer.Option("--seed", help="Seed for the importance samples.")] = 0,
    data_root: DataRoot = None,
    device: Device = "auto",
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """ELBO and the IWAE bound log (1/k) sum p(x,z_k)/q(z_k|x) (Burda et al. 2015), nats/image,
    with the latent diagnostics: KL per dimension, active units, I(x; z), KL(q(z) || p(z))."""
    ks = _k_list(k)
    import torch

    from .. import evaluate, runs

    loaded = inputs.load(ckpt, device)
    evaluate.require_bound(loaded.model, str(loaded.path))
    data = inputs.dataset(loaded, split, data_root).head(n)
    torch.manual_seed(seed)
    with output.Counter(f"eval-iwae k={ks[-1]}", len(data), enabled=not quiet and not as_json) as advance:
        result = evaluate.iwae_dataset(loaded.model, data, ks, batch_size, on_batch=advance)
    result.update({"split": split, "ckpt": str(loaded.path), "dataset": loaded.dataset.name,
                   "kl_exact": loaded.model.exact_kl})
    if loaded.model.posterior == "point":
        result["code_prior"] = "learned" if loaded.model.code_prior is not None else "uniform"
        output.stderr.print("note: the posterior is a point mass on the codes, so the bound is the same for every k; "
                            + ("it uses the learned prior over codes (vae train-prior)"
                               if result["code_prior"] == "learned" else
                               "it uses a uniform prior over codes (KL = h*w*log K); train a prior with vae "
                               "train-prior for a tighter bound"), markup=False, highlight=False, soft_wrap=True)
    runs.append_eval(loaded.run_dir, {"kind": "iwae", "bound": result["iwae"], "se": result["iwae_se"],
                                      "k": result["k"], "n": result["n"], "split": split, "elbo": result["elbo"],
                                      "step": loaded.step, "seed": seed})  # for `vae runs`
    if result["collapsed"]:
        output.warn(evaluate.COLLAPSE_ADVICE.format(kl=result["kl"], active=result["active_units"]))
    output.emit(result, as_json, _iwae_table(result, loaded.dataset.name, split))


def _iwae_table(result: dict, dataset: str, split: str):
    k = result["k"]
    rows = [("ELBO", f"{result['elbo']:.2f} ± {output.se(result['elbo_se'])} nats")]
    for j, bound in result["iwae_by_k"].items():
        rows.append((f"IWAE (k={j})", f"{bound['iwae']:.2f} ± {output.se(bound['iwae_se'])} nats"))
    rows += [
        ("-log p(x) <=", f"{result['nll']:.2f} nats = {result['bits_per_dim']:.4f} bits/dim"),
        ("KL" + ("" if result["kl_exact"] else f" (Monte Carlo, k={k})")
         + (f" ({result['code_prior']} prior over codes)" if "code_prior" in result else ""),
         f"{result['kl']:.2f} nats"),
        ("recon", f"{result['recon']:.2f} nats"),
    ]
    if result["active_units"] is not None:
        rows.append(("active units", f"{result['active_units']} / {result['latent_dim']} (Cov_x E[z_u] > 0.01)"))
    if result["mutual_info"] is not None:
        rows.append(("I(x; z)", f"{result['mutual_info']:.2f} nats (at most log n = {math.log(result['n']):.2f})"))
    if "perplexity" in result:
        rows.append(("codebook", f"perplexity {result['perplexity']:.1f}, {result['dead_codes']:.0f} codes unused per "
                                 f"batch, {result['revived']:.0f} revived in training"))
    if result["agg_posterior_kl"] is not None:
        rows.append(("KL(q(z) || p(z))", f"{result['agg_posterior_kl']:.2f} nats (mean KL - I(x; z))"))
    if result["kl_per_dim"] is not None:
        rows.append(("KL per dim", output.kl_dims(result["kl_per_dim"])))
    if result.get("kl_per_group"):
        rows.append(("KL per group", output.groups(result["kl_per_group"], result["active_per_group"])))
        rows.append(("active groups", f"{result['active_groups']} / {len(result['kl_per_group'])} (KL >= 0.1 nats)"))
    rows.append(("time", f"{result['seconds']:.1f} s ({result['samples_per_s']:,.0f} samples/s)"))
    return output.table(f"eval-iwae: {dataset} {split}, n={result['n']}, k={k}", rows)
