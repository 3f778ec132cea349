"""Cards of the models in vae.py: the flat VAEs (mlp, conv, resnet; with a Gaussian or categorical
latent and a factorized or PixelCNN decoder), the deterministic autoencoder and the
two-stochastic-layer VAE of Burda et al. (2015). Torch-free (registry.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ..registry import MISSING, Card, Need, member
from . import spec as specs
from .autoregressive_config import DecoderKeys
from .categorical_config import LatentKeys

NETWORKS = ("mlp", "conv", "resnet")
ACTIVATIONS = ("relu", "tanh", "elu")


@dataclass
class ModelCard(Card):
    """Keys every model has. Each registered model card also makes its model's spec:
    `model_spec(common, posterior, delta)` from ModelSpec's common fields, the chosen posterior's
    card and kl.delta (tests/test_registry.py checks that every model card has one)."""

    latent_dim: int = MISSING
    hidden: List[int] = MISSING
    activation: str = MISSING
    conditional: bool = MISSING

    def check(self, run, need: Need) -> None:
        need(self.latent_dim >= 1, f"model.latent_dim must be >= 1 (got {self.latent_dim})")
        need(len(self.hidden) >= 1 and all(h >= 1 for h in self.hidden),
             f"model.hidden must list positive widths, e.g. [400] (got {self.hidden})")
        need(self.activation in ACTIVATIONS,
             f"model.activation must be one of {', '.join(ACTIVATIONS)} (got {self.activation!r})")

    def provides(self, run) -> set[str]:
        return set() if self.conditional else {"unconditional"}

    def describe(self) -> str:
        return f"model={self.name}"

    def body(self) -> specs.Body:
        """The pixel networks' part of the model spec."""
        arch = getattr(self, "network", None) or self.name
        nodes = self.networks() if isinstance(self, NetworkNodes) else None
        return specs.Body(arch, list(self.hidden), self.activation, networks=nodes)


@dataclass
class NetworkKey:
    """Models that take the body of their pixel networks from model.network."""

    network: str = MISSING  # mlp | conv | resnet

    def check_network(self, need: Need, allowed: tuple[str, ...] = NETWORKS) -> None:
        need(self.network in allowed, f"model.network must be one of {', '.join(allowed)} (got {self.network!r})")


@dataclass
class NetworkNodes:
    """The user's own networks as Hydra `_target_` nodes (models/networks.py holds the contract)."""

    OPEN_KEYS = ("encoder_net", "decoder_net")  # nodes whose keys are the user's (config._check_keys)
    encoder_net: Optional[Dict[str, Any]] = None
    decoder_net: Optional[Dict[str, Any]] = None

    def check_networks(self, need: Need) -> None:
        for key in self.OPEN_KEYS:
            node = getattr(self, key)
            if node:
                target = node.get("_target_")
                need(isinstance(target, str) and "." in target,
                     f"model.{key} needs model.{key}._target_=package.module.Class (got {target!r})")

    def networks(self) -> dict | None:
        """The nodes as the model spec records them: {"encoder"|"decoder": node}."""
        found = {role: dict(node) for role, node in (("encoder", self.encoder_net), ("decoder", self.decoder_net))
                 if node}
        return found or None


class FlatVAE(NetworkNodes, LatentKeys, DecoderKeys, ModelCard):
    """q(z|x) on a flat latent vector from an MLP, conv or ResNet encoder (Kingma & Welling 2013)."""

    def check(self, run, need: Need) -> None:
        super().check(run, need)
        self.check_latent(need)
        self.check_decoder(need)
        self.check_networks(need)

    def provides(self, run) -> set[str]:
        if self.categorical:
            return super().provides(run) | {"kl_per_dim"}
        mean = {"pixel_mean"} if self.decoder == "factorized" else set()
        return super().provides(run) | mean | {"importance_sampling", "gaussian_code", "kl_per_dim", "chosen_prior",
                                               "chosen_posterior"}

    def lacks(self, run) -> dict[str, str]:
        return self.categorical_lacks(run) if self.categorical else {}

    def describe(self) -> str:
        return (f"model={self.name}" + (", latent=categorical" if self.categorical else "")
                + (f", model.decoder={self.decoder}" if self.decoder != "factorized" else ""))

    def model_spec(self, common: dict, posterior, delta: float) -> specs.ModelSpec:
        q = specs.Posterior(posterior.name, getattr(posterior, "flows", 0), getattr(posterior, "hidden", 0), delta)
        decoder = specs.Decoder(self.decoder, self.ar_layers, self.ar_kernel, self.ar_channels)
        if self.categorical:
            return CategoricalSpec(**common, posterior=q, decoder=decoder, categorical=specs.Categories(
                self.categories, self.temperature, self.temperature_min, self.anneal_rate))
        return VAESpec(**common, posterior=q, decoder=decoder)


@specs.kind("vae", model="vaecli.models.vae:VAE")
@dataclass
class VAESpec(specs.ModelSpec):
    """The flat VAEs' spec (mlp, conv, resnet with a Gaussian latent)."""

    posterior: specs.Posterior = field(default_factory=specs.Posterior)
    decoder: specs.Decoder = field(default_factory=specs.Decoder)

    @classmethod
    def from_flat(cls, common: dict, flat: dict) -> "VAESpec":
        return cls(**common, posterior=specs.Posterior.from_flat(flat), decoder=specs.Decoder.from_flat(flat))


@specs.kind("ae", model="vaecli.models.vae:AE")
@dataclass
class AESpec(VAESpec):
    kind: str = "ae"


@specs.kind("categorical", model="vaecli.models.categorical:CategoricalVAE")
@dataclass
class CategoricalSpec(VAESpec):
    kind: str = "categorical"
    categorical: specs.Categories = field(default_factory=specs.Categories)

    @classmethod
    def from_flat(cls, common: dict, flat: dict) -> "CategoricalSpec":
        return cls(**common, posterior=specs.Posterior.from_flat(flat), decoder=specs.Decoder.from_flat(flat),
                   categorical=specs.Categories.from_flat(flat))


@specs.kind("hvae", model="vaecli.models.vae:HVAE")
@dataclass
class HVAESpec(specs.ModelSpec):
    kind: str = "hvae"
    posterior: specs.Posterior = field(default_factory=specs.Posterior)  # q(z1|x): the diagonal Gaussian
    latent_dim2: int = 50  # the top stochastic layer
    hidden2: List[int] = field(default_factory=lambda: [100, 100])  # z1 <-> z2 networks

    def __post_init__(self):
        super().__post_init__()
        self.hidden2 = [int(h) for h in self.hidden2]

    @classmethod
    def from_flat(cls, common: dict, flat: dict) -> "HVAESpec":
        return cls(**common, posterior=specs.Posterior(delta=flat["delta"]), latent_dim2=flat["latent_dim2"],
                   hidden2=list(flat["hidden2"]))


@member("model", "mlp")
@dataclass
class MLP(FlatVAE):
    """Fully connected encoder and decoder: 784-400-20 on MNIST (Kingma & Welling 2013)."""


@member("model", "conv")
@dataclass
class Conv(FlatVAE):
    """Stride-2 convolution stages."""


@member("model", "resnet")
@dataclass
class ResNet(FlatVAE):
    """Residual stages with GroupNorm."""


@member("model", "ae")
@dataclass
class AE(NetworkNodes, NetworkKey, ModelCard):
    """The deterministic autoencoder: no posterior, no KL (the baseline)."""

    def check(self, run, need: Need) -> None:
        super().check(run, need)
        self.check_network(need)
        self.check_networks(need)
        need(run.kl.free_bits == 0, "model=ae has no KL term; drop kl.free_bits")

    def provides(self, run) -> set[str]:
        return super().provides(run) | {"code"}

    def model_spec(self, common: dict, posterior, delta: float) -> specs.ModelSpec:
        return AESpec(**common)

    def lacks(self, run) -> dict[str, str]:
        objective = (f"model=ae has no posterior to importance-sample or KL to shape; use objective=elbo or wae "
                     f"(got objective={run.objective.name})")
        return {"chosen_prior": "model=ae has no KL term, so a prior is not trained; use prior=normal",
                "importance_sampling": objective, "gaussian_code": objective}


@member("model", "hvae")
@dataclass
class HVAE(NetworkKey, ModelCard):
    """Two stochastic layers x <-> z1 <-> z2 (Burda et al. 2015)."""

    latent_dim2: int = MISSING  # z2
    hidden2: List[int] = MISSING  # the z1 <-> z2 MLPs

    def check(self, run, need: Need) -> None:
        super().check(run, need)
        self.check_network(need)
        need(self.latent_dim2 >= 1, f"model.latent_dim2 must be >= 1 (got {self.latent_dim2})")
        need(len(self.hidden2) >= 1 and all(h >= 1 for h in self.hidden2),
             f"model.hidden2 must list positive widths, e.g. [50,50] (got {self.hidden2})")

    def provides(self, run) -> set[str]:
        return super().provides(run) | {"importance_sampling"}

    def model_spec(self, common: dict, posterior, delta: float) -> specs.ModelSpec:
        return HVAESpec(**common, posterior=specs.Posterior(delta=delta), latent_dim2=self.latent_dim2,
                        hidden2=list(self.hidden2))

    def lacks(self, run) -> dict[str, str]:
        return {"chosen_prior": "model=hvae uses a N(0, I) prior on its top layer z2; use prior=normal"}
