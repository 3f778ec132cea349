"""Objectives: pure functions of (model, x) that return a loss to minimise and metrics.

Metrics are detached tensors (no host sync here); all figures are nats per image.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import kl_divergence


def elbo(model, x: Tensor, beta: float = 1.0) -> tuple[Tensor, dict[str, Tensor]]:
    """loss = -(E_q[log p(x|z)] - beta * KL(q(z|x) || p(z))), one reparameterized sample.

    The reported `elbo` is always the true bound (beta = 1), whatever beta trains with.
    """
    posterior = model.encode(x)
    z = posterior.rsample()  # reparameterization: z = mu + sigma * eps
    log_px = model.decode(z).log_prob(x)  # (B,)
    kl = kl_divergence(posterior, model.prior())  # (B,), closed form for two Gaussians
    loss = -(log_px - beta * kl).mean()
    return loss, {
        "loss": loss.detach(),
        "elbo": (log_px - kl).mean().detach(),
        "recon": -log_px.mean().detach(),
        "kl": kl.mean().detach(),
    }


def log_weights(model, x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """log w_j = log p(x, z_j) - log q(z_j|x) for z_j ~ q(z|x), j = 1..k.

    Returns (log_w, log_px), both (k, B): one batched decoder call over all k*B latents.
    """
    posterior = model.encode(x)
    z = posterior.sample((k,))  # (k, B, latent_dim)
    log_px = model.decode(z).log_prob(x)  # x broadcasts over the k samples
    log_w = log_px + model.prior().log_prob(z) - posterior.log_prob(z)
    return log_w, log_px


@torch.no_grad()
def iwae_bound(model, x: Tensor, k: int, chunk: int | None = None) -> dict[str, Tensor]:
    """The importance-weighted bound log (1/k) sum_j w_j (Burda et al. 2015), per image.

    The k samples are drawn `chunk` at a time and combined with a running logsumexp, so memory
    is O(chunk * B) whatever k is. Returns per-image tensors (B,): `iwae`, `elbo`
    (E_q log p(x|z) - KL, the k samples averaged), `recon` (-E_q log p(x|z)) and `kl`.
    """
    chunk = min(chunk or k, k)
    lse = None
    sum_log_px = torch.zeros(x.shape[0], device=x.device, dtype=torch.float64)
    done = 0
    while done < k:
        m = min(chunk, k - done)
        log_w, log_px = log_weights(model, x, m)
        part = torch.logsumexp(log_w.double(), dim=0)
        lse = part if lse is None else torch.logaddexp(lse, part)
        sum_log_px += log_px.double().sum(0)
        done += m
    kl = kl_divergence(model.encode(x), model.prior()).double()
    recon = -sum_log_px / k
    return {"iwae": lse - math.log(k), "elbo": -recon - kl, "recon": recon, "kl": kl}
