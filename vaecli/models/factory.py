"""`build(spec)` turns a model spec into a model; `from_config` makes the spec from the typed config
(the chosen members' cards) and what the data fixes (image shape, classes) and builds it."""

from __future__ import annotations

import importlib

from .. import bounds
from . import spec as specs
from .spec import ModelSpec
from .vae import VAE, LatentModel


def build(spec: ModelSpec) -> LatentModel:
    """The model a spec describes: its kind's model class (named by the spec class, `spec.kind`)."""
    module, _, name = type(spec).model_class.partition(":")
    if not module:
        raise ValueError(f"model kind {spec.kind!r} names no model class")
    return getattr(importlib.import_module(module), name)(spec)


def spec_from_config(model_cfg, likelihood_cfg, prior_cfg, image_shape: tuple[int, int, int],
                     num_classes: int | None = None, dataset_cfg=None, posterior_cfg=None, kl_cfg=None) -> ModelSpec:
    """The model spec of a run config's chosen members (model.*, likelihood.*, prior.*, posterior.*,
    kl.delta) plus what the data fixes: the image shape, for a conditional model the number of
    classes, and how the data is stored and fed (dataset.binarize: 2 levels, else 256;
    dataset.dequantize). The model's card makes its own part (`model_spec`)."""
    def key(card, name, default=None):  # a key the chosen member does not have: the part's default
        value = getattr(card, name, None) if card is not None else None
        return default if value is None else value

    common = dict(
        image_shape=image_shape, latent_dim=model_cfg.latent_dim,
        num_classes=num_classes if model_cfg.conditional else None, body=model_cfg.body(),
        likelihood=specs.Likelihood(likelihood_cfg.name, key(likelihood_cfg, "sigma"),
                                    bool(key(likelihood_cfg, "per_pixel", False)), key(likelihood_cfg, "mixtures", 1)),
        prior=specs.Prior(prior_cfg.name, key(prior_cfg, "components", 10)),
        data=specs.Data(bounds.levels(dataset_cfg.binarize) if dataset_cfg is not None else 256,
                        bool(dataset_cfg.dequantize) if dataset_cfg is not None else False))
    posterior = posterior_cfg if posterior_cfg is not None else specs.Posterior()
    return model_cfg.model_spec(common, posterior, kl_cfg.delta if kl_cfg is not None else 0.0)


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
