"""Adding a model family touches no vaecli file (docs/ARCHITECTURE.md, "Adding a model: a worked
example"): a card with its spec, a model class, one registration each. Written here, in a test,
the toy member trains, is refused where its capabilities fall short, saves, and reloads through
the same checkpoint path as every built-in model."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from vaecli.runtime import checkpoint
from vaecli import objectives, registry
from vaecli.config import DatasetConfig
from vaecli.models import spec as specs
from vaecli.models.vae import VAE
from vaecli.models.vae_config import ModelCard, VAESpec


class ToyVAE(VAE):
    """The flat VAE with its decoder's logits scaled by a fixed temperature."""

    def _likelihood_params(self, z, y):
        return super()._likelihood_params(z, y) / self.spec.logit_temperature


@pytest.fixture
def toy_member():
    """Register the toy's spec and card, as its module would at import; unregister afterwards so
    the registry matches conf/ again for the other tests."""

    @specs.kind("toy", model=f"{__name__}:ToyVAE")
    @dataclass
    class ToySpec(VAESpec):
        kind: str = "toy"
        logit_temperature: float = 1.0

    @registry.member("model", "toy")
    @dataclass
    class Toy(ModelCard):
        logit_temperature: float = registry.MISSING

        def check(self, run, need):
            super().check(run, need)
            need(self.logit_temperature > 0, f"model.logit_temperature must be > 0 (got {self.logit_temperature})")

        def provides(self, run):
            return super().provides(run) | {"importance_sampling", "gaussian_code", "kl_per_dim", "chosen_prior"}

        def body(self):  # the pixel networks: vaecli's MLPs
            return specs.Body("mlp", list(self.hidden), self.activation)

        def model_spec(self, common, posterior, delta):
            return ToySpec(**common, logit_temperature=self.logit_temperature)

    yield Toy
    del registry._MEMBERS["model"]["toy"], specs.SPECS["toy"]


def test_a_model_family_written_outside_vaecli_trains_saves_and_reloads(toy_member, tmp_path):
    from vaecli.models import spec_from_config

    card = toy_member(name="toy", latent_dim=2, hidden=[8], activation="relu", conditional=False,
                      logit_temperature=2.0)
    lik = registry.members("likelihood")["bernoulli"](name="bernoulli")
    prior = registry.members("prior")["normal"](name="normal")
    spec = spec_from_config(card, lik, prior, (1, 4, 4))
    from vaecli.models import build

    torch.manual_seed(0)
    model = build(spec)
    assert type(model).__name__ == "ToyVAE" and model.spec.logit_temperature == 2.0
    objective = objectives.Objective("elbo")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = (torch.rand(16, 1, 4, 4) > 0.5).float()
    first = None
    for step in range(30):
        loss, _ = objective(model, x, None, step)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first  # it learns
    checkpoint.save_model(tmp_path / "model.safetensors", model, DatasetConfig(name="shapes"), 0, 30, 1)
    loaded = checkpoint.load_model(tmp_path / "model.safetensors").model
    assert type(loaded).__name__ == "ToyVAE" and loaded.spec == model.spec
    assert torch.equal(loaded.reconstruct(x), model.eval().reconstruct(x))


def test_the_toy_members_rules_are_its_own_and_capabilities_decide_the_rest(toy_member):
    card = toy_member(name="toy", latent_dim=2, hidden=[8], activation="relu", conditional=False,
                      logit_temperature=0.0)
    refusals = []
    run = type("Run", (), {"model": card})()
    card.check(run, lambda ok, message: ok or refusals.append(message))
    assert refusals == ["model.logit_temperature must be > 0 (got 0.0)"]
    iaf = registry.members("posterior")["iaf"](name="iaf", flows=1, hidden=4)
    registry.check_requirements([card, iaf], run, lambda ok, message: ok or refusals.append(message))
    assert refusals[-1].startswith("posterior=iaf is for the flat VAEs")  # the toy does not offer chosen_posterior
