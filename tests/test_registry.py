"""The family registry (registry.py): every conf/ option has a card whose keys are its YAML's,
cross-family rules are capabilities, and composing a config imports no torch."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import pytest
import yaml

from vaecli import registry
from vaecli.config import config_dir, group_options, load_config
from vaecli.errors import UsageError


@pytest.mark.parametrize("family", [*registry.FAMILIES, "sampler"])
def test_every_conf_option_has_a_card_with_the_same_keys(family):
    assert sorted(registry.members(family)) == group_options(family)
    for name, card in registry.members(family).items():
        keys = set(yaml.safe_load((config_dir() / family / f"{name}.yaml").read_text()))
        assert keys == set(card.keys()), (family, name, keys ^ set(card.keys()))


def test_each_card_is_registered_once_under_its_own_name():
    for family in (*registry.FAMILIES, "sampler"):
        for name, card in registry.members(family).items():
            assert (card.family, card.member) == (family, name)
            assert card.__module__ in registry.CARD_MODULES or card.__module__.startswith("vaecli.")


def test_a_key_of_another_member_is_refused_naming_the_chosen_members_keys():
    with pytest.raises(UsageError, match=r"unknown key 'model.codebook_size'; valid keys in 'model': activation"):
        load_config(["model=mlp", "model.codebook_size=8"])
    with pytest.raises(UsageError, match="unknown key 'objective.k'"):
        load_config(["objective=btcvae", "objective.k=5"])


def test_the_typed_config_holds_the_chosen_members_cards():
    cfg = load_config(["model=vqvae"]).cfg
    assert type(cfg.model).__name__ == "VQVAE" and cfg.model.codebook_size == 512
    assert not hasattr(cfg.model, "decoder") and not hasattr(cfg.objective, "k")
    with pytest.raises(UsageError, match="model.codebook_size.*is not an integer"):
        load_config(["model=vqvae", "model.codebook_size=many"])


def test_composing_a_config_imports_no_torch():
    code = ("import sys; from vaecli.config import load_config; load_config(['model=vqvae']); "
            "load_config(['model=ladder', 'objective=iwae']); assert 'torch' not in sys.modules, 'torch imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@dataclass
class _ToyPrior(registry.Card):
    """A member written in a test: a prior that evaluates q(z|x) anywhere, as the VampPrior does."""

    def requires(self, run):
        return [registry.needs("closed_form", message="prior=toy needs a posterior with a density at any point")]


def test_a_new_member_states_its_needs_as_capabilities_and_is_refused_by_them():
    """The rule lives in the new member and names no other member: with a flow posterior (which
    provides no closed form) it is refused with its own sentence, with the Gaussian accepted."""
    posteriors = registry.members("posterior")
    gaussian, iaf = posteriors["gaussian"](name="gaussian"), posteriors["iaf"](name="iaf", flows=2, hidden=4)
    toy = _ToyPrior(name="toy")
    refusals = []

    def need(ok, message):
        if not ok:
            refusals.append(message)

    model = registry.members("model")["mlp"](name="mlp", latent="gaussian", conditional=False)
    run = type("Run", (), {"model": model})()
    registry.check_requirements([model, gaussian, toy], run, need)
    assert refusals == []
    registry.check_requirements([model, iaf, toy], run, need)
    assert refusals == ["prior=toy needs a posterior with a density at any point"]


def test_a_member_that_lacks_a_capability_explains_it_in_its_own_words():
    with pytest.raises(UsageError, match="model=ladder has its own hierarchical prior"):
        load_config(["model=ladder", "prior=mog"])
    refusals = []
    iwae = registry.members("objective")["iwae"](name="iwae", k=2)
    model = registry.members("model")["hvae"](name="hvae")
    registry.check_requirements([iwae], type("Run", (), {"model": model})(), lambda ok, m: ok or refusals.append(m))
    assert refusals == ["objective=iwae needs a model whose posterior can be importance-sampled (model=mlp, conv, "
                        "resnet, hvae or ladder; got model=hvae)"]


@pytest.mark.parametrize("family, builders", [("likelihood", "vaecli.models.likelihoods"),
                                              ("prior", "vaecli.models.priors"),
                                              ("posterior", "vaecli.models.posteriors")])
def test_every_member_with_a_card_has_a_builder(family, builders):
    import importlib

    assert set(importlib.import_module(builders).BUILDERS) == set(registry.members(family))


def test_every_objective_card_has_a_registered_loss_and_every_model_kind_a_class():
    import importlib

    from vaecli import objectives
    from vaecli.models import spec as specs

    assert set(objectives.LOSSES) == set(registry.members("objective"))
    registry.load()
    for kind, cls in specs.SPECS.items():
        module, _, name = cls.model_class.partition(":")
        assert hasattr(importlib.import_module(module), name), kind


def test_every_model_card_makes_its_spec_and_every_kind_reads_flat_specs():
    from vaecli.models import spec as specs

    for name, card in registry.members("model").items():
        assert callable(getattr(card, "model_spec", None)), name
    registry.load()
    for kind, cls in specs.SPECS.items():
        assert "from_flat" in vars(cls) or any("from_flat" in vars(base) for base in cls.__mro__[1:-1]
                                              if base is not specs.ModelSpec), kind
