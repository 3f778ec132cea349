"""Cards of the likelihood family p(x|z) (the code is likelihoods.py; what each log_prob is of:
bounds.py)."""

from __future__ import annotations

from dataclasses import dataclass

from ..bounds import DENSITIES
from ..registry import MISSING, Card, Need, member


@dataclass
class LikelihoodCard(Card):
    def provides(self, run) -> set[str]:
        return {"density"} if self.name in DENSITIES else set()


@member("likelihood", "bernoulli")
@dataclass
class Bernoulli(LikelihoodCard):
    """A mass on binary pixels (binarized data)."""


@member("likelihood", "cbernoulli")
@dataclass
class ContinuousBernoulli(LikelihoodCard):
    """The continuous Bernoulli (Loaiza-Ganem & Cunningham 2019): a density on [0, 1]."""


@dataclass
class GaussianKeys(LikelihoodCard):
    sigma: float = MISSING  # the fixed sigma, or the learned one's start

    def check(self, run, need: Need) -> None:
        need(self.sigma > 0, f"likelihood.sigma must be > 0 (got {self.sigma})")


@member("likelihood", "gaussian")
@dataclass
class Gaussian(GaussianKeys):
    """N(x; mean, sigma^2) with sigma fixed."""


@member("likelihood", "gaussian_learned")
@dataclass
class GaussianLearned(GaussianKeys):
    """sigma learned: one in all pixels, or one per pixel."""

    per_pixel: bool = MISSING


@member("likelihood", "logistic")
@dataclass
class Logistic(LikelihoodCard):
    """The discretized mixture of logistics (Salimans et al. 2017)."""

    mixtures: int = MISSING  # components per pixel

    def check(self, run, need: Need) -> None:
        need(self.mixtures >= 1, f"likelihood.mixtures must be >= 1 (got {self.mixtures})")
