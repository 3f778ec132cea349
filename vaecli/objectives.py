"""Objectives: functions of (model, x) that return a loss to minimise and metrics.

`build(...)` gives the trainer one callable, objective(model, x, y, step), that owns the
KL schedule, free bits and the choice of bound, so the trainer never changes for a new one.
Metrics are detached tensors (no host sync here); all figures are nats per image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

@dataclass
class KLSchedule:
    """The weight of the KL term at a training step.

    constant: beta.  linear: beta * min(1, step / warmup_steps) (KL warm-up, Bowman et al. 2016;
    Sønderby et al. 2016).  cyclic: the training run is split into `cycles` periods; in each the
    weight rises linearly from 0 to beta over the first `ratio` of the period, then stays
    (cyclical annealing, Fu et al. 2019).
    """

    schedule: str = "constant"
    beta: float = 1.0
    warmup_steps: int = 10_000
    cycles: int = 4
    ratio: float = 0.5
    total_steps: int = 1
    capacity: float = 0.0  # annealed capacity (Burgess et al. 2018): C_max in nats, 0 = off
    capacity_steps: int = 10_000
    capacity_gamma: float = 1000.0

    def capacity_at(self, step: int) -> float:
        """C(step) = capacity * min(1, step / capacity_steps)."""
        return self.capacity * min(1.0, step / max(self.capacity_steps, 1))

    def weight(self, step: int) -> float:
        if self.schedule == "linear":
            return self.beta * min(1.0, step / max(self.warmup_steps, 1))
        if self.schedule == "cyclic":
            period = max(self.total_steps / self.cycles, 1.0)
            tau = (step % period) / period
            return self.beta * min(1.0, tau / self.ratio)
        return self.beta


def elbo(model, x: Tensor, beta: float = 1.0, y: Tensor | None = None,
         free_bits: float = 0.0, capacity: tuple[float, float] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """loss = -(E_q[log p(x|z)] - beta * KL), one reparameterized sample per image.

    free_bits = lambda > 0 (Kingma et al. 2016): the KL of each latent dimension enters the
    loss as max(lambda, its batch mean), so the encoder is not pushed below lambda nats per
    dimension; for a model with latent groups (model=ladder) the clamp is per group, at lambda
    times the group's size. `kl_clamped` is that term, `kl` the true KL. The reported `elbo` is always
    the true bound (beta = 1, no clamp). A model's `aux_loss` (not part of the bound) is added
    to the loss, and its `stats` (scalars such as codebook perplexity) join the metrics.
    capacity = (C, gamma) (Burgess et al. 2018, "Understanding disentangling in beta-VAE"): the KL
    term becomes gamma |KL - C|, the encoder held to C nats, which the schedule raises.
    """
    terms = model.terms(x, y)
    mean_log_px, mean_kl = terms["log_px"].mean(), terms["kl"].mean()  # each once: the loss reuses them
    metrics = {"elbo": (mean_log_px - mean_kl).detach(), "recon": -mean_log_px.detach(), "kl": mean_kl.detach()}
    if free_bits > 0:
        if "kl_groups" in terms:  # a hierarchy: lambda per unit, applied to each group's KL
            kl_term = terms["kl_groups"].mean(0).clamp(min=free_bits * terms["group_size"]).sum()
        elif terms["kl_per_dim"] is not None:
            kl_term = terms["kl_per_dim"].mean(0).clamp(min=free_bits).sum()
        else:
            raise ValueError("free bits need a KL per latent dimension or group (prior=normal, "
                             "model=mlp/conv/resnet/ladder)")
        metrics["kl_clamped"] = kl_term.detach()
    else:
        kl_term = mean_kl
    if capacity is not None:
        target, gamma = capacity
        loss = gamma * (mean_kl - target).abs() - mean_log_px
        metrics["capacity"] = torch.tensor(target, device=mean_kl.device)
    else:
        loss = beta * kl_term - mean_log_px
    if "aux_loss" in terms:  # a training loss outside the bound (VQ-VAE: commitment, codebook)
        loss = loss + terms["aux_loss"]
        metrics["aux_loss"] = terms["aux_loss"].detach()
    metrics.update({k: v.detach() for k, v in terms.get("stats", {}).items()})
    metrics["loss"] = loss.detach()
    return loss, metrics


def iwae(model, x: Tensor, k: int, y: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """loss = -log (1/k) sum_j w_j (Burda et al. 2015), reparameterized; k = 1 is the ELBO."""
    log_w, log_px = model.log_weights(x, k, y, reparam=True)
    bound = torch.logsumexp(log_w, dim=0) - math.log(k)
    loss = -bound.mean()
    return loss, {
        "loss": loss.detach(),
        "iwae": bound.mean().detach(),
        "elbo": log_w.mean().detach(),  # the k samples' average log w: an ELBO estimate
        "recon": -log_px.mean().detach(),
        "kl": (log_px - log_w).mean().detach(),  # Monte Carlo KL
    }


LOG_2PI = math.log(2 * math.pi)


def _log_normal(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; mu, exp(logvar)) per dimension."""
    return -0.5 * (LOG_2PI + logvar + (z - mu).square() * torch.exp(-logvar))


def tc_decomposition(z: Tensor, mu: Tensor, logvar: Tensor) -> dict[str, Tensor]:
    """The KL's three parts per image (Chen et al. 2018, "Isolating Sources of Disentanglement"),
    for z_i ~ q(z|x_i), i = 1..M of a minibatch, with the aggregate posterior q(z) and its marginals
    q(z_d) estimated by the minibatch's mixture: log q(z_i) ~ logsumexp_j log q(z_i|x_j) - log M,
    likewise per dimension. Chen et al.'s minibatch-weighted sampling subtracts log(N M) instead (N:
    the data set's size), which moves MI by +log N, TC by (D - 1) log N and the dimension-wise KL by
    -D log N: constants that add up to zero and leave every gradient as it is, but make the reported
    terms hard to read. Returns (M,) tensors: mi = log q(z|x) - log q(z) (index-code mutual
    information), tc = log q(z) - sum_d log q(z_d) (total correlation), dim_kl = sum_d log q(z_d) -
    log p(z) with p = N(0, I); they add up to log q(z|x) - log p(z), the one-sample KL."""
    m = z.shape[0]
    pairs = _log_normal(z[:, None, :], mu[None], logvar[None])  # (M, M, D): log q(z_i,d | x_j)
    offset = math.log(m)
    log_qz = torch.logsumexp(pairs.sum(-1), dim=1) - offset
    log_prod_qzd = (torch.logsumexp(pairs, dim=1) - offset).sum(-1)
    log_qz_x = _log_normal(z, mu, logvar).sum(-1)
    log_pz = (-0.5 * (LOG_2PI + z.square())).sum(-1)
    return {"mi": log_qz_x - log_qz, "tc": log_qz - log_prod_qzd, "dim_kl": log_prod_qzd - log_pz}


def btcvae(model, x: Tensor, y: Tensor | None, alpha: float, beta: float, gamma: float,
           weight: float = 1.0) -> tuple[Tensor, dict[str, Tensor]]:
    """beta-TCVAE (Chen et al. 2018): loss = -E[log p(x|z)] + weight (alpha MI + beta TC + gamma
    dimension-wise KL), the three estimated on the minibatch (tc_decomposition); alpha = beta =
    gamma = 1 is the ELBO with a one-sample KL. `weight` is the KL schedule's (warm-up) over all
    three. The reported elbo is the true one-sample bound (its KL the sum of the three parts)."""
    posterior = model.encode(x, y).base_dist
    mu, sigma = posterior.loc, posterior.scale
    z = posterior.rsample()
    log_px = model.decode(z, y).log_prob(x)
    parts = {key: value.mean() for key, value in tc_decomposition(z, mu, 2 * sigma.log()).items()}
    mean_log_px = log_px.mean()
    kl = parts["mi"] + parts["tc"] + parts["dim_kl"]
    loss = weight * (alpha * parts["mi"] + beta * parts["tc"] + gamma * parts["dim_kl"]) - mean_log_px
    metrics = {"elbo": (mean_log_px - kl).detach(), "recon": -mean_log_px.detach(), "kl": kl.detach(),
               **{key: value.detach() for key, value in parts.items()}, "loss": loss.detach()}
    return loss, metrics


def dip_regularizer(mu: Tensor, sigma: Tensor, kind: str, lambda_od: float, lambda_d: float) -> Tensor:
    """DIP-VAE's penalty (Kumar et al. 2018) on a covariance C of the batch's codes:
    lambda_od * sum of squared off-diagonal entries + lambda_d * sum of (diagonal - 1)^2. kind "i":
    C = Cov[mu(x)] (the posterior means'; E[mu mu^T] - E[mu] E[mu]^T over the batch, as
    disentanglement_lib); "ii": C = E[diag(sigma(x)^2)] + Cov[mu(x)], the aggregate posterior's."""
    centred = mu - mu.mean(0)
    cov = centred.T @ centred / mu.shape[0]
    if kind == "ii":
        cov = cov + torch.diag(sigma.square().mean(0))
    diagonal = torch.diagonal(cov)
    off = cov - torch.diag(diagonal)
    return lambda_od * off.square().sum() + lambda_d * (diagonal - 1).square().sum()


def dipvae(model, x: Tensor, y: Tensor | None, kind: str, lambda_od: float, lambda_d: float,
           beta: float = 1.0) -> tuple[Tensor, dict[str, Tensor]]:
    """DIP-VAE: the ELBO's loss (beta and the schedule on its KL) plus dip_regularizer; the
    reported elbo is the bound itself."""
    posterior = model.encode(x, y).base_dist
    z = posterior.rsample()
    mean_log_px = model.decode(z, y).log_prob(x).mean()
    mean_kl = model.prior_net.kl(posterior).sum(-1).mean()
    penalty = dip_regularizer(posterior.loc, posterior.scale, kind, lambda_od, lambda_d)
    loss = beta * mean_kl - mean_log_px + penalty
    return loss, {"elbo": (mean_log_px - mean_kl).detach(), "recon": -mean_log_px.detach(), "kl": mean_kl.detach(),
                  "dip": penalty.detach(), "loss": loss.detach()}


class Objective:
    """objective(model, x, y, step) -> (loss, metrics) for the trainer."""

    def __init__(self, name: str = "elbo", k: int = 1, schedule: KLSchedule | None = None,
                 free_bits: float = 0.0, tc_weights: tuple[float, float, float] = (1.0, 6.0, 1.0),
                 dip: tuple[str, float, float] = ("i", 10.0, 100.0)):
        self.name, self.k, self.free_bits = name, k, free_bits
        self.schedule = schedule or KLSchedule()
        self.tc_weights, self.dip = tc_weights, dip

    def __call__(self, model, x: Tensor, y: Tensor | None, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        if self.name == "iwae":
            return iwae(model, x, self.k, y)
        weight = self.schedule.weight(step)
        if self.name == "btcvae":
            loss, metrics = btcvae(model, x, y, *self.tc_weights, weight)
        elif self.name == "dipvae":
            loss, metrics = dipvae(model, x, y, *self.dip, weight)
        else:
            capacity = ((self.schedule.capacity_at(step), self.schedule.capacity_gamma) if self.schedule.capacity > 0
                        else None)
            loss, metrics = elbo(model, x, weight, y, self.free_bits, capacity)
        if self.schedule.schedule != "constant":
            metrics["kl_weight"] = torch.tensor(weight, device=loss.device)
        return loss, metrics


def build(objective_cfg, kl_cfg, beta: float, total_steps: int) -> Objective:
    """From the config sections `objective` and `kl`, and the run length (cyclic schedule)."""
    schedule = KLSchedule(kl_cfg.schedule, beta, kl_cfg.warmup_steps, kl_cfg.cycles, kl_cfg.ratio, total_steps,
                          kl_cfg.capacity, kl_cfg.capacity_steps, kl_cfg.capacity_gamma)
    weights = tuple(float(w) if w is not None else default
                    for w, default in zip((objective_cfg.alpha, objective_cfg.beta, objective_cfg.gamma), (1.0, 6.0, 1.0)))
    kind = objective_cfg.type or "i"
    lambda_od = float(objective_cfg.lambda_od if objective_cfg.lambda_od is not None else 10.0)
    lambda_d = (float(objective_cfg.lambda_d) if objective_cfg.lambda_d is not None  # disentanglement_lib's
                else lambda_od * (10.0 if kind == "i" else 1.0))                      # lambda_d_factor
    return Objective(objective_cfg.name, objective_cfg.k or 1, schedule, kl_cfg.free_bits, weights,
                     (kind, lambda_od, lambda_d))


@torch.no_grad()
def iwae_bound(model, x: Tensor, k: int, chunk: int | None = None, y: Tensor | None = None,
               also: tuple[int, ...] = ()) -> dict[str, Tensor]:
    """The importance-weighted bound log (1/k) sum_j w_j (Burda et al. 2015), per image.

    The k samples are drawn `chunk` at a time and combined with a running logsumexp, so memory
    is O(chunk * B) whatever k is. Returns per-image tensors (B,): `iwae`, `elbo`
    (E_q log p(x|z) - KL, the k samples averaged), `recon` (-E_q log p(x|z)) and `kl`
    (exact when the model has a closed form, else the Monte Carlo average over the k samples).
    `also` lists smaller k whose bounds come from the first k' of the same samples (nested, so
    the bound's growth with k is seen without the noise of fresh draws): `iwae_at` {k': (B,)}.
    `iwae_mc_se` (B,) is each image's Monte Carlo standard error of the bound (the delta method
    on the mean weight: sqrt((k sum_j p_j^2 - 1) / (k - 1)) with p_j the normalized weights).
    """
    chunk = min(chunk or k, k)
    stops = sorted({j for j in also if 1 <= j < k} | {k})
    lse = lse_sq = None
    iwae_at: dict[int, Tensor] = {}
    sum_log_px = torch.zeros(x.shape[0], device=x.device, dtype=torch.float64)
    sum_log_w = torch.zeros_like(sum_log_px)
    done = 0
    while done < k:
        m = min(chunk, next(j for j in stops if j > done) - done)  # chunks end on every stop
        log_w, log_px = model.log_weights(x, m, y)
        log_w = log_w.double()
        part, part_sq = torch.logsumexp(log_w, dim=0), torch.logsumexp(2 * log_w, dim=0)
        lse = part if lse is None else torch.logaddexp(lse, part)
        lse_sq = part_sq if lse_sq is None else torch.logaddexp(lse_sq, part_sq)
        sum_log_px += log_px.double().sum(0)
        sum_log_w += log_w.sum(0)
        done += m
        if done in stops:
            iwae_at[done] = lse - math.log(done)
    recon = -sum_log_px / k
    if model.exact_kl:
        kl = model.kl(x, y).double()  # closed form: lower variance than the sample average
    else:
        kl = -recon - sum_log_w / k
    mc_se = ((k * torch.exp(lse_sq - 2 * lse) - 1).clamp(min=0) / max(k - 1, 1)).sqrt()
    return {"iwae": iwae_at[k], "elbo": -recon - kl, "recon": recon, "kl": kl, "iwae_at": iwae_at,
            "iwae_mc_se": mc_se}
