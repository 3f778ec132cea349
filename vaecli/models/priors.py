"""p(z): a prior is a module; `model.prior(temperature)` returns a distribution with event
(latent_dim,). Only the standard normal has a closed-form KL to a Gaussian posterior; the
others are handled by a single-sample Monte Carlo estimate log q(z|x) - log p(z)."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Categorical, Distribution, Independent, MixtureSameFamily, Normal

class StandardNormal(nn.Module):
    """p(z) = N(0, I)."""

    analytic_kl = True

    def __init__(self, latent_dim: int):
        super().__init__()
        # Non-persistent buffers: they follow .to(device) but are not weights worth saving.
        self.register_buffer("loc", torch.zeros(latent_dim), persistent=False)
        self.register_buffer("scale", torch.ones(latent_dim), persistent=False)

    def forward(self, temperature: float = 1.0, encode=None) -> Distribution:
        """temperature scales sigma: sampling at T < 1 trades diversity for typicality."""
        return Independent(Normal(self.loc, self.scale * temperature, validate_args=False), 1, validate_args=False)

    @staticmethod
    def kl(q: Normal) -> torch.Tensor:
        """KL(N(mu, sigma^2) || N(0, 1)) per dimension: (sigma^2 + mu^2 - 1) / 2 - log sigma (Kingma &
        Welling 2013, appendix B), without the prior's tensors: half the operations of the general
        two-Gaussian form in every training step."""
        return 0.5 * (q.scale.square() + q.loc.square() - 1) - q.scale.log()


class MixtureOfGaussians(nn.Module):
    """A learnable mixture of K diagonal Gaussians (e.g. Dilokthanakul et al. 2016)."""

    analytic_kl = False

    def __init__(self, latent_dim: int, components: int):
        super().__init__()
        # Spread the initial means so the components do not start identical.
        self.means = nn.Parameter(torch.randn(components, latent_dim))
        self.log_scales = nn.Parameter(torch.zeros(components, latent_dim))
        self.logits = nn.Parameter(torch.zeros(components))

    def forward(self, temperature: float = 1.0, encode=None) -> Distribution:
        scales = self.log_scales.clamp(-7, 5).exp() * temperature
        return MixtureSameFamily(Categorical(logits=self.logits, validate_args=False),
                                 Independent(Normal(self.means, scales, validate_args=False), 1, validate_args=False),
                                 validate_args=False)


class VampPrior(nn.Module):
    """p(z) = (1/K) sum_k q(z | u_k) with K learned pseudo-inputs u_k (Tomczak & Welling 2018).

    The prior is the aggregate posterior of the pseudo-inputs, so it needs the encoder: the
    model passes its `encode` when asking for the prior.
    """

    analytic_kl = False

    def __init__(self, image_shape: tuple[int, int, int], components: int):
        super().__init__()
        # Initialised near mid-grey with small noise, as in the paper's code.
        self.pseudo_inputs = nn.Parameter(0.5 + 0.01 * torch.randn(components, *image_shape))

    def forward(self, temperature: float = 1.0, encode=None) -> Distribution:
        q = encode(self.pseudo_inputs.clamp(0, 1))  # hardtanh to the data range
        base = q.base_dist
        components = Independent(Normal(base.loc, base.scale * temperature, validate_args=False), 1, validate_args=False)
        uniform = torch.zeros(self.pseudo_inputs.shape[0], device=base.loc.device)
        return MixtureSameFamily(Categorical(logits=uniform, validate_args=False), components, validate_args=False)


# Each member registers its builder once: (latent_dim, image_shape, components) -> module.
BUILDERS = {"normal": lambda latent_dim, image_shape, components: StandardNormal(latent_dim),
            "mog": lambda latent_dim, image_shape, components: MixtureOfGaussians(latent_dim, components),
            "vamp": lambda latent_dim, image_shape, components: VampPrior(image_shape, components)}


def build(name: str, latent_dim: int, image_shape: tuple[int, int, int], components: int) -> nn.Module:
    if name not in BUILDERS:
        raise ValueError(f"unknown prior {name!r}")
    return BUILDERS[name](latent_dim, image_shape, components)
