"""model=ladder: a deep hierarchical VAE with top-down inference (Sønderby et al. 2016's Ladder
VAE, in the residual form of NVAE, Vahdat & Kautz 2020, and VDVAE, Child 2021).

    bottom-up (deterministic)   e_1 = stem(x),  e_j = cell_j(e_{j-1})          j = 1..G
    top-down  (stochastic)      h = h_0;  for groups t = 1 (top, uses e_G) .. G (bottom, uses e_1):
        prior      p(z_t | z_<t) = N(mu_p(h), sigma_p(h))      (t = 1: N(0, I))
        posterior  q(z_t | x, z_<t) = N(mu_p + dmu, sigma_p * exp(dlog_sigma)),
                   (dmu, dlog_sigma) = net_t(h, e_t)
        h <- cell_t(h + W_t z_t)
    p(x | z) = likelihood(decoder(h))

Groups are numbered from the top, as they are sampled. Why the residual parametrization rather
than LVAE's precision weighting: the posterior is a correction of the prior, so its KL starts at
exactly 0 (the correction's last layer is zero-initialised) and stays well conditioned, which is
what lets NVAE and VDVAE train deep stacks of groups without the KL terms blowing up; LVAE
needed batch normalisation and a warm-up for the same. The KL of each group is in closed form
given the groups above it (two diagonal Gaussians), so the ELBO has one Monte Carlo level fewer
than sampling every log-density, and free bits apply per group.

For the commands, the top group is "the latent": encode(x) is q(z_1|x) (it depends on x alone),
decode(z_1) runs the lower groups at their prior means, and interpolate / traverse / latent-plot
work on z_1. reconstruct uses the posterior means of every group; sample takes a temperature per
group. The networks that touch pixels are an MLP or the conv/resnet bodies of blocks.py; the
top-down stack is a residual MLP of width hidden[-1] (the "residual stream").
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal

from . import autoregressive, blocks, likelihoods
from .ladder_config import LadderSpec
from .vae import LatentModel, normal_kl

LOG_2PI = math.log(2 * math.pi)


class ResidualCell(nn.Module):
    """x + W2 act(W1 act(x)); W2 starts small (scaled by 1/sqrt(depth), as in VDVAE), so a deep
    stack starts near the identity."""

    def __init__(self, width: int, activation: str, scale: float):
        super().__init__()
        act = blocks.ACTIVATIONS[activation]
        self.body = nn.Sequential(act(), nn.Linear(width, width), act(), nn.Linear(width, width))
        with torch.no_grad():
            self.body[-1].weight.mul_(scale)
            self.body[-1].bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def _zero_last(layer: nn.Linear) -> nn.Linear:
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.zero_()
    return layer


def _log_normal(z: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    """log N(z; loc, scale) summed over the last dimension."""
    return (-0.5 * ((z - loc) / scale).square() - scale.log() - 0.5 * LOG_2PI).sum(-1)


class GroupPass:
    """What a top-down pass found: per group (top first) z, posterior and prior (loc, scale)."""

    def __init__(self):
        self.z: list[Tensor] = []
        self.q: list[tuple[Tensor, Tensor]] = []
        self.p: list[tuple[Tensor, Tensor]] = []


class Ladder(LatentModel):
    """spec.groups groups of spec.latent_dim units each; see the module docstring."""

    @property
    def layers(self) -> int:
        return self.spec.groups

    @property
    def groups(self) -> int:
        return self.spec.groups

    exact_kl = False  # the KL of the whole hierarchy is a one-sample estimate (closed form per group)

    def __init__(self, spec: LadderSpec):
        super().__init__()
        self.spec = spec
        g, d, act = spec.groups, spec.latent_dim, spec.body.activation
        width = spec.body.hidden[-1]
        self.likelihood = likelihoods.build(spec)
        c = spec.num_classes or 0
        scale = 1 / math.sqrt(2 * g)
        # bottom-up: stem, then one residual cell per group (e_1 .. e_G)
        body = spec.body
        self.stem, features = blocks.encoder(body.arch, spec.image_shape, body.hidden, act, body.norm)
        self.stem_out = nn.Linear(features + c, width)
        self.up = nn.ModuleList(ResidualCell(width, act, scale) for _ in range(g))
        # top-down, index t = 0 (top) .. g-1 (bottom)
        self.h0 = nn.Parameter(torch.zeros(width))
        self.label_embedding = nn.Linear(c, width, bias=False) if c else None
        self.prior_heads = nn.ModuleList(
            nn.Sequential(blocks.ACTIVATIONS[act](), _zero_last(nn.Linear(width, 2 * d))) for _ in range(g - 1))
        # the posterior's first layer on (h, e_t), split in two: W_e e_t is computed once per image
        # and broadcast over the k importance samples of eval-iwae
        self.posterior_h = nn.ModuleList(nn.Linear(width, width) for _ in range(g))
        self.posterior_e = nn.ModuleList(nn.Linear(width, width, bias=False) for _ in range(g))
        self.posterior_out = nn.ModuleList(
            nn.Sequential(blocks.ACTIVATIONS[act](), _zero_last(nn.Linear(width, 2 * d))) for _ in range(g))
        self.z_in = nn.ModuleList(nn.Linear(d, width) for _ in range(g))
        self.down = nn.ModuleList(ResidualCell(width, act, scale) for _ in range(g))
        out_channels = self.likelihood.params_per_pixel * spec.image_shape[0]
        self.decoder = blocks.decoder(body.arch, spec.image_shape, body.hidden, width, out_channels, act, body.norm)

    # -- the two passes ---------------------------------------------------------------------

    def bottom_up(self, x: Tensor, y: Tensor | None) -> list[Tensor]:
        """What each group's posterior takes from x, top first: W_e e_t for [e_G, ..., e_1],
        each (B, width)."""
        e = self.stem_out(self._condition(self.stem(x), y))
        features = []
        for cell in self.up:
            e = cell(e)
            features.append(e)
        return [project(e) for project, e in zip(self.posterior_e, features[::-1])]

    def _start(self, shape: tuple[int, ...], y: Tensor | None, dtype: torch.dtype) -> Tensor:
        h = self.h0.to(dtype).expand(*shape, -1)
        if self.label_embedding is not None:
            h = h + self.label_embedding(self._onehot(y, h.dtype))  # y (B,) broadcasts over leading k
        return h

    def _prior(self, t: int, h: Tensor) -> tuple[Tensor, Tensor]:
        if t == 0:
            zeros = torch.zeros(*h.shape[:-1], self.spec.latent_dim, device=h.device, dtype=torch.float32)
            return zeros, torch.ones_like(zeros)
        loc, log_scale = self.prior_heads[t - 1](h).float().chunk(2, dim=-1)
        return loc, log_scale.clamp(-15.0, 10.0).exp()

    def top_down(self, features: list[Tensor] | None, y: Tensor | None, shape: tuple[int, ...],
                 mode: str = "sample", temperatures: list[float] | None = None,
                 generator: torch.Generator | None = None,
                 fixed: dict[int, Tensor] | None = None) -> tuple[Tensor, GroupPass]:
        """The top-down pass over rows of leading `shape` ((B,), or (k, B) for k samples of each
        image: features (B, width) broadcast). features None: the generative model alone.
        mode 'sample' draws z (reparameterized), 'mean' takes the locations; `temperatures`
        scale each group's prior sigma (generation only); `fixed` gives z_t for some groups.
        y (B,) when the model is conditional. Returns h (*shape, width) and the per-group record."""
        ref = features[0] if features is not None else self.h0
        # With features, the top group's prior and posterior depend on the image alone, not on
        # which of its k samples this is: they are computed once per image (rows (B,), broadcast
        # over k when z_1 is drawn), which spares eval-iwae k - 1 copies of that network.
        h = self._start(shape[-1:] if features is not None else shape, y, ref.dtype)
        record = GroupPass()
        for t in range(self.spec.groups):
            p_loc, p_scale = self._prior(t, h)
            if features is not None:
                inner = self.posterior_h[t](h) + features[t]
                d_loc, d_log_scale = self.posterior_out[t](inner).float().chunk(2, dim=-1)
                loc, scale = p_loc + d_loc, p_scale * d_log_scale.clamp(-15.0, 10.0).exp()
                record.q.append((loc, scale))
            else:
                temperature = 1.0 if temperatures is None else temperatures[t]
                loc, scale = p_loc, p_scale * temperature
            record.p.append((p_loc, p_scale))
            if fixed is not None and t in fixed:
                z = fixed[t].float()
            elif mode == "mean":
                z = loc.expand(*shape, loc.shape[-1])
            else:
                eps = torch.randn((*shape, loc.shape[-1]), generator=generator, device=loc.device, dtype=loc.dtype)
                z = loc + scale * eps
            record.z.append(z)
            h = self.down[t](h + self.z_in[t](z.to(h.dtype)))
        return h, record

    def _likelihood(self, h: Tensor) -> Distribution:
        """p(x | h) for h (..., width): batch (...)."""
        params = self.decoder(h.reshape(-1, h.shape[-1])).float()
        return self.likelihood(params.view(*h.shape[:-1], *params.shape[1:]))

    # -- the model contract -----------------------------------------------------------------

    def terms(self, x: Tensor, y: Tensor | None = None) -> dict[str, Tensor]:
        """One reparameterized pass: log p(x|z), the KL of each group in closed form given the
        sampled groups above it (kl_groups, (B, G)), and their sum."""
        features = self.bottom_up(x, y)
        h, record = self.top_down(features, y, (x.shape[0],))
        log_px = self._likelihood(h).log_prob(x)
        kl_groups = torch.stack([normal_kl(Normal(*q, validate_args=False), Normal(*p, validate_args=False)).sum(-1)
                                 for q, p in zip(record.q, record.p)], dim=-1)
        stats = {f"kl_group{t + 1}": kl_groups[:, t].mean() for t in range(self.spec.groups)}
        return {"log_px": log_px, "kl": kl_groups.sum(-1), "kl_per_dim": None, "kl_exact": False,
                "kl_groups": kl_groups, "group_size": self.spec.latent_dim, "stats": stats}

    def log_weights(self, x: Tensor, k: int, y: Tensor | None = None,
                    reparam: bool = False) -> tuple[Tensor, Tensor]:
        """log w_j = log p(x, z_j) - log q(z_j|x) over the whole hierarchy, for k joint samples
        z_j = (z_1, ..., z_G) drawn top-down from q: (log_w, log_px), each (k, B)."""
        h, record = self.top_down(self.bottom_up(x, y), y, (k, x.shape[0]))
        log_px = self._likelihood(h).log_prob(x)  # (k, B): x broadcasts over the k samples
        log_ratio = sum(_log_normal(z, *p) - _log_normal(z, *q) for z, q, p in zip(record.z, record.q, record.p))
        return log_px + log_ratio, log_px

    def encode(self, x: Tensor, y: Tensor | None = None) -> Distribution:
        """q(z_1|x), the top group's posterior (a function of x alone): event (latent_dim,)."""
        features = self.bottom_up(x, y)
        h = self._start((x.shape[0],), y, features[0].dtype)
        inner = self.posterior_h[0](h) + features[0]
        loc, log_scale = self.posterior_out[0](inner).float().chunk(2, dim=-1)
        return Independent(Normal(loc, log_scale.clamp(-15.0, 10.0).exp(), validate_args=False), 1, validate_args=False)

    def decode(self, z: Tensor, y: Tensor | None = None) -> Distribution:
        """p(x | z_1) with the lower groups at their prior means, for z (..., latent_dim)."""
        h, _ = self.top_down(None, y, z.shape[:-1], mode="mean", fixed={0: z})
        return self._likelihood(h)

    def prior(self, temperature: float = 1.0) -> Distribution:
        """p(z_1) = N(0, I) (temperature scales sigma)."""
        zeros = self.h0.new_zeros(self.spec.latent_dim, dtype=torch.float32)
        return Independent(Normal(zeros, torch.ones_like(zeros) * temperature, validate_args=False), 1,
                           validate_args=False)

    @torch.no_grad()
    def group_means(self, x: Tensor, y: Tensor | None = None) -> list[Tensor]:
        """The posterior mean of each group (top first), with the groups above at their means:
        the deterministic path through q that active units are measured on."""
        _, record = self.top_down(self.bottom_up(x, y), y, (x.shape[0],), mode="mean")
        return [loc for loc, _ in record.q]

    @torch.no_grad()
    def reconstruct(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Every group at its posterior mean, decoded: (B, C, H, W) in [0, 1]."""
        h, _ = self.top_down(self.bottom_up(x, y), y, (x.shape[0],), mode="mean")
        return autoregressive.picture(self._likelihood(h)).clamp(0, 1)

    @torch.no_grad()
    def sample(self, n: int, temperature: float | list[float] = 1.0, generator: torch.Generator | None = None,
               y: Tensor | None = None) -> Tensor:
        """n images from p(z_1) p(z_2|z_1) ... p(x|z); temperature: one value, or one per group
        (top first), scaling each group's prior sigma."""
        temperatures = list(temperature) if isinstance(temperature, (list, tuple)) else [temperature] * self.groups
        if len(temperatures) != self.groups:
            raise ValueError(f"this model has {self.groups} latent groups: give one temperature or {self.groups}")
        h, _ = self.top_down(None, y, (n,), temperatures=temperatures, generator=generator)
        return autoregressive.picture(self._likelihood(h), generator).clamp(0, 1)
