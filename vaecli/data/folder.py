"""folder: every PNG/JPEG under dataset.path, decoded once (in parallel) into memory.

Each image is resized (shorter side) and centre-cropped to image_size x image_size. A tenth of
the files, chosen by `seed`, is the test split. Unreadable files are skipped with a warning.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from ..config import DatasetConfig
from ..errors import UsageError
from . import ImageSet
from .images import IMAGE_SUFFIXES, open_image, to_tensor


class _Files(torch.utils.data.Dataset):
    def __init__(self, files: list[Path], channels: int, size: int):
        self.files, self.channels, self.size = files, channels, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        try:
            x, _ = to_tensor(open_image(self.files[i]), self.channels, (self.size, self.size), crop=True)
        except UsageError as e:
            return None, str(e)
        return (x * 255).round().to(torch.uint8), None


def _collate(items):
    return items


def list_images(path: Path) -> list[Path]:
    if not path.exists():
        raise UsageError(f"dataset.path {path} does not exist")
    if not path.is_dir():
        raise UsageError(f"dataset.path {path} is not a directory")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise UsageError(f"no PNG/JPEG images under {path}; point dataset.path at a folder of images")
    return files


def load(cfg: DatasetConfig, split: str, seed: int, num_workers: int = 0) -> ImageSet:
    files = list_images(Path(cfg.path).expanduser())
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed)).tolist()
    n_test = len(files) // 10 if len(files) >= 10 else (1 if len(files) >= 2 else 0)
    chosen = order[:n_test] if split == "test" else order[n_test:]
    if split == "train" and cfg.limit:
        chosen = chosen[: cfg.limit]
    if not chosen:
        raise UsageError(f"{cfg.path} has too few images for a {split} split (need at least 2)")
    files = [files[i] for i in chosen]
    loader = torch.utils.data.DataLoader(_Files(files, cfg.channels or 3, cfg.image_size or 64),
                                         batch_size=64, num_workers=num_workers, collate_fn=_collate)
    images, errors = [], []
    for batch in loader:
        for x, err in batch:
            (errors.append(err) if x is None else images.append(x))
    if errors:
        print(f"warning: skipped {len(errors)} unreadable file(s), e.g. {errors[0]}", file=sys.stderr)
    if not images:
        raise UsageError(f"none of the images under {cfg.path} could be read")
    return ImageSet(torch.stack(images))
