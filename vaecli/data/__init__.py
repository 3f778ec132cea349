"""Datasets as in-memory uint8 image tensors: `build(cfg, split, seed)` -> ImageSet.

Everything here fits in memory (MNIST, Fashion-MNIST, CIFAR-10, shapes, a folder of images
resized once), so a batch is an index slice of one tensor, not a per-item PIL pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..config import DatasetConfig
from ..errors import UsageError

SPLITS = ("train", "test")


@dataclass
class ImageSet:
    """images: uint8 (N, C, H, W); labels: int64 (N,) or None; factors: int64 (N, F) or None.

    `binarize="dynamic"` redraws each pixel as Bernoulli(intensity) every time a batch is made.
    """

    images: Tensor
    labels: Tensor | None = None
    num_classes: int | None = None
    binarize: str | None = None
    factors: Tensor | None = None
    factor_names: list[str] = field(default_factory=list)
    name: str = ""

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def to_float(self, batch: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """uint8 (B, C, H, W) on any device -> float in [0, 1] (binary when dynamic)."""
        x = batch.float().div_(255.0)
        if self.binarize == "dynamic":
            x = torch.bernoulli(x, generator=generator)
        return x

    @staticmethod
    def concat(parts: list["ImageSet"]) -> "ImageSet":
        """The images of `parts` (same dataset, e.g. its train and test splits) as one set."""
        first = parts[0]

        def cat(name):
            values = [getattr(p, name) for p in parts]
            return None if any(v is None for v in values) else torch.cat(values)

        return ImageSet(cat("images"), cat("labels"), first.num_classes, first.binarize, cat("factors"),
                        first.factor_names, first.name)

    def head(self, n: int | None) -> "ImageSet":
        """The first n images (all when n is None)."""
        if n is None or n >= len(self):
            return self
        cut = slice(0, n)
        return ImageSet(self.images[cut], None if self.labels is None else self.labels[cut],
                        self.num_classes, self.binarize,
                        None if self.factors is None else self.factors[cut], self.factor_names,
                        self.name)


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
    elif cfg.name == "folder":
        from .folder import load

        data = load(cfg, split, seed, num_workers)
    else:
        raise UsageError(f"unknown dataset {cfg.name!r}")
    data.name = cfg.name
    return data.head(cfg.limit) if split == "train" else data
