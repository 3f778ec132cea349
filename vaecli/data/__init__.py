"""Datasets as in-memory uint8 image tensors: `build(cfg, split, seed)` -> ImageSet.

Everything here fits in memory (MNIST, Fashion-MNIST, CIFAR-10, shapes, a folder of images
resized once), so a batch is an index slice of one tensor, not a per-item PIL pipeline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .. import bounds
from ..config import DatasetConfig
from ..errors import UsageError

SPLITS = ("train", "test")


@dataclass
class ImageSet:
    """images: uint8 (N, C, H, W); labels: int64 (N,) or None; factors: int64 (N, F) or None.

    `binarize="dynamic"` redraws each pixel as Bernoulli(intensity) every time a batch is made.
    `levels` is how many values a pixel takes as stored (2 for binarized sets, else 256) and
    `dequantize` feeds the model (k + u) / levels instead of the level k (bounds.py says why).
    """

    images: Tensor
    labels: Tensor | None = None
    num_classes: int | None = None
    binarize: str | None = None
    factors: Tensor | None = None
    factor_names: list[str] = field(default_factory=list)
    name: str = ""
    levels: int = 256
    dequantize: bool = False

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def to_float(self, batch: Tensor, generator: torch.Generator | None = None, first: int | None = None) -> Tensor:
        """uint8 (B, C, H, W) on any device -> float in [0, 1] (binary when dynamic). Dequantized:
        (k + u) / levels for the stored level k, with u ~ U[0, 1) drawn from `generator` (training),
        or, when `first` gives the batch's index in the set, a fixed function of each pixel's
        index (evaluation: the same noise whatever the batch size, so bounds repeat exactly)."""
        x = batch.float().div_(255.0)
        if self.binarize == "dynamic":
            x = torch.bernoulli(x, generator=generator)
        if self.dequantize:
            u = (fixed_uniform(first, x.shape, x.device) if first is not None
                 else torch.rand(x.shape, generator=generator, device=x.device))
            x = x.mul_(self.levels - 1).round_().add_(u).div_(self.levels)
        return x

    @staticmethod
    def concat(parts: list["ImageSet"]) -> "ImageSet":
        """The images of `parts` (same dataset, e.g. its train and test splits) as one set."""
        first = parts[0]

        def cat(name):
            values = [getattr(p, name) for p in parts]
            return None if any(v is None for v in values) else torch.cat(values)

        return ImageSet(cat("images"), cat("labels"), first.num_classes, first.binarize, cat("factors"),
                        first.factor_names, first.name, first.levels, first.dequantize)

    def head(self, n: int | None) -> "ImageSet":
        """The first n images (all when n is None)."""
        if n is None or n >= len(self):
            return self
        cut = slice(0, n)
        return ImageSet(self.images[cut], None if self.labels is None else self.labels[cut],
                        self.num_classes, self.binarize,
                        None if self.factors is None else self.factors[cut], self.factor_names,
                        self.name, self.levels, self.dequantize)


_M32 = 0xFFFFFFFF
DEQUANTIZE_SEED = 0x5EED  # one fixed noise for every evaluation, so all models meet the same test set


def _mul32(h: Tensor, c: int) -> Tensor:
    """(h * c) mod 2^32 for h < 2^32, in int64 without overflow (two 16-bit halves of c)."""
    return (h * (c & 0xFFFF) + (((h * (c >> 16)) & 0xFFFF) << 16)) & _M32


def _hash32(h: Tensor) -> Tensor:
    """lowbias32 (C. Wellons' integer hash): well-mixed 32-bit outputs for consecutive inputs."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x7FEB352D)
    h = h ^ (h >> 15)
    h = _mul32(h, 0x846CA68B)
    return h ^ (h >> 16)


def fixed_uniform(first: int, shape: torch.Size, device: torch.device) -> Tensor:
    """U[0, 1) values for the images first, first + 1, ... of a set, shape (B, C, H, W): a fixed
    function of each pixel's index in the set (24-bit resolution), the same on every device and
    for every batch size. The dequantization noise of evaluation."""
    per_image = math.prod(shape[1:])
    index = (torch.arange(shape[0], device=device, dtype=torch.int64) + first)[:, None] * per_image
    index = index + torch.arange(per_image, device=device, dtype=torch.int64)
    h = _hash32((index & _M32) ^ _hash32((index >> 32) ^ DEQUANTIZE_SEED))
    return (h >> 8).to(torch.float32).mul_(2.0 ** -24).reshape(shape)


def binarize_once(images: Tensor, seed: int) -> Tensor:
    """A fixed Bernoulli draw of uint8 intensities, stored as 0/255 (static binarization)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.bernoulli(images.float() / 255.0, generator=g) * 255).to(torch.uint8)


def build(cfg: DatasetConfig, split: str = "train", seed: int = 0, num_workers: int = 0) -> ImageSet:
    """Load `split` of the dataset named by cfg.name; dataset.limit applies to train only."""
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    from .torchvision_sets import SOURCES

    if cfg.name in SOURCES:
        from .torchvision_sets import load

        data = load(cfg, split)
        if cfg.binarize:  # binarized_mnist, omniglot
            # The test split is binarized once from the seed so evaluations repeat exactly.
            if split == "test" or cfg.binarize == "static":
                data.images = binarize_once(data.images, seed + (1 if split == "test" else 0))
            else:
                data.binarize = "dynamic"
    elif cfg.name == "shapes":
        from .shapes import load

        data = load(cfg, split, seed)
    elif cfg.name == "photos":
        from .photos import load

        data = load(cfg, split, seed)
    elif cfg.name == "folder":
        from .folder import load

        data = load(cfg, split, seed, num_workers)
    elif cfg.name in ("dsprites", "shapes3d"):
        from . import factor_sets

        data = (factor_sets.load_dsprites if cfg.name == "dsprites" else factor_sets.load_shapes3d)(cfg, split, seed)
    else:
        raise UsageError(f"unknown dataset {cfg.name!r}")
    data.name = cfg.name
    data.levels = bounds.levels(cfg.binarize)
    data.dequantize = bool(cfg.dequantize)
    return data.head(cfg.limit) if split == "train" else data
