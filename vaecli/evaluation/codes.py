"""Latents for downstream models (vae encode / decode / export): each image's posterior mean or a
draw of q(z|x), in the model's latent shape ((z_channels, H/f, W/f) for model=autoencoder_kl, (D,)
for the flat models), and the scaling factor that gives them unit variance (latent diffusion's
1 / std, Rombach et al. 2022, computed on the training set)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

LATENTS = "latents"  # the tensor's name in a latents file


def latent_shape(model) -> tuple[int, ...]:
    return tuple(getattr(model, "latent_shape", (model.latent_dim,)))


@torch.no_grad()
def encode(model, images: Tensor, mode: str = "mean", batch_size: int = 100, y: Tensor | None = None,
           generator: torch.Generator | None = None, on_batch: Callable[[int], None] | None = None) -> Tensor:
    """Latents (N, *latent_shape) of images (N, C, H, W) in [0, 1] (uint8 are scaled): the posterior
    means, or (mode "sample") one draw each from `generator`."""
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(model.device)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        q = model.encode(x, None if y is None else y[start:start + batch_size].to(model.device))
        if mode == "sample":
            mean, std = q.mean, q.stddev
            z = mean + std * torch.randn(mean.shape, generator=generator, device=mean.device)
        else:
            z = q.mean
        out.append(z.float().cpu().reshape(len(x), *latent_shape(model)))
        if on_batch is not None:
            on_batch(len(x))
    return torch.cat(out)


def scaling_factor(latents: Tensor) -> float:
    """1 / std of every latent value (latent diffusion's scale_factor: diffusion then sees unit variance)."""
    return float(1.0 / latents.float().flatten().std().clamp(min=1e-12))


@torch.no_grad()
def decode(model, latents: Tensor, batch_size: int = 100, y: Tensor | None = None,
           on_batch: Callable[[int], None] | None = None) -> Tensor:
    """Images (N, C, H, W) in [0, 1]: the decoder's pictures of latents (N, *latent_shape)."""
    out = []
    for start in range(0, len(latents), batch_size):
        z = latents[start:start + batch_size].to(model.device).float().reshape(-1, model.latent_dim)
        out.append(model.decode_images(z, None if y is None else y[start:start + batch_size]).cpu())
        if on_batch is not None:
            on_batch(len(z))
    return torch.cat(out)
