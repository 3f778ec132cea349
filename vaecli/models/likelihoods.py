"""p(x|z): each likelihood turns decoder outputs (B, P*C, H, W) into a distribution whose
event is one image (C, H, W), so log_prob(x) has shape (B,) and mean is an image batch."""

from __future__ import annotations

from torch import Tensor, nn
from torch.distributions import Bernoulli, Distribution, Independent, Normal


class BernoulliLikelihood(nn.Module):
    """Per-pixel Bernoulli with logits from the decoder. On grey [0, 1] pixels its log_prob is
    the (negative) binary cross-entropy that most VAE code uses; it is a proper likelihood for
    binarized data."""

    params_per_pixel = 1

    def forward(self, params: Tensor) -> Distribution:
        # validate_args=False: grey pixel values are outside Bernoulli's {0, 1} support by design.
        return Independent(Bernoulli(logits=params, validate_args=False), 3, validate_args=False)


class GaussianLikelihood(nn.Module):
    """Per-pixel Normal(mean = decoder output, fixed sigma)."""

    params_per_pixel = 1

    def __init__(self, sigma: float):
        super().__init__()
        self.sigma = float(sigma)

    def forward(self, params: Tensor) -> Distribution:
        return Independent(Normal(params, self.sigma, validate_args=False), 3, validate_args=False)


def build(name: str, sigma: float | None = None) -> nn.Module:
    if name == "bernoulli":
        return BernoulliLikelihood()
    if name == "gaussian":
        return GaussianLikelihood(sigma if sigma is not None else 0.1)
    raise ValueError(f"unknown likelihood {name!r}")
