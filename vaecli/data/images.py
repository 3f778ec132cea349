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


SHOWN_SIZE = 112  # pixels: small images are enlarged to about this (MNIST's 28 x 4) to be judged on a screen
MAX_SIDE = 2048  # ... unless the picture would get wider or taller than this


def choose_zoom(images: Tensor, nrow: int, zoom: int | None = None, padding: int = 2) -> int:
    """The integer nearest-neighbour scale of a grid of `images` (B, C, H, W), `nrow` per row:
    `zoom` when given, else enough to show each image at about SHOWN_SIZE pixels (1 for images
    that large already), kept under MAX_SIDE pixels."""
    if zoom is not None:
        return zoom
    h, w = images.shape[-2:]
    cols = min(nrow, len(images))
    rows = math.ceil(len(images) / max(cols, 1))
    side = max(cols * (w + padding) + padding, rows * (h + padding) + padding)
    return max(1, min(round(SHOWN_SIZE / max(h, w)), MAX_SIDE // side))


def grid_picture(images: Tensor, nrow: int = 8, padding: int = 2, zoom: int | None = None) -> Tensor:
    """(B, C, H, W) in [0, 1] -> one grid image (C, H', W'), enlarged by whole pixels (nearest
    neighbour, so no pixel is invented) by choose_zoom."""
    from torchvision.utils import make_grid

    images = images.detach().float().cpu().clamp(0, 1)
    z = choose_zoom(images, nrow, zoom, padding)
    grid = make_grid(images, nrow=nrow, padding=padding)
    return grid.repeat_interleave(z, 1).repeat_interleave(z, 2) if z > 1 else grid


def save_grid(images: Tensor, path: str | Path, nrow: int = 8, padding: int = 2, zoom: int | None = None) -> Path:
    """Save (B, C, H, W) in [0, 1] as one PNG grid (grid_picture); written to a temp file, then renamed."""
    from torchvision.utils import save_image

    path = Path(path)
    if path.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise UsageError(f"output {path} must end in .png (or .jpg)")
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    grid = grid_picture(images, nrow, padding, zoom)
    atomic_write(path, lambda tmp: save_image(grid, tmp, format=fmt))
    return path


def save_gif(frames: list[Tensor], path: str | Path, nrow: int = 8, zoom: int | None = None,
             milliseconds: int = 120) -> Path:
    """An animated GIF (looping) whose frames are grids of `frames[t]` (B, C, H, W) in [0, 1]."""
    from PIL import Image

    path = Path(path)
    if path.suffix.lower() != ".gif":
        raise UsageError(f"output {path} must end in .gif")
    z = choose_zoom(frames[0], nrow, zoom)
    pictures = []
    for frame in frames:
        grid = (grid_picture(frame, nrow, zoom=z) * 255).round().to("cpu").byte()
        array = grid[0].numpy() if grid.shape[0] == 1 else grid.permute(1, 2, 0).numpy()
        pictures.append(Image.fromarray(array))
    atomic_write(path, lambda tmp: pictures[0].save(tmp, format="GIF", save_all=True, append_images=pictures[1:],
                                                    duration=milliseconds, loop=0))
    return path


def save_each(images: Tensor, folder: str | Path, prefix: str, zoom: int = 1) -> list[Path]:
    """One PNG per image, FOLDER/<prefix>_0000.png ..., at the model's own size unless zoomed."""
    folder = Path(folder)
    return [save_grid(image[None], folder / f"{prefix}_{i:04d}.png", nrow=1, padding=0, zoom=zoom)
            for i, image in enumerate(images)]


def grid_rows(n: int) -> int:
    """Columns for a near-square grid of n images."""
    return max(1, math.ceil(math.sqrt(n)))
