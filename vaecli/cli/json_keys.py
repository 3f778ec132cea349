"""Every command's --json object, declared once: each top-level key and what it means.

The generated reference (docs: Reference > JSON output) is written from these tables, and the
test suite runs every command with VAECLI_CHECK_JSON=1, under which output.emit refuses a key
missing here. Summaries that are dataclasses (vae train, vae train-prior, a row of vae runs) are
declared by their fields and the comment beside each.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import tokenize

JSON: dict[str, dict[str, str]] = {}

CKPT = "the model file the command read"
OUT = "the file (or folder) written"
_BOUND = "true where the figures bound -log P(x) of the data as stored (the likelihood decides; Tutorials: the likelihood and its bound)"
_MEASURE = "what the figures are, in one line (e.g. '-log P(x) of the binary images ...')"
_PRECISION_CHECK = ("why the networks ran in that precision: {precision, reason, images, k, mean_difference, max_over_se, "
                    "units} of the same-samples check on the first images")

JSON.update({
    "train -m": {
        "sweep_dir": "the sweep folder", "arguments": "the overrides as given", "jobs": "number of runs",
        "failed": "runs that crashed (the exit status is then 1)",
        "runs": "one object per run, as `vae runs --json` gives it",
        "best": "a search (hydra/sweeper=optuna): the best trial {trial, value, params, run, optimize}",
    },
    "sample": {
        "out": OUT, "n": "images drawn", "temperature": "the temperature (a list: one per latent group, top first)",
        "seed": "the seed of the draws", "sampler": "prior, or the fitted sampler used (gmm, two_stage)",
        "label": "the class drawn (conditional models; 'all': one row per class), else null",
        "zoom": "the enlargement of each pixel in the PNG", "ckpt": CKPT,
    },
    "reconstruct": {
        "out": OUT, "n": "images",
        "images": "per image: {image, neg_elbo} (its -ELBO in nats; neg_log_px for a model without a bound)",
        "mean_neg_elbo": "the mean -ELBO of these images, nats",
        "mean_neg_log_px": "a model without a bound (model=ae): the mean -log p(x|z) of these images, nats, "
                           "in place of mean_neg_elbo (and each image's neg_log_px in place of neg_elbo)",
        "samples": "reconstructions drawn per image (--samples)",
        "zoom": "the enlargement of each pixel", "ckpt": CKPT,
    },
    "interpolate": {
        "out": OUT, "steps": "points on the path, endpoints included", "method": "lerp or slerp",
        "a": "the first image (file or test:N)", "b": "the second image", "zoom": "the enlargement of each pixel",
        "ckpt": CKPT,
    },
    "fit-sampler": {
        "sampler": "gmm or two_stage", "out": "RUN/sampler.NAME.safetensors", "images": "training images fitted",
        "latent_dim": "dimensions of z", "fit_on": "mean (posterior means) or sample (one draw per image)",
        "seconds": "wall time of the fit", "ckpt": CKPT, "config": "the sampler's settings as composed",
        "components": "gmm: mixture components fitted (the choice, with sampler.components=auto)",
        "log_q_z": "gmm: mean log-density of the fitted latents under the mixture, nats",
        "iterations": "gmm: EM iterations", "converged": "gmm: whether EM converged within sampler.max_iter",
        "held_out_log_q_z": "gmm with components=auto: held-out log-density of each size tried",
        "loss": "two_stage: the second VAE's final loss", "gamma": "two_stage: its learned output scale",
    },
    "eval-samples": {
        "fid": "Fréchet Inception Distance (Heusel et al. 2017); in pixel features with --features pixels",
        "kid": "Kernel Inception Distance, mean over subsets (Bińkowski et al. 2018)", "kid_std": "its standard deviation",
        "kid_subsets": "subsets averaged", "kid_subset_size": "images per subset",
        "precision": "improved precision (Kynkäänniemi et al. 2019)", "recall": "improved recall",
        "pr_neighbours": "k of the k-NN radii", "n": "images on each side", "of": "samples or reconstructions",
        "sampler": "prior or the fitted sampler", "temperature": "of the samples", "images": "means or draws of p(x|z)",
        "features": "inception or pixels", "feature_dims": "dimensions of a feature vector",
        "reference_cache": "the cached features of the data split", "split": "the data split compared against",
        "dataset": "the run's dataset", "seed": "seed of the draws and the subset", "seconds": "wall time",
        "step": "the checkpoint's training step", "ckpt": CKPT,
    },
    "eval-recon": {
        "psnr": "peak signal-to-noise ratio of the reconstructions, dB", "ssim": "structural similarity (11-px Gaussian window)",
        "lpips": "LPIPS (VGG16), null when its weights are missing (lpips_missing says why) or skipped",
        "lpips_missing": "why lpips is null", "lpips_weights": "the VGG16 weights used", "rfid": "Fréchet distance of reconstructions to originals",
        "sharpness": "mean squared Laplacian of the reconstructions over the originals' (1: as much fine detail as the data)",
        "features": "rFID's features: inception or pixels", "n": "images", "split": "the data split",
        "dataset": "the run's dataset", "seconds": "wall time", "step": "the checkpoint's training step", "ckpt": CKPT,
    },
    "eval-iwae": {
        "elbo": "mean ELBO, nats per image", "elbo_se": "its standard error", "iwae": "mean IWAE bound with k samples, nats",
        "iwae_se": "its standard error", "bound": _BOUND, "measure": _MEASURE,
        "nll": "-iwae: the bound on -log p(x), nats; null when bound is false",
        "bits_per_dim": "nll in bits per dimension; null when bound is false",
        "elbo_bits_per_dim": "-elbo in bits per dimension; null when bound is false",
        "kl": "mean KL(q(z|x) || p(z)), nats", "kl_exact": "closed-form KL (false: Monte Carlo)",
        "recon": "mean -E log p(x|z), nats", "k": "importance samples per image (the largest asked)",
        "iwae_by_k": "for each k asked: {iwae, iwae_se}, nested on the same samples", "n": "images", "dims": "pixels x channels",
        "seconds": "wall time", "samples_per_s": "importance samples per second", "precision": "fp32 or bf16",
        "precision_check": _PRECISION_CHECK, "split": "test or train", "dataset": "the run's dataset", "ckpt": CKPT,
        "active_units": "latent units whose posterior mean varies over the data (Burda's Cov > 0.01)",
        "latent_dim": "dimensions of z", "kl_per_dim": "KL of each dimension (closed-form models)",
        "posterior_mean_variance": "variance of each dimension's posterior mean over the data",
        "mutual_info": "I(x; z) under the aggregate posterior (Hoffman & Johnson 2016), nats",
        "mutual_info_max": "its ceiling log n", "mutual_info_saturated": "I(x; z) within 0.5 nats of the ceiling",
        "agg_posterior_kl": "KL(q(z) || p(z)) = KL - I(x; z): the prior's holes, nats",
        "agg_posterior_kl_upper": "true when agg_posterior_kl is an upper estimate (I saturated)",
        "collapsed": "posterior collapse: less than one bit in the latents",
        "kl_per_group": "model=ladder: KL of each latent group, top first", "active_per_group": "model=ladder: active units of each group",
        "active_groups": "model=ladder: groups carrying information",
        "code_prior": "VQ-VAE: learned (vae train-prior) or uniform",
        "perplexity": "VQ-VAE: codebook perplexity, exp of the entropy of code use (mean over batches)",
        "dead_codes": "VQ-VAE: codebook entries a batch leaves unused (mean over batches)",
        "revived": "VQ-VAE: codes re-seeded during training (dead for model.dead_after steps)",
    },
    "score": {
        "sets": ("one object per scored set: {set, n, neg_iwae, neg_iwae_se, neg_iwae_median, nll, nll_se, nll_median, "
                 "bits_per_dim, elbo, recon, kl}; the nll and bits_per_dim entries are null when bound is false"),
        "separation": "--against: how well the score tells the sets apart {auroc, aupr, ...}, else null",
        "csv": "the per-image CSV written", "histogram": "the histogram PNG, if drawn", "k": "importance samples per image",
        "bound": _BOUND, "measure": _MEASURE, "precision": "fp32 or bf16", "precision_check": _PRECISION_CHECK, "ckpt": CKPT,
    },
    "encode": {
        "out": OUT, "latents": "images encoded", "shape": "the shape of one latent", "mode": "mean or sample",
        "scaling_factor": "1/std of the training images' latents (multiply by it for a diffusion model)", "ckpt": CKPT,
    },
    "decode": {"out": OUT, "images": "images decoded", "ckpt": CKPT},
    "export": {"out": "the diffusers folder written", "format": "diffusers", "scaling_factor": "stored in its config.json",
               "ckpt": CKPT},
    "traverse": {
        "out": OUT, "dims": "the latent dimensions shown, one row each", "ordered_by": "how the rows are ordered (KL)",
        "scores": "the score of each row's dimension", "range": "each dimension runs over [-range, range]",
        "steps": "points per row", "zoom": "the enlargement of each pixel", "ckpt": CKPT,
    },
    "latent-plot": {
        "out": OUT, "method": "direct (2-D latents), pca or tsne", "n": "images plotted", "latent_dim": "dimensions of z",
        "zoom": "2-D latents: the manifold picture's enlargement", "manifold": "2-D latents: the decoded manifold grid",
        "ckpt": CKPT,
    },
    "plot-metrics": {"out": OUT, "records": "metrics.jsonl lines plotted"},
    "eval-disentanglement": {
        "n": "images encoded (the whole dataset)", "latent_dim": "dimensions of z", "metrics": "the metrics computed",
        "seed": "the metrics' seed", "points": "observations drawn for each metric",
        "mig": "Mutual Information Gap (Chen et al. 2018)", "factors": "MIG per factor: {name, mig, entropy, top_dim, mi_top, second_dim, mi_second}",
        "mig_points": "observations MIG used", "dci": "DCI disentanglement, completeness, informativeness (Eastwood & Williams 2018)",
        "sap": "SAP score (Kumar et al. 2018)", "factor_vae": "FactorVAE score (Kim & Mnih 2018)",
        "beta_vae": "BetaVAE score (Higgins et al. 2017)", "ckpt": CKPT,
    },
    "runs": {"root": "the folder listed", "runs": "one object per run (fields below as runs[].KEY)"},
})


def undeclared(schema: str, result: dict) -> list[str]:
    declared = declaration(schema)
    return sorted(k for k in result if k not in declared)


def declaration(schema: str) -> dict[str, str]:
    if schema not in JSON and schema in _FROM_DATACLASS:
        JSON[schema] = _FROM_DATACLASS[schema]()
    if schema in _DERIVED:
        return _DERIVED[schema]()
    return JSON.get(schema, {})


def field_comments(cls) -> dict[str, str]:
    """A dataclass's fields, each with the comment on its line (its documentation)."""
    comments: dict[str, str] = {}
    source = inspect.getsource(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    line_name: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.NAME and token.start[1] == 4 and token.string in names:
            line_name.setdefault(token.start[0], token.string)
        elif token.type == tokenize.COMMENT and token.start[0] in line_name:
            comments[line_name[token.start[0]]] = token.string.lstrip("# ").strip()
    return {name: comments.get(name, "") for name in (f.name for f in dataclasses.fields(cls))}


def schemas() -> list[str]:
    """Every declared object, in the order of `vae --help`."""
    from .help import SHORT

    order = {name: i for i, name in enumerate(SHORT)}
    names = set(JSON) | set(_FROM_DATACLASS)
    return sorted(names, key=lambda s: (order.get(s.split()[0], 99), s))


def _runs() -> dict[str, str]:
    from ..experiments.catalog import Row

    return {**JSON["runs"], **{f"runs[].{k}": v for k, v in field_comments(Row).items()}}


def _train() -> dict[str, str]:
    from ..training.trainer import TrainSummary

    return field_comments(TrainSummary)


def _train_prior() -> dict[str, str]:
    from ..training.prior import PriorSummary

    return field_comments(PriorSummary)


_FROM_DATACLASS = {"train": _train, "train-prior": _train_prior}
_DERIVED = {"runs": _runs}
