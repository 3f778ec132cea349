"""The members of each family (models, posteriors, likelihoods, priors, objectives, samplers) and
what they say of themselves.

A member is registered once, by its *card*: a dataclass holding its config keys (the schema of
conf/FAMILY/NAME.yaml, types only; the YAML holds the defaults and their comments), its own
checks, and what it offers the rest of the run. Cards are torch-free, so composing a config,
shell completion and `vae --help` never import torch; each sits beside its member's code
(`models/vqvae.py` and `models/vqvae_config.py`, as transformers keeps `modeling_x.py` beside
`configuration_x.py`).

Cross-family rules are *capabilities*, never names: a member `provides` strings such as
"closed_form" (its KL and density are known at any point) and `requires` others, each with the
sentence that explains a refusal. A member that lacks a capability another needs may say why in
its own words (`lacks`): "model=ladder has its own hierarchical prior ...". The vocabulary:

  importance_sampling  the model's log_weights are trained with IWAE (a reparameterized density)
  gaussian_code        q(z|x) is one diagonal Gaussian over a flat latent vector
  code                 a deterministic flat code (the autoencoder)
  kl_per_dim           the KL comes per latent dimension or group (free bits clamp it)
  chosen_prior         the model's prior p(z) is the prior family's choice
  chosen_posterior     the model's posterior q(z|x) is the posterior family's choice
  unconditional        the model takes no class label
  closed_form          the posterior's density is known at any point (not only at its samples)
  standard_normal      the prior is N(0, I)
  density              the likelihood is a density on [0, 1] (dequantization applies)
  elbo_loss            the objective is the ELBO with its KL weight, schedule and free bits
  pixel_mean           the decoder gives a mean image in one pass, differentiable in z (not a PixelCNN)

Adding a member: its card module (a `@member` class) and its name in CARD_MODULES below, plus
conf/FAMILY/NAME.yaml. tests/test_registry.py checks that every conf/ option has a card whose
keys are the YAML's.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, fields
from typing import Callable, ClassVar, Iterable

MISSING = "???"  # omegaconf.MISSING, without importing OmegaConf here (only config.py knows it)
FAMILIES = ("model", "posterior", "likelihood", "prior", "objective")  # the run config's member families
Need = Callable[[bool, str], None]

# The one list of card modules: importing each registers its members.
CARD_MODULES = (
    "vaecli.models.vae_config",  # mlp, conv, resnet, ae, hvae (with categorical_config, autoregressive_config)
    "vaecli.models.vqvae_config",
    "vaecli.models.ladder_config",
    "vaecli.models.autoencoder_kl_config",
    "vaecli.models.posteriors_config",
    "vaecli.models.likelihoods_config",
    "vaecli.models.priors_config",
    "vaecli.objectives_config",
    "vaecli.evaluation.samplers_config",
)


@dataclass(frozen=True)
class Requirement:
    """Capabilities a member needs of the others: any one of `any_of` (sets, all of whose members
    must be provided). `explain`: whether a member lacking one may give its own reason."""

    any_of: tuple[frozenset[str], ...]
    message: str
    explain: bool = True


def needs(*caps: str, message: str, explain: bool = True) -> Requirement:
    return Requirement((frozenset(caps),), message, explain)


@dataclass
class Card:
    """A family member's config keys (subclasses add theirs) and what it says of itself. `run` is
    the whole typed config, read-only, for the run-wide keys (beta, kl.*) a member's rules read."""

    family: ClassVar[str] = ""
    member: ClassVar[str] = ""
    name: str = MISSING

    def check(self, run, need: Need) -> None:
        """Ranges of its own keys (and the run-wide keys it gives a meaning to)."""

    def provides(self, run) -> set[str]:
        return set()

    def requires(self, run) -> list[Requirement]:
        return []

    def lacks(self, run) -> dict[str, str]:
        """capability -> why this member does not provide it, in its own words."""
        return {}

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]


_MEMBERS: dict[str, dict[str, type[Card]]] = {}
_loaded = False  # (load() imports CARD_MODULES once)


def member(family: str, name: str) -> Callable[[type[Card]], type[Card]]:
    """Class decorator: register a card as `family`=`name`."""

    def register(cls: type[Card]) -> type[Card]:
        cls.family, cls.member = family, name
        taken = _MEMBERS.setdefault(family, {})
        if name in taken and taken[name] is not cls:
            raise RuntimeError(f"two cards register {family}={name}: {taken[name].__module__} and {cls.__module__}")
        taken[name] = cls
        return cls

    return register


def load() -> None:
    """Import every card module (registering its members and its model kinds' spec classes)."""
    global _loaded
    if not _loaded:
        for module in CARD_MODULES:
            importlib.import_module(module)
        _loaded = True


def members(family: str) -> dict[str, type[Card]]:
    load()
    return dict(_MEMBERS.get(family, {}))


def card(family: str, name: str) -> type[Card] | None:
    return members(family).get(name)


def provided(chosen: Iterable[Card], run) -> set[str]:
    caps: set[str] = set()
    for c in chosen:
        caps |= c.provides(run)
    return caps


def check_requirements(chosen: list[Card], run, need: Need, extra: Iterable[Requirement] = ()) -> None:
    """Every chosen member's requirements (in family order), then `extra` (the run-wide rules of
    config.py), against what the chosen members provide."""
    caps = provided(chosen, run)
    reasons: dict[str, str] = {}
    for c in chosen:
        for cap, why in c.lacks(run).items():
            reasons.setdefault(cap, why)
    for requirement in [r for c in chosen for r in c.requires(run)] + list(extra):
        if any(option <= caps for option in requirement.any_of):
            continue
        missing = sorted(requirement.any_of[0] - caps)
        explained = [reasons[cap] for cap in missing if cap in reasons] if requirement.explain else []
        need(False, explained[0] if explained else requirement.message)
