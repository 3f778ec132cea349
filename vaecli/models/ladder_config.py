"""The ladder's card (a top-down hierarchical VAE, Sønderby et al. 2016 / NVAE's layout; the code
is ladder.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..registry import MISSING, Need, member
from . import spec as specs
from .autoregressive_config import DecoderKeys
from .vae_config import ModelCard, NetworkKey


@specs.kind("ladder", model="vaecli.models.ladder:Ladder")
@dataclass
class LadderSpec(specs.ModelSpec):
    kind: str = "ladder"
    groups: int = 1  # latent groups of latent_dim units each
    decoder: specs.Decoder = field(default_factory=specs.Decoder)

    @classmethod
    def from_flat(cls, common: dict, flat: dict) -> "LadderSpec":
        return cls(**common, groups=flat["groups"], decoder=specs.Decoder.from_flat(flat))


@member("model", "ladder")
@dataclass
class Ladder(DecoderKeys, NetworkKey, ModelCard):
    groups: int = MISSING  # latent groups of latent_dim units each

    def check(self, run, need: Need) -> None:
        super().check(run, need)
        self.check_network(need)
        need(self.groups >= 1, f"model.groups must be >= 1 (got {self.groups})")
        self.check_decoder(need)

    def provides(self, run) -> set[str]:
        return super().provides(run) | {"importance_sampling", "kl_per_dim"}

    def model_spec(self, common: dict, posterior, delta: float) -> specs.ModelSpec:
        return LadderSpec(**common, groups=self.groups,
                                decoder=specs.Decoder(self.decoder, self.ar_layers, self.ar_kernel, self.ar_channels))

    def lacks(self, run) -> dict[str, str]:
        return {"chosen_prior": "model=ladder has its own hierarchical prior (N(0, I) on the top group); use prior=normal"}
