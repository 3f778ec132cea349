"""What commands that load a model have in common: the checkpoint, its dataset, --label, and
image arguments (files, or test:N / train:N for a dataset image)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from ..errors import UsageError
from .output import stderr

DATASET_REF = re.compile(r"^(train|test):(\d+)$")


def load(ckpt: Optional[str], device: str, threads: int = 0):
    """The checkpoint (checkpoint.Loaded) on the chosen device, with `threads` CPU threads (0: auto)."""
    from ..runtime import checkpoint, device as devices

    devices.set_threads(threads)
    return checkpoint.load_model(ckpt, device=devices.pick(device))


def dataset(loaded, split: str, data_root: Optional[str], whole: bool = False):
    """The checkpoint's dataset (its test split by default), optionally from another root; `whole`:
    every training image, whatever dataset.limit the run was trained with."""
    from dataclasses import replace

    from .. import data

    cfg = replace(loaded.dataset, root=data_root) if data_root else loaded.dataset
    if whole:
        cfg = replace(cfg, limit=None)
    return data.build(cfg, split, loaded.seed)


def temperatures(text: str, model) -> float | list[float]:
    """--temperature: one number > 0, or (for a model with latent groups) one per group, top first."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"--temperature must be a number > 0 or a comma-separated list (got {text!r})") from None
    if any(not v > 0 for v in values):
        raise UsageError(f"--temperature must be > 0 (got {text})")
    if len(values) == 1:
        return values[0]
    if len(values) != model.groups:
        groups = f"{model.groups} latent groups" if model.groups > 1 else "one temperature (no latent groups)"
        raise UsageError(f"--temperature has {len(values)} values and this model takes {groups}")
    return values


def label(model, text: Optional[str], allow_all: bool = False) -> Optional[int | str]:
    """--label: a class index (or 'all' where allowed) for a conditional model, else None."""
    if text is None:
        return None
    if not model.conditional:
        raise UsageError("--label needs a conditional model (train with model.conditional=true)")
    if allow_all and text == "all":
        return "all"
    classes = model.num_classes
    if not text.isdigit() or int(text) >= classes:
        choices = f"0..{classes - 1}" + (" or all" if allow_all else "")
        raise UsageError(f"--label must be a class index {choices} (got {text!r})")
    return int(text)


def images(refs: list[str], loaded, data_root: Optional[str], splits: Optional[dict] = None,
           given_label: Optional[int] = None):
    """Image files (converted to the model's shape) or dataset references like test:3.

    Returns images (B, C, H, W), their names, and their labels (B,) for a conditional model
    (a dataset image's own label; `given_label` for files), else None. `splits` caches splits.
    """
    import torch

    from ..data.images import read_image

    model = loaded.model
    c, h, w = model.spec.image_shape
    found, names, labels = [], [], []
    splits = {} if splits is None else splits
    for ref in refs:
        match = DATASET_REF.match(ref)
        if match and not Path(ref).exists():
            split, index = match.group(1), int(match.group(2))
            if split not in splits:
                splits[split] = dataset(loaded, split, data_root)
            data = splits[split]
            if index >= len(data):
                raise UsageError(f"{ref}: the {split} split has {len(data)} images (0..{len(data) - 1})")
            found.append(data.to_float(data.images[index:index + 1], first=index)[0])
            own = int(data.labels[index]) if data.labels is not None else None
            labels.append(own if given_label is None else given_label)
        else:
            x, note = read_image(ref, c, (h, w))
            if note:
                stderr.print(f"note: {ref}: {note} to match the model")
            found.append(_fed_like_training(x, loaded, len(found)))
            labels.append(given_label)
        names.append(ref)
    y = None
    if model.conditional:
        if any(v is None for v in labels):
            raise UsageError("this conditional model needs a class for image files: pass --label N")
        y = torch.tensor(labels, device=model.device)
    return torch.stack(found).to(model.device), names, y


def _fed_like_training(x, loaded, index: int):
    """An image file's pixels (C, H, W) in [0, 1] as the model's data was fed to it: dequantized
    (with evaluation's fixed noise) where it was, so figures like reconstruct's -ELBO mean the same."""
    if not loaded.dataset.dequantize:
        return x
    import torch

    from .. import bounds, data

    stored = data.ImageSet((x[None] * 255).round().to(torch.uint8),
                           levels=bounds.levels(loaded.dataset.binarize), dequantize=True)
    return stored.to_float(stored.images, first=index)[0]


def out_path(out: Optional[Path], loaded, default_name: str) -> Path:
    return out or loaded.run_dir / default_name


def write_images(images, out: str, nrow: int, zoom: Optional[int], metadata: dict) -> Path:
    """Images out as a PNG grid, one PNG each in a folder (`out` ending in '/' or an existing
    folder), or a .safetensors file holding them as float32 (N, C, H, W) in [0, 1]."""
    from ..data.images import save_each, save_grid

    target = Path(out)
    if out.endswith(("/", "\\")) or target.is_dir():
        save_each(images, target, "sample", zoom=zoom or 1)
        return target
    if target.suffix.lower() == ".safetensors":
        from safetensors.torch import save_file

        from ..atomic import atomic_write

        tensor = images.detach().float().cpu().clamp(0, 1).contiguous()
        atomic_write(target, lambda tmp: save_file({"images": tensor}, str(tmp), metadata=metadata))
        return target
    return save_grid(images, target, nrow=nrow, zoom=zoom)
