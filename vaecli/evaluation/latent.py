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

    Written as cos(t w) u_a + sin(t w) v, with v the unit direction of b's part orthogonal to
    a and w = atan2(sin, cos), instead of the textbook sin((1 - t) w) / sin w form, which divides
    by sin w ~ 0 for nearly opposite vectors. Exactly opposite ones have no single great circle:
    the path then turns through a fixed direction orthogonal to a (the axis a leans on least).
    """
    t = torch.linspace(0, 1, steps, device=a.device, dtype=a.dtype).view(-1, *([1] * a.dim()))
    na, nb = a.norm(), b.norm()
    if na < 1e-8 or nb < 1e-8 or a.numel() == 1:  # no direction, or no circle in one dimension
        return lerp(a, b, steps)
    ua, ub = a / na, b / nb
    cos = torch.clamp((ua * ub).sum(), -1.0, 1.0)
    ortho = ub - cos * ua  # its norm is sin(w)
    sin = ortho.norm()
    if sin < 1e-6:
        if cos > 0:  # parallel: the great circle degenerates to the line
            return lerp(a, b, steps)
        ortho, sin = _orthogonal_unit(ua), torch.zeros((), dtype=a.dtype, device=a.device)
    else:
        ortho = ortho / sin
    omega = torch.atan2(sin, cos)
    direction = torch.cos(t * omega) * ua + torch.sin(t * omega) * ortho
    return direction * ((1 - t) * na + t * nb)


def _orthogonal_unit(u: Tensor) -> Tensor:
    """A unit vector orthogonal to the unit vector u: the axis u has the smallest component on,
    with its u part removed (Gram-Schmidt)."""
    axis = torch.zeros_like(u).flatten()
    axis[u.abs().flatten().argmin()] = 1.0
    axis = axis.view_as(u)
    v = axis - (axis * u).sum() * u
    return v / v.norm()


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
