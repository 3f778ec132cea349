"""The VQ-VAE's card (van den Oord et al. 2017; the code is vqvae.py and quantize.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..registry import MISSING, Need, member
from . import spec as specs
from .vae_config import ModelCard, NetworkKey


@specs.kind("vqvae", model="vaecli.models.vqvae:VQVAE")
@dataclass
class VQVAESpec(specs.ModelSpec):
    kind: str = "vqvae"
    quantizer: specs.Quantizer = field(default_factory=specs.Quantizer)

    @classmethod
    def from_flat(cls, common: dict, flat: dict) -> "VQVAESpec":
        return cls(**common, quantizer=specs.Quantizer.from_flat(flat))


@member("model", "vqvae")
@dataclass
class VQVAE(NetworkKey, ModelCard):
    """A conv encoder to an h x w grid of code_dim vectors, each replaced by the nearest of
    codebook_size codes; a uniform prior over codes while it trains (KL = h w log K)."""

    code_dim: int = MISSING  # D: the size of each code vector
    codebook_size: int = MISSING  # K codes
    commitment: float = MISSING  # beta of the commitment loss
    ema_decay: float = MISSING  # codebook EMA decay (0: the codebook loss)
    dead_after: int = MISSING  # steps unused before a code is revived (0: never)
    kmeans_init: bool = MISSING  # k-means initialisation of the codebook

    def check(self, run, need: Need) -> None:
        super().check(run, need)
        need(self.network in ("conv", "resnet"),
             f"model=vqvae needs a code grid: model.network=conv or resnet (got {self.network!r})")
        need(self.codebook_size >= 2, f"model.codebook_size must be >= 2 (got {self.codebook_size})")
        need(self.code_dim >= 1, f"model.code_dim must be >= 1 (got {self.code_dim})")
        need(self.commitment >= 0, f"model.commitment must be >= 0 (got {self.commitment})")
        need(0 <= self.ema_decay < 1, f"model.ema_decay must be in [0, 1) (got {self.ema_decay})")
        need(self.dead_after >= 0, f"model.dead_after must be >= 0 (got {self.dead_after})")
        need(run.kl.schedule == "constant" and run.kl.free_bits == 0 and run.beta == 1.0,
             "model=vqvae's KL to the uniform code prior is a constant: beta, kl.schedule and kl.free_bits change "
             "nothing; drop them")

    def model_spec(self, common: dict, posterior, delta: float) -> specs.ModelSpec:
        return VQVAESpec(**common, quantizer=specs.Quantizer(
            self.codebook_size, self.code_dim, self.commitment, self.ema_decay, self.dead_after, self.kmeans_init))

    def lacks(self, run) -> dict[str, str]:
        objective = ("model=vqvae has a point-mass posterior over codes: importance sampling and the KL-shaping "
                     f"objectives do not apply; use objective=elbo (got objective={run.objective.name})")
        return {"chosen_prior": "model=vqvae has its own prior over codes (uniform while training it); use prior=normal",
                "importance_sampling": objective, "gaussian_code": objective}
