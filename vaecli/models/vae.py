"""The VAE: p(z) p(x|z) with an amortized Gaussian posterior q(z|x) (Kingma & Welling 2013)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal

from . import blocks, likelihoods, priors


@dataclass
class VAESpec:
    """Everything needed to rebuild a model; stored as JSON in model.safetensors' metadata."""

    arch: str  # mlp | conv
    image_shape: tuple[int, int, int]  # (C, H, W)
    latent_dim: int = 20
    hidden: list[int] = field(default_factory=lambda: [400])
    likelihood: str = "bernoulli"
    sigma: float | None = None  # gaussian likelihood only
    prior: str = "normal"

    def __post_init__(self):
        self.image_shape = tuple(int(s) for s in self.image_shape)
        self.hidden = [int(h) for h in self.hidden]


class VAE(nn.Module):
    """encode(x) -> q(z|x), decode(z) -> p(x|z), prior() -> p(z); images are (B, C, H, W)."""

    def __init__(self, spec: VAESpec):
        super().__init__()
        self.spec = spec
        self.likelihood = likelihoods.build(spec.likelihood, spec.sigma)
        params = self.likelihood.params_per_pixel
        if spec.arch == "mlp":
            self.encoder = blocks.MLPEncoder(spec.image_shape, spec.hidden, 2 * spec.latent_dim)
            self.decoder = blocks.MLPDecoder(spec.image_shape, spec.hidden, spec.latent_dim, params)
        elif spec.arch == "conv":
            self.encoder = blocks.ConvEncoder(spec.image_shape, spec.hidden, 2 * spec.latent_dim)
            self.decoder = blocks.ConvDecoder(spec.image_shape, spec.hidden, spec.latent_dim, params)
        else:
            raise ValueError(f"unknown model {spec.arch!r}")
        self.prior = priors.StandardNormal(spec.latent_dim)

    @property
    def latent_dim(self) -> int:
        return self.spec.latent_dim

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def encode(self, x: Tensor) -> Distribution:
        """q(z|x) = N(mu, sigma^2): batch (B,), event (latent_dim,)."""
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        # clamp: exp() overflows on the large logvars of early training
        return Independent(Normal(mu, torch.exp(0.5 * logvar.clamp(-30.0, 20.0))), 1)

    def decode(self, z: Tensor) -> Distribution:
        """p(x|z) for latents (..., latent_dim): batch (...), event (C, H, W)."""
        lead = z.shape[:-1]
        params = self.decoder(z.reshape(-1, z.shape[-1]))
        return self.likelihood(params.reshape(*lead, *params.shape[1:]))

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """n images (n, C, H, W) in [0, 1]: prior draws decoded to the likelihood's mean."""
        p = self.prior(temperature)
        eps = torch.randn((n, self.latent_dim), generator=generator, device=self.device)
        z = p.base_dist.loc + p.base_dist.scale * eps
        return self.decode(z).mean.clamp(0, 1)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Decode the posterior mean of each image: (B, C, H, W) in [0, 1]."""
        return self.decode(self.encode(x).mean).mean.clamp(0, 1)
