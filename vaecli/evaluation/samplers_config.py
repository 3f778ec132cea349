"""Cards of the fitted samplers (vae fit-sampler; the code is samplers.py): conf/sampler/NAME.yaml."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional

from ..registry import MISSING, Card, Need, member

FIT_ON = ("mean", "sample")
COVARIANCES = ("full", "diag")


@dataclass
class SamplerCard(Card):
    fit_on: str = MISSING  # mean | sample
    images: Optional[int] = None  # the first N training images (None: all)
    seed: int = MISSING

    def check(self, run, need: Need) -> None:
        need(self.fit_on in FIT_ON, f"sampler.fit_on must be one of {', '.join(FIT_ON)} (got {self.fit_on!r})")
        need(self.images is None or self.images >= 1, f"sampler.images must be >= 1 or null (got {self.images})")


@member("sampler", "gmm")
@dataclass
class GMM(SamplerCard):
    """A Gaussian mixture on the latents (Ghosh et al. 2020)."""

    components: Any = MISSING  # a number, or auto (chosen by held-out likelihood: samplers.GMM_CANDIDATES)
    covariance: str = MISSING  # full | diag
    max_iter: int = MISSING

    def check(self, run, need: Need) -> None:
        super().check(run, need)
        c = self.components
        need(c == "auto" or (isinstance(c, int) and not isinstance(c, bool) and c >= 1),
             f"sampler.components must be a number >= 1 or auto (got {c!r})")
        need(self.covariance in COVARIANCES,
             f"sampler.covariance must be one of {', '.join(COVARIANCES)} (got {self.covariance!r})")
        need(self.max_iter >= 1, f"sampler.max_iter must be >= 1 (got {self.max_iter})")


@member("sampler", "two_stage")
@dataclass
class TwoStage(SamplerCard):
    """A second VAE on the latents (Dai & Wipf 2019)."""

    hidden: List[int] = MISSING  # widths of the second stage's MLPs
    epochs: int = MISSING
    lr: float = MISSING
    batch_size: int = MISSING

    def check(self, run, need: Need) -> None:
        super().check(run, need)
        need(len(self.hidden) >= 1 and all(h >= 1 for h in self.hidden),
             f"sampler.hidden must list positive widths, e.g. [512,512] (got {self.hidden})")
        need(self.epochs >= 1, f"sampler.epochs must be >= 1 (got {self.epochs})")
        need(self.lr > 0, f"sampler.lr must be > 0 (got {self.lr})")
        need(self.batch_size >= 1, f"sampler.batch_size must be >= 1 (got {self.batch_size})")
