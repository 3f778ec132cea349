"""The categorical latent's keys (model.latent=categorical on mlp, conv and resnet; the code is
categorical.py): latent_dim variables of `categories` classes, trained through the
Gumbel-softmax relaxation (Jang et al. 2017) with the temperature annealed."""

from __future__ import annotations

from dataclasses import dataclass

from ..registry import MISSING, Need

LATENTS = ("gaussian", "categorical")


@dataclass
class LatentKeys:
    latent: str = MISSING  # gaussian | categorical
    categories: int = MISSING  # categorical: K classes per variable
    temperature: float = MISSING  # categorical: the Gumbel-softmax temperature at the start ...
    temperature_min: float = MISSING  # ... annealed down to this ...
    anneal_rate: float = MISSING  # ... as max(min, tau_0 exp(-rate * passes))

    @property
    def categorical(self) -> bool:
        return self.latent == "categorical"

    def check_latent(self, need: Need) -> None:
        need(self.latent in LATENTS, f"model.latent must be one of {', '.join(LATENTS)} (got {self.latent!r})")
        if not self.categorical:
            return
        need(self.categories >= 2, f"model.categories must be >= 2 classes per variable (got {self.categories})")
        need(self.temperature > 0, f"model.temperature must be > 0 (got {self.temperature})")
        need(0 < self.temperature_min <= self.temperature,
             f"model.temperature_min must be in (0, model.temperature] (got {self.temperature_min})")
        need(self.anneal_rate >= 0, f"model.anneal_rate must be >= 0 (got {self.anneal_rate})")

    def categorical_lacks(self, run) -> dict[str, str]:
        """Why a categorical code offers less than a Gaussian one."""
        objective = (f"model.latent=categorical trains through the Gumbel-softmax relaxation: use objective=elbo "
                     f"(got objective={run.objective.name}; eval-iwae still importance-samples hard codes)")
        return {"chosen_posterior": "model.latent=categorical has its own posterior (categorical): drop posterior=",
                "chosen_prior": "model.latent=categorical has a uniform prior over codes: use prior=normal (the default)",
                "importance_sampling": objective, "gaussian_code": objective}
