"""What rebuilds a model: a spec per model kind, nesting the chosen members' parts (its body,
likelihood, prior, posterior, decoder, quantizer ...), stored as JSON in model.safetensors'
metadata. Torch-free.

Each kind has its own spec class with the fields it reads; the parts are small dataclasses shared
by the kinds that have them. `from_json` reads a stored spec: a nested one (written since the
one-home-per-family redesign) or the flat VAESpec bag of earlier releases, which `from_flat`
converts (the one converter at the edge: `from_flat` reads the common fields, the kind's spec
class its own; tests use it as a shorthand too). The kinds' spec classes sit beside their cards
(`VQVAESpec` in vqvae_config.py), registered with `@kind(name, model="module:Class")`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, ClassVar


@dataclass
class Body:
    """The networks that touch pixels: vaecli's (arch, hidden, activation, norm) or the user's own."""

    arch: str = "mlp"  # mlp | conv | resnet
    hidden: list[int] = field(default_factory=lambda: [400])
    activation: str = "relu"
    norm: str = "group"  # resnet: GroupNorm before each activation; "none" for checkpoints from before 2026-12-03
    networks: dict | None = None  # the user's own bodies: {"encoder"|"decoder": {"_target_": ..., kwargs}} (networks.py)

    def __post_init__(self):
        self.hidden = [int(h) for h in self.hidden]


@dataclass
class Likelihood:
    name: str = "bernoulli"
    sigma: float | None = None  # gaussian: fixed sigma; gaussian_learned: initial sigma
    per_pixel: bool = False  # gaussian_learned: one sigma per pixel instead of one in all
    mixtures: int = 1  # logistic: mixture components per pixel
    tanh_means: bool = False  # logistic: checkpoints from before 2026-12-02 squashed the means by tanh


@dataclass
class Prior:
    name: str = "normal"  # normal | mog | vamp
    components: int = 10  # mog: Gaussians; vamp: pseudo-inputs


@dataclass
class Posterior:
    name: str = "gaussian"  # q(z|x): gaussian, or a flow on it: iaf | planar (posteriors.py)
    flows: int = 0  # iaf, planar: steps
    hidden: int = 0  # iaf: width of each step's MADE and of the encoder's context
    delta: float = 0.0  # kl.delta: nats per dimension the Gaussian posterior's KL cannot fall below (0: off)

    @classmethod
    def from_flat(cls, f: dict) -> "Posterior":
        return cls(f["posterior"], f["flows"], f["flow_hidden"], f["delta"])


@dataclass
class Decoder:
    name: str = "factorized"  # factorized per pixel, pixelcnn or linear_ar (each pixel given those before it)
    layers: int = 5  # pixelcnn: gated layers
    kernel: int = 5  # pixelcnn: mask size
    channels: int = 32  # pixelcnn: channels of each layer

    @classmethod
    def from_flat(cls, f: dict) -> "Decoder":
        return cls(f["decoder"], f["ar_layers"], f["ar_kernel"], f["ar_channels"])


@dataclass
class Data:
    """The data as stored, which decides what log p(x|z) is of (bounds.py)."""

    levels: int = 256  # values per pixel: 2 binarized, 256 8-bit
    dequantize: bool = False  # the model sees (k + u) / levels


@dataclass
class Quantizer:
    codebook_size: int = 512  # K codes
    code_dim: int = 64  # D, the size of each code vector
    commitment: float = 0.25  # beta of the commitment loss
    ema_decay: float = 0.99  # codebook EMA decay; 0 = learn the codes by the codebook loss
    dead_after: int = 100  # revive a code unused for this many training steps (0: never)
    kmeans_init: bool = False  # initialise the codebook by k-means on the first batch

    @classmethod
    def from_flat(cls, f: dict) -> "Quantizer":
        return cls(*(f[k] for k in ("codebook_size", "code_dim", "commitment", "ema_decay", "dead_after", "kmeans_init")))


@dataclass
class Categories:
    categories: int = 10  # K classes for each of the latent_dim variables
    temperature: float = 1.0  # the Gumbel-softmax temperature at the start ...
    temperature_min: float = 0.5  # ... annealed down to this ...
    anneal_rate: float = 0.0  # ... as tau_0 exp(-rate * training passes)

    @classmethod
    def from_flat(cls, f: dict) -> "Categories":
        return cls(f["categories"], f["temperature"], f["temperature_min"], f["anneal_rate"])


PARTS = {"body": Body, "likelihood": Likelihood, "prior": Prior, "posterior": Posterior, "decoder": Decoder,
         "data": Data, "quantizer": Quantizer, "categorical": Categories}


@dataclass
class ModelSpec:
    """What every model kind has. A kind's spec class (registered with `kind`, beside its card)
    adds its own fields and parts, and reads the flat spec of earlier releases with a classmethod
    `from_flat(common, flat)` (tests/test_registry.py checks every registered kind has one)."""

    model_class: ClassVar[str] = ""  # "package.module:Class" (set by `kind`)
    kind: str = "vae"
    image_shape: tuple[int, int, int] = (1, 28, 28)  # (C, H, W)
    latent_dim: int = 20
    num_classes: int | None = None  # set: a conditional model on the class label
    body: Body = field(default_factory=Body)
    likelihood: Likelihood = field(default_factory=Likelihood)
    prior: Prior = field(default_factory=Prior)
    data: Data = field(default_factory=Data)

    def __post_init__(self):
        self.image_shape = tuple(int(s) for s in self.image_shape)
        for name, part in PARTS.items():  # parts given as dicts (JSON) become their dataclasses
            value = getattr(self, name, None)
            if isinstance(value, dict):
                setattr(self, name, part(**value))

    def to_json(self) -> dict:
        return asdict(self)


SPECS: dict[str, type[ModelSpec]] = {}  # kind -> its spec class (registered by `kind`)


def kind(name: str, model: str) -> Callable[[type[ModelSpec]], type[ModelSpec]]:
    """Class decorator: the spec class of model kind `name`, whose model class is `model`
    ("package.module:Class", imported when a model is built, so specs stay torch-free)."""

    def register(cls: type[ModelSpec]) -> type[ModelSpec]:
        cls.model_class = model
        SPECS[name] = cls
        return cls

    return register


def spec_class(name: str) -> type[ModelSpec]:
    from .. import registry

    registry.load()  # the card modules define (and register) the kinds' spec classes
    if name not in SPECS:
        raise ValueError(f"unknown model kind {name!r}")
    return SPECS[name]


def from_json(stored: dict) -> ModelSpec:
    """A stored spec: nested (has "body"), or the flat bag of earlier releases."""
    if "body" not in stored:
        return from_flat(**stored)
    kind = stored.get("kind", "vae")
    cls = spec_class(kind)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(stored) - known)
    if unknown:
        raise ValueError(f"model kind {kind!r} has no {', '.join(unknown)}")
    return cls(**stored)


# The flat VAESpec of earlier releases: its fields and defaults, and where each went.
FLAT_DEFAULTS: dict[str, Any] = dict(
    latent_dim=20, hidden=[400], likelihood="bernoulli", sigma=None, prior="normal", kind="vae", activation="relu",
    num_classes=None, per_pixel=False, mixtures=1, prior_components=10, latent_dim2=50, hidden2=[100, 100],
    codebook_size=512, code_dim=64, commitment=0.25, ema_decay=0.99, dead_after=100, kmeans_init=False, groups=1,
    levels=256, dequantize=False, posterior="gaussian", flows=0, flow_hidden=0, decoder="factorized", ar_layers=5,
    ar_kernel=5, ar_channels=32, delta=0.0, categories=0, temperature=1.0, temperature_min=0.5, anneal_rate=0.0,
    logistic_tanh_means=False, norm="group", networks=None)


def from_flat(arch: str, image_shape: tuple[int, int, int], **flat: Any) -> ModelSpec:
    """The spec that a flat VAESpec of earlier releases describes (the same model, the same weights)."""
    unknown = sorted(set(flat) - set(FLAT_DEFAULTS))
    if unknown:
        raise TypeError(f"a flat model spec has no field {unknown[0]!r}")
    f = {**FLAT_DEFAULTS, **flat}
    common = dict(
        kind=f["kind"], image_shape=image_shape, latent_dim=f["latent_dim"], num_classes=f["num_classes"],
        body=Body(arch, list(f["hidden"]), f["activation"], f["norm"], f["networks"]),
        likelihood=Likelihood(f["likelihood"], f["sigma"], f["per_pixel"], f["mixtures"], f["logistic_tanh_means"]),
        prior=Prior(f["prior"], f["prior_components"]),
        data=Data(f["levels"], f["dequantize"]))
    return spec_class(f["kind"]).from_flat(common, f)
