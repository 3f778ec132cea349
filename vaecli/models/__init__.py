"""Models: `build(spec)` turns a VAESpec into a VAE; `spec_from_config` makes the spec."""

from __future__ import annotations

from .vae import VAE, VAESpec

__all__ = ["VAE", "VAESpec", "build", "spec_from_config"]


def build(spec: VAESpec) -> VAE:
    return VAE(spec)


def spec_from_config(model_cfg, likelihood_cfg, image_shape: tuple[int, int, int]) -> VAESpec:
    """The model part of a run config (model.*, likelihood.*) plus the data's image shape."""
    return VAESpec(
        arch=model_cfg.name,
        image_shape=image_shape,
        latent_dim=model_cfg.latent_dim,
        hidden=list(model_cfg.hidden),
        likelihood=likelihood_cfg.name,
        sigma=likelihood_cfg.sigma,
    )
