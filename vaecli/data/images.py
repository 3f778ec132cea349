"""Image files in and out: read any PNG/JPEG as the model's (C, H, W), save grids atomically."""

from __future__ import annotations

import math
from pathlib import Path

from torch import Tensor

from ..atomic import atomic_write
from ..errors import UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def open_image(path: str | Path):
    """A PIL image, fully decoded; any problem with the file is a one-line UsageError."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.exists():
        raise UsageError(f"image not found: {p}")
    if p.is_dir():
        raise UsageError(f"{p} is a directory, not an image file")
    if not p.is_file():  # a FIFO or a device would block or never end
        raise UsageError(f"{p} is not a regular file (a pipe or device?); give an image file")
    try:
        with Image.open(p) as im:
            im.load()  # decode now, so truncated files fail here
            return im.copy()
    except Image.DecompressionBombError:
        raise UsageError(f"{p}: image is too large to decode safely (decompression bomb limit)") from None
    except UnidentifiedImageError:
        raise UsageError(f"{p} is not an image PIL can read (PNG or JPEG expected)") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise UsageError(f"{p}: cannot read image ({str(e).splitlines()[0] if str(e) else 'corrupt'})") from None


def to_tensor(im, channels: int, size: tuple[int, int], crop: bool = False) -> tuple[Tensor, str | None]:
    """PIL image -> float (C, H, W) in [0, 1] with `channels` and `size` (H, W).

    Returns the tensor and a note describing any conversion (None when none was needed).
    crop=True resizes the shorter side and centre-crops (keeps aspect); else resizes directly.
    """
    import torchvision.transforms.functional as TF

    before = f"{im.width}x{im.height} {im.mode}"
    mode = "L" if channels == 1 else "RGB"
    converted = im.mode != mode or (im.height, im.width) != tuple(size)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA").convert(mode)  # transparent pixels become black
    else:
        im = im.convert(mode)
    if crop:
        im = TF.center_crop(TF.resize(im, min(size), antialias=True), list(size))
    elif (im.height, im.width) != tuple(size):
        im = TF.resize(im, list(size), antialias=True)
    x = TF.pil_to_tensor(im).float().div(255.0)
    note = f"converted {before} to {size[1]}x{size[0]} {'grey' if channels == 1 else 'RGB'}" if converted else None
    return x, note


def read_image(path: str | Path, channels: int, size: tuple[int, int]) -> tuple[Tensor, str | None]:
    return to_tensor(open_image(path), channels, size)


def save_grid(images: Tensor, path: str | Path, nrow: int = 8, padding: int = 2) -> Path:
    """Save (B, C, H, W) in [0, 1] as one PNG grid; written to a temp file, then renamed."""
    from torchvision.utils import save_image

    path = Path(path)
    if path.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise UsageError(f"output {path} must end in .png (or .jpg)")
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    grid = images.detach().float().cpu().clamp(0, 1)
    atomic_write(path, lambda tmp: save_image(grid, tmp, nrow=nrow, padding=padding, format=fmt))
    return path


def grid_rows(n: int) -> int:
    """Columns for a near-square grid of n images."""
    return max(1, math.ceil(math.sqrt(n)))
