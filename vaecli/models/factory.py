"""`build(spec)` turns a VAESpec into a model; `from_config` makes the spec from the typed config
(the chosen members' cards) and what the data fixes (image shape, classes) and builds it."""

from __future__ import annotations

from .. import bounds
from .vae import AE, HVAE, KINDS, VAE, LatentModel, PointMass, VAESpec
from .categorical import CategoricalVAE
from .ladder import Ladder
from .vqvae import VQVAE


def build(spec: VAESpec) -> LatentModel:
    if spec.kind not in KINDS:
        raise ValueError(f"unknown model kind {spec.kind!r}")
    return {"vae": VAE, "ae": AE, "hvae": HVAE, "vqvae": VQVAE, "ladder": Ladder,
            "categorical": CategoricalVAE}[spec.kind](spec)


def spec_from_config(model_cfg, likelihood_cfg, prior_cfg, image_shape: tuple[int, int, int],
                     num_classes: int | None = None, dataset_cfg=None, posterior_cfg=None, kl_cfg=None) -> VAESpec:
    """The model part of a run config (model.*, likelihood.*, prior.*) plus what the data fixes:
    the image shape, for a conditional model the number of classes, and how the data is stored
    and fed (dataset.binarize: 2 levels, else 256; dataset.dequantize), and the posterior family
    (posterior.*). Keys the chosen options
    leave unset (None) keep VAESpec's recorded values; config.validate has made sure that every
    key a model uses is set."""
    def key(card, name):  # a key the chosen member does not have is None ("not used by this choice")
        return getattr(card, name, None) if card is not None else None

    m = model_cfg
    kind = m.name if m.name in ("ae", "hvae", "vqvae", "ladder") else "vae"
    if kind == "vae" and key(m, "latent") == "categorical":
        kind = "categorical"
    fields = dict(
        arch=model_cfg.network if kind not in ("vae", "categorical") else model_cfg.name,
        image_shape=image_shape,
        latent_dim=model_cfg.latent_dim,
        hidden=list(model_cfg.hidden),
        likelihood=likelihood_cfg.name,
        sigma=key(likelihood_cfg, "sigma"),
        prior=prior_cfg.name,
        kind=kind,
        activation=model_cfg.activation,
        num_classes=num_classes if model_cfg.conditional else None,
        per_pixel=bool(key(likelihood_cfg, "per_pixel")),
        mixtures=key(likelihood_cfg, "mixtures"),
        prior_components=key(prior_cfg, "components"),
        latent_dim2=key(m, "latent_dim2"),
        hidden2=None if key(m, "hidden2") is None else list(m.hidden2),
        codebook_size=key(m, "codebook_size"),
        code_dim=key(m, "code_dim"),
        commitment=key(m, "commitment"),
        ema_decay=key(m, "ema_decay"),
        dead_after=key(m, "dead_after"),
        kmeans_init=key(m, "kmeans_init"),
        groups=key(m, "groups"),
        decoder=key(m, "decoder"),
        ar_layers=key(m, "ar_layers"),
        ar_kernel=key(m, "ar_kernel"),
        ar_channels=key(m, "ar_channels"),
        categories=key(m, "categories"),
        temperature=key(m, "temperature"),
        temperature_min=key(m, "temperature_min"),
        anneal_rate=key(m, "anneal_rate"),
        posterior=posterior_cfg.name if posterior_cfg is not None else "gaussian",
        flows=key(posterior_cfg, "flows") or 0,
        flow_hidden=key(posterior_cfg, "hidden") or 0,
        delta=kl_cfg.delta if kl_cfg is not None else 0.0,
        levels=bounds.levels(dataset_cfg.binarize) if dataset_cfg is not None else 256,
        dequantize=bool(dataset_cfg.dequantize) if dataset_cfg is not None else False,
        networks=m.networks() if hasattr(m, "networks") else None,
    )
    optional = ("mixtures", "prior_components", "latent_dim2", "hidden2", "codebook_size", "code_dim", "commitment",
                "ema_decay", "dead_after", "kmeans_init", "groups", "decoder", "ar_layers", "ar_kernel", "ar_channels", "categories", "temperature", "temperature_min",
                "anneal_rate")
    return VAESpec(**{k: v for k, v in fields.items() if v is not None or k not in optional})


def from_config(cfg, image_shape: tuple[int, int, int], num_classes: int | None) -> VAE:
    """The model of a run config (config.Config) for data of `image_shape` with `num_classes`."""
    from ..errors import UsageError

    if cfg.model.conditional and num_classes is None:
        raise UsageError(f"model.conditional=true needs class labels, and dataset={cfg.dataset.name} has none")
    spec = spec_from_config(cfg.model, cfg.likelihood, cfg.prior, image_shape, num_classes, cfg.dataset, cfg.posterior,
                            cfg.kl)
    try:
        return build(spec)
    except ValueError as e:  # e.g. too many conv stages for the image size
        raise UsageError(f"cannot build model={cfg.model.name} for {spec.image_shape} images: {e}") from None
