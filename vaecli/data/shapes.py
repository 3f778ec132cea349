"""shapes: procedurally rendered dSprites-like images (Matthey et al. 2017), fully offline.

Factors: shape (square, ellipse, heart) x scale x rotation x position x x position y, the
full grid rendered at image_size x image_size with 4x4 supersampling for soft edges. The shape
is the class label; the factor indices are kept for disentanglement metrics. A tenth of the
grid, chosen by `seed`, is the test split.
"""

from __future__ import annotations

import functools
import math

import torch

from ..config import DatasetConfig
from . import ImageSet

SHAPES = ("square", "ellipse", "heart")
FACTOR_NAMES = ["shape", "scale", "rotation", "pos_x", "pos_y"]
SUPERSAMPLE = 4


def _inside(shape: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Membership in the canonical shape (radius about 1) at local coordinates (u, v)."""
    if shape == 0:
        return (u.abs() <= 0.8) & (v.abs() <= 0.8)
    if shape == 1:
        return u.square() + (v / 0.55).square() <= 1.0
    # heart: (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0, y up, shifted to centre it on the origin
    x, y = u * 1.1, -v * 1.1 + 0.15
    return (x.square() + y.square() - 1).pow(3) - x.square() * y.pow(3) <= 0


@functools.lru_cache(maxsize=4)
def render(image_size: int = 32, scales: int = 4, rotations: int = 8,
           positions: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """All factor combinations: images uint8 (N, 1, S, S) and factors int64 (N, 5)."""
    grids = torch.meshgrid(torch.arange(len(SHAPES)), torch.arange(scales), torch.arange(rotations),
                           torch.arange(positions), torch.arange(positions), indexing="ij")
    factors = torch.stack([g.reshape(-1) for g in grids], dim=1)
    scale = 0.22 + 0.2 * (factors[:, 1] / max(scales - 1, 1))  # radius in image half-widths
    angle = 2 * math.pi * factors[:, 2] / rotations
    centre = torch.linspace(-0.5, 0.5, positions) if positions > 1 else torch.zeros(1)
    cx, cy = centre[factors[:, 3]], centre[factors[:, 4]]

    n_fine = image_size * SUPERSAMPLE
    axis = (torch.arange(n_fine) + 0.5) / n_fine * 2 - 1  # pixel centres in [-1, 1]
    py, px = torch.meshgrid(axis, axis, indexing="ij")
    images = torch.empty((len(factors), 1, image_size, image_size), dtype=torch.uint8)
    for start in range(0, len(factors), 256):
        sl = slice(start, start + 256)
        dx = px - cx[sl, None, None]
        dy = py - cy[sl, None, None]
        cos, sin = torch.cos(angle[sl])[:, None, None], torch.sin(angle[sl])[:, None, None]
        u = (cos * dx + sin * dy) / scale[sl, None, None]  # rotate by -angle, then unscale
        v = (-sin * dx + cos * dy) / scale[sl, None, None]
        mask = torch.zeros_like(u, dtype=torch.bool)
        for s in range(len(SHAPES)):
            rows = factors[sl, 0] == s
            if rows.any():
                mask[rows] = _inside(s, u[rows], v[rows])
        coverage = torch.nn.functional.avg_pool2d(mask.float().unsqueeze(1), SUPERSAMPLE)
        images[sl] = (coverage * 255).round().to(torch.uint8)
    return images, factors


def load(cfg: DatasetConfig, split: str, seed: int) -> ImageSet:
    images, factors = render(cfg.image_size or 32, cfg.scales or 4, cfg.rotations or 8,
                             cfg.positions or 8)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    n_test = max(1, len(images) // 10)
    index = order[:n_test] if split == "test" else order[n_test:]
    return ImageSet(images[index], factors[index, 0].clone(), num_classes=len(SHAPES),
                    factors=factors[index], factor_names=list(FACTOR_NAMES))
