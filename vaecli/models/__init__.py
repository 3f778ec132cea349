"""Models: `build(spec)` turns a VAESpec into a model; `spec_from_config` makes the spec."""

from __future__ import annotations

from .vae import AE, HVAE, KINDS, VAE, VAESpec, build

__all__ = ["AE", "HVAE", "KINDS", "VAE", "VAESpec", "build", "spec_from_config"]


def spec_from_config(model_cfg, likelihood_cfg, prior_cfg, image_shape: tuple[int, int, int],
                     num_classes: int | None = None) -> VAESpec:
    """The model part of a run config (model.*, likelihood.*, prior.*) plus what the data fixes:
    the image shape and, for a conditional model, the number of classes."""
    kind = model_cfg.name if model_cfg.name in ("ae", "hvae") else "vae"
    arch = model_cfg.network if kind != "vae" else model_cfg.name
    return VAESpec(
        arch=arch,
        image_shape=image_shape,
        latent_dim=model_cfg.latent_dim,
        hidden=list(model_cfg.hidden),
        likelihood=likelihood_cfg.name,
        sigma=likelihood_cfg.sigma,
        prior=prior_cfg.name,
        kind=kind,
        activation=model_cfg.activation,
        num_classes=num_classes if model_cfg.conditional else None,
        per_pixel=bool(likelihood_cfg.per_pixel),
        mixtures=likelihood_cfg.mixtures or 1,
        prior_components=prior_cfg.components or 10,
        latent_dim2=model_cfg.latent_dim2 or 50,
        hidden2=list(model_cfg.hidden2 or [100, 100]),
    )
