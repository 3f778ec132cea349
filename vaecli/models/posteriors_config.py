"""Cards of the posterior family (the code is posteriors.py): the diagonal Gaussian, or a flow on it."""

from __future__ import annotations

from dataclasses import dataclass

from ..registry import MISSING, Card, Need, member, needs


@member("posterior", "gaussian")
@dataclass
class Gaussian(Card):
    """q(z|x) = N(mu, sigma^2): its KL to N(0, I) and its density are closed forms everywhere."""

    def provides(self, run) -> set[str]:
        return {"closed_form"}


@dataclass
class Flow(Card):
    flows: int = MISSING  # steps

    def check(self, run, need: Need) -> None:
        need(self.flows >= 1, f"posterior.flows must be >= 1 (got {self.flows})")

    def requires(self, run):
        return [needs("chosen_posterior", message=f"posterior={self.name} is for the flat VAEs (model=mlp, conv or "
                      f"resnet); {run.model.describe()} has a posterior of its own: use posterior=gaussian")]


@member("posterior", "iaf")
@dataclass
class IAF(Flow):
    """Inverse autoregressive flow (Kingma et al. 2016)."""

    hidden: int = MISSING  # width of each step's MADE and of the encoder's context

    def check(self, run, need: Need) -> None:
        super().check(run, need)
        need(self.hidden >= 1, f"posterior.hidden must be >= 1 (got {self.hidden})")


@member("posterior", "planar")
@dataclass
class Planar(Flow):
    """Planar flow (Rezende & Mohamed 2015)."""
