"""The disentanglement benchmarks with ground-truth factors, read from the files their authors
publish (neither can be downloaded from vaecli: the error names the URL and the folder):

dSprites (Matthey et al. 2017): `dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz`, 737,280 binary
64 x 64 images of every combination of shape (3), scale (6), orientation (40), x (32) and y (32);
`imgs` (N, 64, 64) in {0, 1}, `latents_classes` (N, 6) the factor indices (colour, always 0, is
dropped as disentanglement_lib does). Binary as stored: 2 levels, so a Bernoulli's figures are
bounds (dataset.binarize=stored says so to every report).

3D Shapes (Burgess & Kim 2018): `3dshapes.h5`, 480,000 RGB 64 x 64 images of every combination of
floor hue (10), wall hue (10), object hue (10), scale (8), shape (4) and orientation (15);
`images` (N, 64, 64, 3) uint8, `labels` (N, 6) the factor values (read with h5py, the optional
extra `vaecli[shapes3d]`). 8-bit colour: its natural likelihood is the discretized logistic.

The factor indices are kept (disentanglement metrics); the shape is the class label. A tenth of the
images, chosen from `seed`, is the test split, as for `shapes`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import DatasetConfig, data_root
from ..errors import VaeError
from . import ImageSet

DSPRITES_FILE = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
DSPRITES_URL = f"https://github.com/google-deepmind/dsprites-dataset/raw/master/{DSPRITES_FILE}"
DSPRITES_FACTORS = ("shape", "scale", "orientation", "x", "y")
SHAPES3D_FILE = "3dshapes.h5"
SHAPES3D_URL = f"https://storage.googleapis.com/3d-shapes/{SHAPES3D_FILE}"
SHAPES3D_FACTORS = ("floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation")
CHUNK = 16_384  # images converted at a time (bounded extra memory)


def _file(cfg: DatasetConfig, name: str, url: str) -> Path:
    folder = data_root(cfg) / cfg.name
    path = folder / name
    if not path.is_file():
        raise VaeError(f"dataset={cfg.name} reads {name}, which is not in {folder}: download it from {url} "
                       f"into that folder (or set dataset.root / VAECLI_DATA to where it is)")
    return path


def _split(images: torch.Tensor, factors: torch.Tensor, label: int, names, split: str, seed: int) -> ImageSet:
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    n_test = max(1, len(images) // 10)
    index = (order[:n_test] if split == "test" else order[n_test:]).sort().values
    labels = factors[index, label].clone()
    return ImageSet(images[index], labels, num_classes=int(factors[:, label].max()) + 1,
                    factors=factors[index], factor_names=list(names))


def _unreadable(path: Path, e: Exception) -> VaeError:
    return VaeError(f"{path} is not the published file ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                    "download it again")


def load_dsprites(cfg: DatasetConfig, split: str, seed: int) -> ImageSet:
    path = _file(cfg, DSPRITES_FILE, DSPRITES_URL)
    try:
        with np.load(path, allow_pickle=False) as archive:  # `metadata` (a pickle) is never read
            imgs, classes = archive["imgs"], archive["latents_classes"]
    except (OSError, KeyError, ValueError) as e:
        raise _unreadable(path, e) from None
    if imgs.ndim != 3 or classes.shape != (len(imgs), 6):
        raise VaeError(f"{path}: expected imgs (N, H, W) and latents_classes (N, 6), found {imgs.shape} and "
                       f"{classes.shape}; download it again")
    images = torch.empty((len(imgs), 1, *imgs.shape[1:]), dtype=torch.uint8)
    for start in range(0, len(imgs), CHUNK):  # {0, 1} -> {0, 255}
        part = torch.from_numpy(np.ascontiguousarray(imgs[start:start + CHUNK]))
        images[start:start + CHUNK, 0] = (part != 0).to(torch.uint8) * 255
    factors = torch.as_tensor(classes[:, 1:], dtype=torch.int64)  # colour (one value) dropped
    return _split(images, factors, 0, DSPRITES_FACTORS, split, seed)


def load_shapes3d(cfg: DatasetConfig, split: str, seed: int) -> ImageSet:
    path = _file(cfg, SHAPES3D_FILE, SHAPES3D_URL)
    try:
        import h5py
    except ImportError:
        raise VaeError("dataset=shapes3d reads an HDF5 file, which needs h5py: pip install 'vaecli[shapes3d]'") from None
    try:
        with h5py.File(path, "r") as f:
            stored, values = f["images"], np.asarray(f["labels"])
            if stored.ndim != 4 or stored.shape[-1] != 3 or values.shape != (len(stored), 6):
                raise VaeError(f"{path}: expected images (N, H, W, 3) and labels (N, 6), found {stored.shape} and "
                               f"{values.shape}; download it again")
            images = torch.empty((len(stored), 3, *stored.shape[1:3]), dtype=torch.uint8)
            for start in range(0, len(stored), CHUNK):  # NHWC -> NCHW
                part = torch.from_numpy(np.asarray(stored[start:start + CHUNK], dtype=np.uint8))
                images[start:start + CHUNK] = part.permute(0, 3, 1, 2)
    except (OSError, KeyError) as e:
        raise _unreadable(path, e) from None
    # each factor's values (hues 0, .1, ..., .9; scales .75 ... 1.25; orientations -30 ... 30) as indices
    factors = torch.stack([torch.as_tensor(np.unique(column.round(6), return_inverse=True)[1].reshape(-1))
                           for column in values.T], dim=1).to(torch.int64)
    return _split(images, factors, SHAPES3D_FACTORS.index("shape"), SHAPES3D_FACTORS, split, seed)
