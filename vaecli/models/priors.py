"""p(z): a prior is a module whose forward() returns a distribution with event (latent_dim,)."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Distribution, Independent, Normal


class StandardNormal(nn.Module):
    """p(z) = N(0, I). The KL from a Gaussian posterior to it has a closed form."""

    def __init__(self, latent_dim: int):
        super().__init__()
        # Non-persistent buffers: they follow .to(device) but are not weights worth saving.
        self.register_buffer("loc", torch.zeros(latent_dim), persistent=False)
        self.register_buffer("scale", torch.ones(latent_dim), persistent=False)

    def forward(self, temperature: float = 1.0) -> Distribution:
        """temperature scales sigma: sampling at T < 1 trades diversity for typicality."""
        return Independent(Normal(self.loc, self.scale * temperature), 1)
