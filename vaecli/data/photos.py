"""photos: random crops of the colour photographs that ship inside scikit-image's and
scikit-learn's wheels, fully offline (no download), seeded and deterministic.

Each photograph is kept at three scales (its shorter side resized to 128 and 256 px, and as
stored), so a crop holds a whole object, a part or a texture. The training split is
`dataset.crops` crops of image_size x image_size drawn from the training photographs at random
scales and positions (seed); the test split is `dataset.test_crops` crops of the held-out
photographs (TEST_PHOTOS: whole photographs the model never saw), drawn from seed + 1.

Real natural-image sets (CIFAR-10, CelebA) stay what users bring: this one is for measuring
sharpness offline (docs/results/sharp.md), with ~10 distinct photographs behind it.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import torch

from ..config import DatasetConfig
from ..errors import UsageError
from . import ImageSet

# (package, file inside its data folder): the colour photographs in the two wheels
PHOTOS = (
    ("skimage", "data/astronaut.png"), ("skimage", "data/rocket.jpg"), ("skimage", "data/motorcycle_left.png"),
    ("skimage", "data/hubble_deep_field.jpg"), ("skimage", "data/retina.jpg"), ("skimage", "data/ihc.png"),
    ("skimage", "data/chelsea.png"), ("sklearn", "datasets/images/china.jpg"),
    ("skimage", "data/coffee.png"), ("sklearn", "datasets/images/flower.jpg"),
)
TEST_PHOTOS = ("data/coffee.png", "datasets/images/flower.jpg")  # held out whole
SCALES = (128, 256, None)  # the shorter side after resizing; None: as stored


def photo_path(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        extra = "scikit-image" if package == "skimage" else "scikit-learn"
        raise UsageError(f"dataset=photos reads the photographs inside {extra}'s wheel, which is not installed: "
                         f"pip install {extra}")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise UsageError(f"dataset=photos: {path} is missing from the installed {package}; reinstall it")
    return path


@functools.lru_cache(maxsize=2)
def _pyramids(split: str) -> tuple[tuple[torch.Tensor, ...], ...]:
    """Each photograph of the split as uint8 (3, H, W) tensors at the SCALES."""
    from PIL import Image

    found = []
    for package, relative in PHOTOS:
        if (relative in TEST_PHOTOS) != (split == "test"):
            continue
        with Image.open(photo_path(package, relative)) as image:
            rgb = image.convert("RGB")
            levels = []
            for side in SCALES:
                picture = rgb
                if side is not None:
                    w, h = rgb.size
                    ratio = side / min(w, h)
                    picture = rgb.resize((max(1, round(w * ratio)), max(1, round(h * ratio))), Image.BICUBIC)
                levels.append(torch.frombuffer(bytearray(picture.tobytes()), dtype=torch.uint8)
                              .view(picture.size[1], picture.size[0], 3).permute(2, 0, 1).clone())
        found.append(tuple(levels))
    return tuple(found)


def crops(split: str, size: int, n: int, seed: int) -> torch.Tensor:
    """n crops (n, 3, size, size) uint8 of the split's photographs: photograph, scale and position
    drawn from `seed` (uniform over the photographs, then over the scales large enough)."""
    g = torch.Generator().manual_seed(seed)
    photos = _pyramids(split)
    out = torch.empty(n, 3, size, size, dtype=torch.uint8)
    which = torch.randint(len(photos), (n,), generator=g)
    for i in range(n):
        levels = [p for p in photos[int(which[i])] if min(p.shape[1:]) >= size]
        picture = levels[int(torch.randint(len(levels), (1,), generator=g))]
        top = int(torch.randint(picture.shape[1] - size + 1, (1,), generator=g))
        left = int(torch.randint(picture.shape[2] - size + 1, (1,), generator=g))
        out[i] = picture[:, top:top + size, left:left + size]
    return out


def load(cfg: DatasetConfig, split: str, seed: int) -> ImageSet:
    size = cfg.image_size or 64
    if size > 128:
        raise UsageError(f"dataset=photos crops at most 128 px (got dataset.image_size={size})")
    n = cfg.crops if split == "train" else cfg.test_crops
    return ImageSet(crops(split, size, int(n), seed if split == "train" else seed + 1))

