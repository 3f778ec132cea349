"""Cards of the prior family p(z) (the code is priors.py)."""

from __future__ import annotations

from dataclasses import dataclass

from ..registry import MISSING, Card, Need, member, needs


@member("prior", "normal")
@dataclass
class Normal(Card):
    """N(0, I)."""

    def provides(self, run) -> set[str]:
        return {"standard_normal"}


@dataclass
class Mixture(Card):
    components: int = MISSING

    def check(self, run, need: Need) -> None:
        need(self.components >= 1, f"prior.components must be >= 1 (got {self.components})")

    def requires(self, run):
        return [needs("chosen_prior", message=f"prior={self.name} is for the flat Gaussian VAEs (model=mlp, conv or "
                      f"resnet); {run.model.describe()} has a prior of its own: use prior=normal")]


@member("prior", "mog")
@dataclass
class MoG(Mixture):
    """A learned mixture of Gaussians."""


@member("prior", "vamp")
@dataclass
class Vamp(Mixture):
    """The VampPrior (Tomczak & Welling 2018): the mixture of the posteriors of learned pseudo-inputs,
    which it evaluates at any z, so the posterior must have a density there."""

    def requires(self, run):
        return super().requires(run) + [
            needs("unconditional", message="prior=vamp is not available for conditional models (its pseudo-inputs "
                  "have no label)"),
            needs("closed_form", message=f"prior=vamp evaluates the posteriors of its pseudo-inputs at any z, and "
                  f"posterior={run.posterior.name} has a density only at its own samples: use posterior=gaussian "
                  "with prior=vamp (or prior=normal or mog with a flow)", explain=False),
        ]
