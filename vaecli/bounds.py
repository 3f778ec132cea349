"""What a likelihood figure is a figure of. No torch here: `vae runs` and the config use it too.

A reported −log p(x) or bits/dim is a *bound* only when log p(x|z) is a probability of the data
as stored (Theis, van den Oord & Bethge 2016, "A note on the evaluation of generative models"):
- a probability mass of the stored values: Bernoulli on binary images, the discretized
  logistic on 8-bit images (256 bins that sum to 1);
- a density on [0, 1]^D made into one by uniform dequantization (Uria et al. 2013): trained and
  evaluated on y = (k + u) / L, u ~ U[0, 1)^D for stored level k of L, so that
  log P(k) = log E_u p(y) - D ln L >= E_u log p(y) - D ln L. The likelihood then reports
  log p(y) - D ln L itself, so every ELBO and IWAE figure built on it is of the discrete data.
Everything else is a training objective that is not normalised over the data: Bernoulli
cross-entropy on grey pixels (its floor, sum_d H(x_d), depends on the image alone) and a density
evaluated at the grid points k/255 (it can exceed any probability, even make bits/dim negative).
Such figures still compare models on the same data; they are never called -log p(x) or bits/dim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# What each likelihood's log_prob measures: a mass on {0, 1}, a mass on the 256 levels of 8-bit
# data, or a density on [0, 1] (or the real line).
LIKELIHOODS = {"bernoulli": "binary", "logistic": "levels", "cbernoulli": "density", "gaussian": "density",
               "gaussian_learned": "density"}
DENSITIES = tuple(name for name, kind in LIKELIHOODS.items() if kind == "density")


@dataclass(frozen=True)
class Measure:
    """What log p(x|z) — and every ELBO, IWAE bound and score built on it — is of."""

    bound: bool  # -ELBO and -IWAE bound -log P(x) of the data as stored
    what: str  # one line for people, e.g. "Bernoulli cross-entropy on grey pixels, not a bound ..."

    def nll(self, log_px_nats: float | None) -> float | None:
        """-log P(x) <= this, in nats per image; None when the figure is not a bound."""
        return None if not self.bound or log_px_nats is None else -log_px_nats

    def bits_per_dim(self, log_px_nats: float | None, dims: int) -> float | None:
        """The same bound in bits per dimension (pixel and channel); None when not a bound."""
        nll = self.nll(log_px_nats)
        return None if nll is None else nll / (dims * math.log(2))


def levels(binarize) -> int:
    """Levels of the data as stored: 2 for a binarized dataset (dataset.binarize set: dynamic or static
    for the sets vaecli binarizes, stored for dSprites, binary in its file), else 256."""
    return 2 if binarize else 256


def measure(likelihood: str, data_levels: int, dequantize: bool) -> Measure:
    """What `likelihood` measures on data stored with `data_levels` levels per value, trained and
    evaluated dequantized or not."""
    kind = LIKELIHOODS.get(likelihood)
    stored = "binary images" if data_levels == 2 else f"{data_levels}-level images"
    if kind == "binary":
        if data_levels == 2:
            return Measure(True, f"-log P(x) of the {stored} (Bernoulli: a probability of the stored values)")
        return Measure(False, "Bernoulli cross-entropy on grey pixels, not a bound on -log p(x) (for one: binarized "
                              "data, likelihood=logistic, or a dequantized density)")
    if kind == "levels":
        return Measure(True, f"-log P(x) of the {stored} (discretized logistic: a probability of the stored values)")
    if kind == "density":
        if dequantize:
            return Measure(True, f"-log P(x) of the {stored} (a density on uniformly dequantized data, "
                                 f"+ D ln {data_levels})")
        return Measure(False, "a density at the pixel values, not a bound on -log p(x) (dataset.dequantize=true "
                              "makes it one)")
    raise ValueError(f"unknown likelihood {likelihood!r}")
