"""MNIST, Fashion-MNIST and CIFAR-10 through torchvision's own loaders (download=True).

torchvision verifies and extracts archives already under the root, so these work offline when
the files are there; when they are not and there is no network, the error says where to put them.
"""

from __future__ import annotations

import contextlib
import sys

import numpy as np
import torch

from ..config import DatasetConfig, data_root
from ..errors import VaeError
from . import ImageSet

# name -> (torchvision class, folder under root that holds the archives, what to put there)
SOURCES = {
    "mnist": ("MNIST", "MNIST/raw", "the four MNIST .gz files"),
    "binarized_mnist": ("MNIST", "MNIST/raw", "the four MNIST .gz files"),
    "fashion_mnist": ("FashionMNIST", "FashionMNIST/raw", "the four Fashion-MNIST .gz files"),
    "cifar10": ("CIFAR10", "", "cifar-10-python.tar.gz"),
}


def load(cfg: DatasetConfig, split: str) -> ImageSet:
    import torchvision.datasets as tvd

    cls_name, folder, what = SOURCES[cfg.name]
    root = data_root(cfg)
    try:
        root.mkdir(parents=True, exist_ok=True)
        # torchvision reports download attempts on stdout; keep stdout for --json.
        with contextlib.redirect_stdout(sys.stderr):
            dataset = getattr(tvd, cls_name)(str(root), train=(split == "train"), download=True)
    except Exception as e:  # URLError, RuntimeError("Error downloading ..."), md5 mismatch
        where = root / folder if folder else root
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise VaeError(
            f"{cls_name} not found under {root} and the download failed (no network?): "
            f"put {what} in {where}, or try dataset=shapes ({detail})"
        ) from None
    images = torch.as_tensor(np.asarray(dataset.data))
    if images.ndim == 3:  # (N, H, W) grey
        images = images.unsqueeze(1)
    else:  # CIFAR: (N, H, W, C)
        images = images.permute(0, 3, 1, 2)
    labels = torch.as_tensor(np.asarray(dataset.targets), dtype=torch.int64)
    return ImageSet(images.contiguous(), labels, num_classes=len(dataset.classes))
