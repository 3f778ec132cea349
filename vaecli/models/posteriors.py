"""Posterior families beyond the diagonal Gaussian: normalizing flows on q(z|x).

A flow posterior draws z_0 ~ N(mu, sigma^2) from the encoder and pushes it through K invertible
steps; log q(z_K|x) = log N(z_0) - sum_k log |det dz_k/dz_{k-1}|. Neither flow here inverts in
closed form, so the density is known at the posterior's own samples, which is all the ELBO, IWAE
and every command need: `FlowPosterior.log_prob(z)` answers for the z it last drew (rsample or
sample) and refuses any other.

- IAF (Kingma et al. 2016, "Improved Variational Inference with Inverse Autoregressive Flow"):
  each step is a MADE (Germain et al. 2015) with a context h from the encoder, and the
  numerically stable gated update z <- sigma * z + (1 - sigma) * m, sigma = sigmoid(s + 1.5)
  (the +1.5 starts each step near the identity), log det = sum log sigma. Successive steps
  reverse the autoregressive order.
- Planar (Rezende & Mohamed 2015): z <- z + u' tanh(w.z + b), with u' the projection that keeps
  the step invertible (w.u' >= -1); log det = log |1 + u'.psi|, psi = (1 - tanh^2(w.z + b)) w. Its
  (u, w, b) come from the encoder, per image, as in the paper's amortized form.

Compared with pythae's IAF and planar flows (pythae/models/normalizing_flows): pythae's planar
parameters are global, ours amortized; its IAF is the MAF-style affine form, ours the gated form
of the IAF paper.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution, constraints

FLOWS = ("iaf", "planar")


class FlowPosterior(Distribution):
    """q(z|x): a base Gaussian (Independent Normal, event (D,)) pushed through `steps`, each a
    callable z -> (z', log|det dz'/dz|) for z of shape (..., B, D)."""

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, base: Distribution, steps: list):
        self.base, self.steps = base, steps
        self._last: tuple[Tensor, Tensor] | None = None
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    def _push(self, z: Tensor) -> tuple[Tensor, Tensor]:
        log_det = torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)
        for step in self.steps:
            z, step_log_det = step(z)
            log_det = log_det + step_log_det
        return z, log_det

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        z0 = self.base.rsample(sample_shape)
        z, log_det = self._push(z0)
        self._last = (z, self.base.log_prob(z0) - log_det)
        return z

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._last is None or value is not self._last[0]:
            raise ValueError("a flow posterior's density is known at its own samples only (draw z with "
                             "rsample or sample, then ask for log_prob(z))")
        return self._last[1]

    @property
    def mean(self) -> Tensor:
        """The base mean pushed through the flow: the point an image maps to (interpolation, plots)."""
        return self._push(self.base.mean)[0]

    @property
    def stddev(self) -> Tensor:
        """The base Gaussian's sigma (the flow's marginal spread has no closed form)."""
        return self.base.stddev


# ---------------------------------------------------------------------------------------------
# IAF


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (a MADE layer)."""

    def __init__(self, mask: Tensor):
        super().__init__(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class IAFStep(nn.Module):
    """One IAF step: a two-hidden-layer MADE over z (in `order`) with the context added to its
    first hidden layer; outputs m and s for every dimension, output d seeing only inputs before
    d in the order."""

    def __init__(self, dim: int, hidden: int, context: int, reverse: bool):
        super().__init__()
        degree_in = torch.arange(1, dim + 1)
        if reverse:
            degree_in = degree_in.flip(0)
        degree_hidden = torch.arange(hidden) % max(dim - 1, 1) + 1 if dim > 1 else torch.zeros(hidden, dtype=torch.long)
        first = (degree_hidden[:, None] >= degree_in[None, :]).float()
        middle = (degree_hidden[:, None] >= degree_hidden[None, :]).float()
        last = (degree_in[:, None] > degree_hidden[None, :]).float()
        self.first, self.middle = MaskedLinear(first), MaskedLinear(middle)
        self.out = MaskedLinear(torch.cat([last, last]))  # m and s
        self.context = nn.Linear(context, hidden)
        nn.init.zeros_(self.out.weight)  # start as a mild contraction: m = 0, sigma = sigmoid(1.5) = 0.82
        nn.init.zeros_(self.out.bias)

    def forward(self, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        a = F.elu(self.first(z) + self.context(h))
        a = F.elu(self.middle(a))
        m, s = self.out(a).chunk(2, dim=-1)
        log_sigma = F.logsigmoid(s + 1.5)
        return torch.exp(log_sigma) * z + (1 - torch.exp(log_sigma)) * m, log_sigma.sum(-1)


class IAF(nn.Module):
    """K IAF steps with alternating orders; the encoder gives `extra_outputs` = the context width."""

    def __init__(self, dim: int, flows: int, hidden: int):
        super().__init__()
        self.extra_outputs = hidden
        self.steps = nn.ModuleList(IAFStep(dim, hidden, hidden, reverse=k % 2 == 1) for k in range(flows))

    def forward(self, base: Distribution, extra: Tensor) -> FlowPosterior:
        h = F.elu(extra)
        return FlowPosterior(base, [lambda z, step=step: step(z, h) for step in self.steps])


# ---------------------------------------------------------------------------------------------
# Planar


def planar_step(u: Tensor, w: Tensor, b: Tensor):
    """z -> z + u' tanh(w.z + b) for per-image (u, w) (B, D) and b (B, 1); z (..., B, D)."""
    wu = (w * u).sum(-1, keepdim=True)
    u_hat = u + (F.softplus(wu) - 1 - wu) * w / w.square().sum(-1, keepdim=True).clamp(min=1e-12)

    def step(z: Tensor) -> tuple[Tensor, Tensor]:
        a = torch.tanh((z * w).sum(-1, keepdim=True) + b)
        psi_u = (1 - a.square()) * (w * u_hat).sum(-1, keepdim=True)  # psi . u' = (1 - tanh^2) w . u'
        return z + u_hat * a, torch.log((1 + psi_u).abs().squeeze(-1) + 1e-12)

    return step


class Planar(nn.Module):
    """K planar steps whose (u, w, b) the encoder outputs per image: extra_outputs = K (2D + 1)."""

    def __init__(self, dim: int, flows: int):
        super().__init__()
        self.dim, self.flows = dim, flows
        self.extra_outputs = flows * (2 * dim + 1)

    def forward(self, base: Distribution, extra: Tensor) -> FlowPosterior:
        d = self.dim
        params = extra.unflatten(-1, (self.flows, 2 * d + 1))
        steps = [planar_step(params[..., k, :d], params[..., k, d:2 * d], params[..., k, 2 * d:])
                 for k in range(self.flows)]
        return FlowPosterior(base, steps)


def build(spec) -> nn.Module | None:
    """The flow of spec.posterior (None for the plain Gaussian)."""
    q = spec.posterior
    if q.name not in BUILDERS:
        raise ValueError(f"unknown posterior {q.name!r}")
    return BUILDERS[q.name](spec.latent_dim, q)


# Each member registers its builder once: (latent_dim, spec.posterior part) -> the flow, or None
# for the diagonal Gaussian itself.
BUILDERS = {"gaussian": lambda latent_dim, q: None,
            "iaf": lambda latent_dim, q: IAF(latent_dim, q.flows, q.hidden),
            "planar": lambda latent_dim, q: Planar(latent_dim, q.flows)}


