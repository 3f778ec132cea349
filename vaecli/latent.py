"""Paths through latent space."""

from __future__ import annotations

import torch
from torch import Tensor


def lerp(a: Tensor, b: Tensor, steps: int) -> Tensor:
    """steps points on the segment a -> b, endpoints included: (steps, *a.shape)."""
    t = torch.linspace(0, 1, steps, device=a.device, dtype=a.dtype).view(-1, *([1] * a.dim()))
    return (1 - t) * a + t * b


def slerp(a: Tensor, b: Tensor, steps: int) -> Tensor:
    """Spherical interpolation (Shoemake 1985), endpoints included.

    Under a N(0, I) prior most mass lies near a sphere of radius sqrt(d); the straight line
    between two typical latents cuts through the low-norm interior, the great circle does not
    (White 2016, "Sampling Generative Networks"). Radii are interpolated linearly.
    """
    t = torch.linspace(0, 1, steps, device=a.device, dtype=a.dtype).view(-1, *([1] * a.dim()))
    na, nb = a.norm(), b.norm()
    if na < 1e-8 or nb < 1e-8:
        return lerp(a, b, steps)
    cos = torch.clamp((a / na * b / nb).sum(), -1.0, 1.0)
    omega = torch.arccos(cos)
    if omega.abs() < 1e-4:  # (nearly) parallel: the great circle degenerates to the line
        return lerp(a, b, steps)
    direction = (torch.sin((1 - t) * omega) * a / na + torch.sin(t * omega) * b / nb) / torch.sin(omega)
    return direction * ((1 - t) * na + t * nb)


def traversal(center: Tensor, dims: list[int], span: float, steps: int) -> Tensor:
    """One row per dimension d in `dims`: `center` with z_d swept over center_d +- span.
    Returns (len(dims) * steps, latent_dim), row-major."""
    offsets = torch.linspace(-span, span, steps, device=center.device, dtype=center.dtype)
    rows = []
    for d in dims:
        row = center.expand(steps, -1).clone()
        row[:, d] = center[d] + offsets
        rows.append(row)
    return torch.cat(rows)
