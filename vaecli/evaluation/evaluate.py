"""Evaluation over a dataset: the single-sample ELBO (cheap, used while training), the
importance-weighted bound of eval-iwae (Burda et al. 2015) in nats per image and bits/dim, and
the latent-space diagnostics: KL per dimension, active units, mutual information I(x; z) and
the aggregate-posterior KL (Hoffman & Johnson 2016)."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from ..runtime import device as devices, sharing
from .. import objectives
from ..data import ImageSet
from ..errors import UsageError

# Elements of one (samples x images x pixels) block in eval-iwae. On CPU a block of ~12 MiB
# is measured fastest (bench/RESULTS.md: 1.6x over 64 MiB blocks, which page-fault on every
# allocation); a GPU wants large blocks to fill its cores.
CHUNK_ELEMENTS = {"cpu": 3 * 2**20, "cuda": 2**26}
NOT_AVERAGED = ("elbo", "kl", "recon", "loss", "aux_loss", "kl_clamped", "kl_weight")  # training-only metrics
ACTIVE_THRESHOLD = 0.01  # Burda et al. 2015: unit u is active when Cov_x(E_q[z_u]) > 0.01
# nats: latents whose mean KL is under one bit carry less than one bit about each image (KL >= I(x; z)):
# collapsed, whatever the active-unit count (a collapsed PixelCNN-decoder VAE keeps a few units just
# over Burda's covariance threshold at 0.15 nats in all; docs/results/likelihood.md)
COLLAPSE_KL = math.log(2)
# I(x; z) estimated from N images cannot exceed log N. Within this many nats of it, each image's
# code is mostly explained by its own posterior (q(z_i|x_i) / (N q(z_i)) ~ e^-0.5 or more on
# geometric average), so the true I(x; z) may be larger and KL - I an overestimate.
SATURATION_MARGIN = 0.5
LOG_2PI = math.log(2 * math.pi)


def batches(data: ImageSet, batch_size: int, device: torch.device):
    """(x, y) batches on `device`: images as floats (dequantized with the fixed evaluation noise
    where the set is), labels (or None)."""
    for start in range(0, len(data), batch_size):
        sharing.tick()  # take or give back cores as other vae processes start and end
        cut = slice(start, start + batch_size)
        y = data.labels[cut].to(device) if data.labels is not None else None
        yield data.to_float(data.images[cut].to(device), first=start), y


@torch.no_grad()
def posteriors(model, data: ImageSet, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """Means and standard deviations (N, D) of q(z|x) (q(z1|x) for hvae) over `data` (the
    standard deviations of an autoencoder's point mass are zero)."""
    model.eval()
    locs, scales = [], []
    for x, y in batches(data, batch_size, model.device):
        q = model.encode(x, y)
        locs.append(q.mean.double())
        scales.append(q.stddev.double())
    return torch.cat(locs), torch.cat(scales)


def latent_means(model, data: ImageSet, batch_size: int = 1000) -> torch.Tensor:
    """(N, D) points in latent space: posterior means (an autoencoder's codes)."""
    return posteriors(model, data, batch_size)[0]


def collapsed(mean_kl: float, active: int) -> bool:
    """A posterior that carries (almost) no information about x."""
    return active == 0 or mean_kl < COLLAPSE_KL


def require_bound(model, name: str = "this model") -> None:
    """The one refusal of a bound for a model that defines none (the autoencoder)."""
    if not model.has_bound:
        raise UsageError(f"{name} is a deterministic autoencoder (model=ae): it has no ELBO or "
                         "IWAE bound; eval-iwae needs a VAE")


def dimension_scores(model, data: ImageSet) -> tuple[list[float], str]:
    """How much each latent dimension is used, and by what measure: the KL per dimension where
    it has a closed form, else the variance of the posterior mean over `data`."""
    loc, scale = posteriors(model, data)
    if model.has_bound and model.exact_kl and model.posterior == "gaussian":
        return kl_per_dim(loc, scale), "kl"
    return active_units(loc)[1], "variance of the posterior mean"


def active_units(loc: torch.Tensor) -> tuple[int, list[float]]:
    """Burda et al. (2015): the number of dimensions u with Cov_x(E_q[z_u]) > 0.01, and each
    dimension's variance of the posterior mean."""
    variance = loc.var(0, unbiased=True) if loc.shape[0] > 1 else torch.zeros(loc.shape[1])
    return int((variance > ACTIVE_THRESHOLD).sum()), variance.tolist()


def kl_per_dim(loc: torch.Tensor, scale: torch.Tensor) -> list[float]:
    """Mean over images of KL(q(z_d|x) || N(0, 1)) for each dimension d (closed form)."""
    return (0.5 * (scale.square() + loc.square() - 1) - scale.log()).mean(0).tolist()


def mutual_information(loc: torch.Tensor, scale: torch.Tensor, chunk: int = 512,
                       generator: torch.Generator | None = None) -> float:
    """I(x; z) under the aggregate posterior q(z) = (1/N) sum_n q(z|x_n) of the N images:
    E_x E_q(z|x)[log q(z|x)] - E_q(z)[log q(z)], one z per image (Hoffman & Johnson 2016;
    the estimator of He et al. 2019). At most log N; computed without an (N, N, D) tensor."""
    n, d = loc.shape
    eps = torch.randn(loc.shape, generator=generator, dtype=loc.dtype, device=loc.device)
    z = loc + scale * eps
    # log q(z_i | x_i) at the sampled z_i (not the analytic entropy): then each term is at most
    # log N exactly, because q(z_i) >= q(z_i | x_i) / N.
    log_q_own = -0.5 * (eps.square().sum(1) + d * LOG_2PI) - scale.log().sum(1)
    inv_var = scale.pow(-2)  # (N, D)
    mu_inv = loc * inv_var
    const = (loc.square() * inv_var).sum(1) + 2 * scale.log().sum(1) + d * LOG_2PI  # (N,)
    log_qz = []
    for start in range(0, n, chunk):
        zc = z[start:start + chunk]  # (c, D): log N(z_i; mu_n, sigma_n) for every n via matmuls
        quad = zc.square() @ inv_var.T - 2 * zc @ mu_inv.T + const  # (c, N)
        log_qz.append(torch.logsumexp(-0.5 * quad, dim=1) - math.log(n))
    return (log_q_own - torch.cat(log_qz)).mean().item()


def latent_diagnostics(model, data: ImageSet, mean_kl: float, batch_size: int = 1000) -> dict:
    """Active units, KL per dimension (closed-form models), I(x; z), KL(q(z) || p(z)) and
    whether the posterior has collapsed. `mean_kl` is the model's mean KL over `data`. A
    point-mass posterior (VQ-VAE) has none of these: all None, never collapsed; a flow posterior
    has active units (of its mean path) and collapse, not I(x; z)."""
    undefined = {"active_units": None, "latent_dim": model.latent_dim, "posterior_mean_variance": None,
                 "kl_per_dim": None, "mutual_info": None, "mutual_info_max": None, "mutual_info_saturated": None,
                 "agg_posterior_kl": None, "agg_posterior_kl_upper": None, "collapsed": False}
    if model.posterior not in ("gaussian", "flow"):
        return undefined
    loc, scale = posteriors(model, data, batch_size)
    active, variances = active_units(loc)
    if model.posterior == "flow":  # a density known at its own samples only: no I(x; z) estimate
        return {**undefined, "active_units": active, "posterior_mean_variance": variances,
                "collapsed": collapsed(mean_kl, active)}
    mi = mutual_information(loc, scale, generator=torch.Generator(device=loc.device).manual_seed(0))
    # ELBO surgery: E_x KL(q(z|x) || p(z)) = I(x; z) + KL(q(z) || p(z)). For hvae the mean KL
    # spans both layers while MI covers z1 only, so the identity does not apply there.
    # Near its ceiling log N the estimate of I(x; z) is a lower one, so KL - I is then an upper
    # estimate of KL(q(z) || p(z)) for these N images, not the property of the model.
    single_layer = model.layers == 1
    ceiling = math.log(loc.shape[0])
    saturated = mi >= ceiling - SATURATION_MARGIN
    return {
        "active_units": active,
        "latent_dim": loc.shape[1],
        "posterior_mean_variance": variances,
        "kl_per_dim": kl_per_dim(loc, scale) if model.exact_kl else None,
        "mutual_info": mi,
        "mutual_info_max": ceiling,
        "mutual_info_saturated": saturated,
        "agg_posterior_kl": mean_kl - mi if single_layer else None,
        "agg_posterior_kl_upper": saturated if single_layer else None,
        "collapsed": collapsed(mean_kl, active),
    }


COLLAPSE_ADVICE = ("posterior collapse: the latents carry less than one bit about each image (KL {kl:.3f} "
                   "nats, {active} active units), so the decoder models the data alone. Likely causes: a "
                   "decoder strong enough to ignore z (model.decoder=pixelcnn or linear_ar), a large beta, or the KL "
                   "term winning early in training. Remedies: free bits (kl.free_bits=0.5), a committed "
                   "rate (kl.delta=0.25), KL warm-up (kl.schedule=linear), a weaker decoder "
                   "(model.ar_layers=1) or a smaller beta.")


@torch.no_grad()
def elbo_dataset(model, data: ImageSet, batch_size: int = 1000) -> dict:
    """Mean ELBO, KL and recon (nats/image) over `data`, one posterior sample per image, and
    (for Gaussian posteriors) the cheap diagnostics: active units and KL per dimension, plus
    the model's own statistics (a VQ-VAE's codebook perplexity and dead codes), image-weighted."""
    model.eval()
    device = model.device
    names, totals = None, None
    for x, y in batches(data, batch_size, device):
        _, m = objectives.elbo(model, x, y=y)
        names = names or ["elbo", "kl", "recon", *(k for k in m if k not in NOT_AVERAGED)]
        values = torch.stack([m[k] for k in names]).double() * x.shape[0]
        totals = values if totals is None else totals + values
    result = dict(zip(names, (totals / max(len(data), 1)).tolist()))
    if model.groups > 1:
        result.update(group_diagnostics(model, data, result, batch_size))
    elif model.has_bound and model.posterior in ("gaussian", "flow"):
        loc, scale = posteriors(model, data, batch_size)
        result["active_units"] = active_units(loc)[0]
        result["kl_per_dim"] = kl_per_dim(loc, scale) if model.exact_kl else None
    return result


@torch.no_grad()
def group_diagnostics(model, data: ImageSet, averages: dict, batch_size: int = 1000) -> dict:
    """For a model with latent groups (model=ladder): the mean KL of each group (top first,
    taken out of `averages`, elbo_dataset's kl_group1..G), its active units (Burda's Cov_x E[z_u]
    > 0.01, on the path through every group's posterior mean), active units in all, and the
    groups that carry information (KL >= COLLAPSE_KL nats)."""
    kls = [averages.pop(f"kl_group{t + 1}") for t in range(model.groups)]
    means: list[list[torch.Tensor]] = [[] for _ in range(model.groups)]
    for x, y in batches(data, batch_size, model.device):
        for t, loc in enumerate(model.group_means(x, y)):
            means[t].append(loc.double())
    active = [active_units(torch.cat(m))[0] for m in means]
    return {"kl_per_group": kls, "active_per_group": active, "active_units": sum(active),
            "active_groups": sum(kl >= COLLAPSE_KL for kl in kls), "kl_per_dim": None,
            "latent_dim": model.latent_dim * model.groups}


def _mean_se(values: torch.Tensor) -> tuple[float, float]:
    n = values.numel()
    se = (values.std(unbiased=True) / math.sqrt(n)).item() if n > 1 else float("nan")
    return values.mean().item(), se


def _chunk(data: ImageSet, k: int, batch_size: int, device: torch.device) -> int:
    """Importance samples per block, so that a block holds about CHUNK_ELEMENTS values."""
    elements = CHUNK_ELEMENTS.get(device.type, CHUNK_ELEMENTS["cpu"])
    return max(1, min(k, elements // (min(batch_size, len(data)) * math.prod(data.image_shape))))


def _labelled(batch, label: int | None, device: torch.device):
    x, y = batch
    return x, (y if label is None else torch.full((x.shape[0],), label, dtype=torch.long, device=device))


@torch.no_grad()
def image_bounds(model, data: ImageSet, ks: list[int], batch_size: int = 64,
                 on_batch: Callable[[int], None] | None = None, label: int | None = None,
                 precision: "PrecisionCheck | None" = None) -> dict[str, torch.Tensor]:
    """Per image (N,), on the CPU in float64: `iwae` (k = max(ks) importance samples), `elbo`,
    `kl`, `recon`, and `iwae_at_J` for each J in ks (nested: the first J of the same samples).
    `label` conditions a conditional model on that class instead of the images' own labels;
    `precision` (choose_precision's verdict) runs the networks in bf16, the bound in fp32/fp64."""
    k_max = max(ks)
    model.eval()
    device = model.device
    chunk = _chunk(data, k_max, batch_size, device)
    dtype = torch.bfloat16 if precision is not None and precision.precision == "bf16" else None
    parts: dict[str, list[torch.Tensor]] = {"iwae": [], "elbo": [], "kl": [], "recon": []}
    parts.update({f"iwae_at_{j}": [] for j in ks})
    for batch in batches(data, batch_size, device):
        x, y = _labelled(batch, label, device)
        with devices.autocast(device, dtype):
            result = objectives.iwae_bound(model, x, k_max, chunk, y, also=tuple(ks))
        result.update({f"iwae_at_{j}": result["iwae_at"][j] for j in ks})
        for key in parts:
            parts[key].append(result[key].double().cpu())
        if on_batch is not None:
            on_batch(x.shape[0])
    return {key: torch.cat(v) for key, v in parts.items()}


PRECISION_TOLERANCE = 0.02  # nats: how far a bf16 bound's mean may move from fp32's on the same samples
PRECISION_CHECK_IMAGES = 32  # images of the check (the first ones of the set)


@dataclass
class PrecisionCheck:
    """How eval-iwae and score run the networks, and why: `bf16` only where the hardware has
    bf16 matrix units (or it was asked for) and, on the first images with the same importance
    samples, the bound moved <= PRECISION_TOLERANCE nats on average and within each image's
    Monte Carlo standard error."""

    precision: str  # "fp32" | "bf16"
    reason: str
    units: str | None = None  # the hardware's bf16 matrix units (devices.bf16_units)
    images: int = 0
    k: int = 0
    mean_difference: float | None = None  # bf16 - fp32, nats per image, averaged
    max_over_se: float | None = None  # the largest |difference| / Monte Carlo standard error

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def choose_precision(model, data: ImageSet, k: int, batch_size: int = 64, requested: str = "auto",
                     label: int | None = None) -> PrecisionCheck:
    """fp32, or bf16 for the networks (the log-likelihoods, KL and logsumexp stay fp32/fp64)
    after checking on the first images that the bound is unchanged. `requested`: auto (bf16 when
    the hardware has the units and the check passes), fp32, or bf16 (used even if the check fails,
    which the verdict then says). The check runs under a forked RNG: it moves no random draw of the
    evaluation itself."""
    device = model.device
    units = devices.bf16_units(device)
    if requested == "fp32":
        return PrecisionCheck("fp32", "asked for (--precision fp32)", units)
    if requested == "auto" and units is None:
        return PrecisionCheck("fp32", "no bf16 matrix units on this device", units)
    model.eval()
    first = data.head(min(len(data), batch_size, PRECISION_CHECK_IMAGES))
    x, y = _labelled(next(batches(first, len(first), device)), label, device)
    chunk = _chunk(first, k, batch_size, device)
    with devices.forked_rng(device):
        state = devices.rng_state(device)
        reference = objectives.iwae_bound(model, x, k, chunk, y)
        devices.set_rng_state(state, device)  # the same importance samples' noise for bf16
        with devices.autocast(device, torch.bfloat16):
            low = objectives.iwae_bound(model, x, k, chunk, y)["iwae"]
    difference = (low - reference["iwae"]).double()
    mean = difference.mean().item()
    over_se = (difference.abs() / reference["iwae_mc_se"].double().clamp(min=1e-12)).max().item()
    passed = abs(mean) <= PRECISION_TOLERANCE and over_se <= 1.0
    verdict = (f"on the first {len(first)} images the bound moved {mean:+.4f} nats on average, "
               f"at most {over_se:.2f} Monte Carlo standard errors per image")
    if passed:
        chosen, reason = "bf16", f"{units or 'asked for'}: {verdict}"
    elif requested == "bf16":
        chosen, reason = "bf16", f"asked for, though {verdict} (more than {PRECISION_TOLERANCE} nats or 1 SE)"
    else:
        chosen, reason = "fp32", f"bf16 would change the bound: {verdict}"
    return PrecisionCheck(chosen, reason, units, len(first), k, mean, over_se)


@torch.no_grad()
def iwae_dataset(model, data: ImageSet, k: int | list[int], batch_size: int = 64,
                 on_batch: Callable[[int], None] | None = None, precision: str = "fp32") -> dict:
    """ELBO and IWAE bound with k importance samples for every image of `data`, plus the
    latent diagnostics.

    k may be a list: the bound at each k comes from the first k samples of the largest k
    (`iwae_by_k`), and the headline `iwae` is the largest. Returns nats/image means with
    standard errors over images, KL, recon, timing and importance samples per second, and what
    the figures are (`bound`, `measure`: model.measure): where they bound -log P(x) of the data as
    stored, `nll` and bits/dim of the IWAE bound (the tighter of the two); elsewhere those are None.
    `precision` (auto | fp32 | bf16) is choose_precision's request; `seconds` includes its check.
    """
    require_bound(model)
    ks = sorted(set(k)) if isinstance(k, (list, tuple)) else [k]
    k_max = ks[-1]
    dims = math.prod(data.image_shape)
    start = time.perf_counter()
    check = choose_precision(model, data, k_max, batch_size, precision)
    values = image_bounds(model, data, ks, batch_size, on_batch, precision=check)
    seconds = time.perf_counter() - start
    iwae, iwae_se = _mean_se(values["iwae"])
    elbo, elbo_se = _mean_se(values["elbo"])
    n = len(data)
    kl = values["kl"].mean().item()
    measure = model.measure
    result = {
        "elbo": elbo,
        "elbo_se": elbo_se,
        "iwae": iwae,
        "iwae_se": iwae_se,
        "bound": measure.bound,
        "measure": measure.what,
        "nll": measure.nll(iwae),
        "kl": kl,
        "recon": values["recon"].mean().item(),
        "bits_per_dim": measure.bits_per_dim(iwae, dims),
        "elbo_bits_per_dim": measure.bits_per_dim(elbo, dims),
        "k": k_max,
        "iwae_by_k": {str(j): dict(zip(("iwae", "iwae_se"), _mean_se(values[f"iwae_at_{j}"]))) for j in ks},
        "n": n,
        "dims": dims,
        "seconds": seconds,
        "samples_per_s": n * k_max / seconds if seconds > 0 else float("nan"),
        "precision": check.precision,
        "precision_check": check.to_dict(),
    }
    result.update(latent_diagnostics(model, data, kl))
    if model.discrete or model.groups > 1:  # last, so that the bounds' RNG stays as it was
        result.update(_structure_diagnostics(model, data, batch_size, kl))
    return result


def _structure_diagnostics(model, data: ImageSet, batch_size: int, kl: float) -> dict:
    """What a VQ-VAE (codebook health) or a model with latent groups (KL and active units per
    group) adds to eval-iwae, from the ELBO pass over `data`."""
    test = elbo_dataset(model, data, max(batch_size, 256))
    keep = ("kl_per_group", "active_per_group", "active_units", "active_groups", "latent_dim", "perplexity",
            "dead_codes", "revived")
    found = {k: v for k, v in test.items() if k in keep}
    if model.groups > 1:  # latent_diagnostics' I(x; z) was of the top group alone: not the hierarchy's
        found.update(mutual_info=None, mutual_info_saturated=None, collapsed=collapsed(kl, found["active_units"]))
    return found


@torch.no_grad()
def reconstructions(model, x: torch.Tensor, y: torch.Tensor | None, samples: int = 64) -> dict:
    """Each image's reconstruction (its posterior mean decoded) and its loss in nats: -ELBO by
    `samples` posterior samples, or -log p(x|z) for a model without a bound (the autoencoder).
    Seeded, so the same images give the same figures."""
    torch.manual_seed(0)
    images = model.reconstruct(x, y)
    if model.has_bound:
        loss, measure = -objectives.iwae_bound(model, x, samples, y=y)["elbo"], "neg_elbo"
    else:
        loss, measure = -model.terms(x, y)["log_px"], "neg_log_px"
    return {"images": images, "loss": loss.tolist(), "measure": measure}
