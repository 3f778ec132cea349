"""MNIST, Fashion-MNIST, Kuzushiji-MNIST, CIFAR-10, SVHN, Omniglot and CelebA through
torchvision's own loaders (download=True).

torchvision verifies and extracts archives already under the root, so these work offline when
the files are there; when they are not and there is no network, the error names the files and
the folder to put them in. Omniglot (105 x 105 strokes on white) and CelebA (178 x 218 photos)
are converted once to the literature's settings (Omniglot: inverted, 28 x 28, binarized like
binarized_mnist; CelebA: 148 x 148 centre crop, 64 x 64) and the result is cached beside the
archives (`vaecli-<name>-<split>-<size>.npz`), since decoding every file takes minutes.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_write
from ..config import DatasetConfig, data_root
from ..errors import VaeError
from . import ImageSet


@dataclass(frozen=True)
class Source:
    cls: str  # torchvision.datasets class
    folder: str  # under the root: where the files go
    what: str  # the files a user puts there when the download fails
    split_arg: str = "train"  # how the class takes the split: train=bool, split=str, background=bool
    converted: bool = False  # decoded image by image (and cached), not read as one array


_MNIST_FILES = "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz"
_CELEBA_FILES = ("img_align_celeba/ (unzipped img_align_celeba.zip), list_eval_partition.txt, list_attr_celeba.txt, "
                 "identity_CelebA.txt, list_bbox_celeba.txt, list_landmarks_align_celeba.txt")
SOURCES = {
    "mnist": Source("MNIST", "MNIST/raw", f"the four MNIST files ({_MNIST_FILES})"),
    "binarized_mnist": Source("MNIST", "MNIST/raw", f"the four MNIST files ({_MNIST_FILES})"),
    "fashion_mnist": Source("FashionMNIST", "FashionMNIST/raw", f"the four Fashion-MNIST files ({_MNIST_FILES})"),
    "kmnist": Source("KMNIST", "KMNIST/raw", f"the four Kuzushiji-MNIST files ({_MNIST_FILES})"),
    "cifar10": Source("CIFAR10", "", "cifar-10-python.tar.gz"),
    "svhn": Source("SVHN", "", "train_32x32.mat and test_32x32.mat", split_arg="split"),
    "omniglot": Source("Omniglot", "omniglot-py", "images_background.zip and images_evaluation.zip",
                       split_arg="background", converted=True),
    # Google Drive's quotas make CelebA's automatic download fail often, upstream's known problem.
    "celeba": Source("CelebA", "celeba", _CELEBA_FILES + " (from the CelebA site's Google Drive or a mirror)",
                     split_arg="split", converted=True),
}


def load(cfg: DatasetConfig, split: str) -> ImageSet:
    source = SOURCES[cfg.name]
    root = data_root(cfg)
    if source.converted:
        cached = _cache_path(root, source, cfg, split)
        if cached.is_file():
            with np.load(cached, allow_pickle=False) as saved:
                return _image_set(saved["images"], saved["labels"] if "labels" in saved else None)
    dataset = _open(source, root, split)
    if source.converted:
        images, labels = _convert(dataset, cfg)
        _write_cache(_cache_path(root, source, cfg, split), images, labels)
        return _image_set(images, labels)
    images = np.asarray(dataset.data)
    if images.ndim == 3:  # (N, H, W) grey
        images = images[:, None]
    elif images.shape[-1] == 3:  # CIFAR: (N, H, W, C); SVHN is (N, C, H, W) already
        images = images.transpose(0, 3, 1, 2)
    labels = np.asarray(getattr(dataset, "targets", None) if hasattr(dataset, "targets") else dataset.labels)
    return _image_set(images, labels, num_classes=len(dataset.classes) if hasattr(dataset, "classes") else 10)


def _open(source: Source, root: Path, split: str):
    import torchvision.datasets as tvd

    kwargs = {"train": {"train": split == "train"}, "split": {"split": split},
              "background": {"background": split == "train"}}[source.split_arg]
    if source.cls == "CelebA":
        kwargs["target_type"] = []  # images only
    try:
        root.mkdir(parents=True, exist_ok=True)
        # torchvision reports download attempts on stdout; keep stdout for --json.
        with contextlib.redirect_stdout(sys.stderr):
            return getattr(tvd, source.cls)(str(root), download=True, **kwargs)
    except Exception as e:  # URLError, RuntimeError("Error downloading ..."), md5 mismatch, a Drive quota page
        where = root / source.folder if source.folder else root
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise VaeError(f"{source.cls} not found under {root} and the download failed (no network?): put "
                       f"{source.what} in {where}, or try dataset=shapes ({detail})") from None


def _convert(dataset, cfg: DatasetConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """Omniglot: strokes as ink (inverted), resized to image_size. CelebA: the face's 148 x 148
    centre crop, resized to image_size (the usual VAE setting, e.g. 64 x 64)."""
    import torchvision.transforms.functional as TF
    from PIL import ImageOps

    size = cfg.image_size
    images, labels = [], []
    for i in range(len(dataset)):
        image, target = dataset[i]
        if cfg.name == "omniglot":  # no labels kept: the two splits hold different characters
            image = TF.resize(ImageOps.invert(image.convert("L")), [size, size], antialias=True)
        else:
            image = TF.resize(TF.center_crop(image.convert("RGB"), [148, 148]), [size, size], antialias=True)
        images.append(np.asarray(image, dtype=np.uint8))
    stacked = np.stack(images)
    stacked = stacked[:, None] if stacked.ndim == 3 else stacked.transpose(0, 3, 1, 2)
    return stacked, (np.asarray(labels, dtype=np.int64) if labels else None)


def _cache_path(root: Path, source: Source, cfg: DatasetConfig, split: str) -> Path:
    return root / source.folder / f"vaecli-{cfg.name}-{split}-{cfg.image_size}.npz"


def _write_cache(path: Path, images: np.ndarray, labels: np.ndarray | None) -> None:
    arrays = {"images": images} if labels is None else {"images": images, "labels": labels}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    try:
        atomic_write(path, write)
    except OSError:  # a read-only data folder: decode again next time
        pass


def _image_set(images: np.ndarray, labels: np.ndarray | None, num_classes: int | None = None) -> ImageSet:
    tensor = torch.as_tensor(np.ascontiguousarray(images))
    if labels is None:
        return ImageSet(tensor)
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    return ImageSet(tensor, labels_t, num_classes=num_classes or int(labels_t.max()) + 1)
